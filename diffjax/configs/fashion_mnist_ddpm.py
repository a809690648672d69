r"""Fashion-MNIST with DDPM (Ho et al. 2020) on a laptop CPU: the base of the Fashion-MNIST recipes.

  python -m diffjax.train --config configs/fashion_mnist_ddpm.py --workdir runs/fmnist_ddpm

Data: Fashion-MNIST (Xiao et al. 2017), 60,000 28x28 grayscale training images, read offline
from the Debian package's IDX files (`sudo apt-get install dataset-fashion-mnist`; the first run
prepares them in about 10 s). Model: a 1.1M-parameter UNet (32 channels, 28 -> 14 -> 7, one
ResNet block per level, attention at 7x7 and in the middle), cosine schedule, eps prediction,
Adam at 1e-3 with 200 warm-up steps, batch 64, EMA 0.999, 1000 steps (1.1 epochs).

The default run (configs/fashion_mnist.py) trains the same network, data and budget as a
rectified flow, whose samples are about four times closer to the data at this budget; the other
Fashion-MNIST recipes (EDM, modern) change this one's formulation too. What this recipe's
samples lose, factor by factor, against a PyTorch peer trained the same way: benchmarks/RESULTS.md.

Expected on a 2-core x86 CPU: about 12 minutes of training and 5 of evaluation, with `python -m
diffjax.train` (which sets the CPU convolution flag and one JAX device per core,
diffjax/cli.py); the loss falls from 1.0 to below 0.08, and FD-FMNIST (1000 EMA samples,
DDIM-50, 2.4 minutes each) is logged at steps 500 and 1000 beside the values quoted here.
The EMA grid at the end (samples/step_0001000.png, 64 DDIM samples in 50 steps) shows
clothing. A rerun of the same command resumes from the newest checkpoint (every 250 steps).
"""

from diffjax.configs import base


def get_config():
    """Returns the Fashion-MNIST DDPM config."""
    config = base.get_config()
    config.data.name = "fashion_mnist"
    config.data.image_size = 28
    config.data.batch_size = 64
    # About one epoch: each image is seen about once, so flipped copies would add little.
    config.data.random_flip = False
    # Decoding 28x28 images is cheap; a single thread leaves both cores to XLA.
    config.data.num_threads = 1

    config.model.base_channels = 32
    config.model.channel_mults = (1, 2, 2)
    config.model.num_res_blocks = 1
    config.model.attn_resolutions = (7,)
    # A short run underfits; dropout would only slow it down.
    config.model.dropout = 0.0
    config.model.num_groups = 8

    # The cosine schedule keeps more signal at small resolutions than DDPM's linear one.
    config.diffusion.schedule = "cosine"

    config.optim.learning_rate = 1e-3
    config.optim.warmup_steps = 200
    config.optim.ema_decay = 0.999

    config.training.num_steps = 1000
    config.training.log_every_steps = 10
    config.training.checkpoint_every_steps = 250

    config.sampling.every_steps = 500
    config.sampling.num_samples = 64
    config.sampling.num_steps = 50

    config.eval.every_steps = 500
    config.eval.batch_size = 256
    config.eval.num_batches = 2
    # FD-FMNIST of 1000 EMA samples (DDIM, 50 steps) at steps 500 and 1000.
    config.eval.fd_every_steps = 500
    config.eval.fd_num_samples = 1000
    config.eval.fd_batch_size = 200
    # Logged by this recipe as shipped (benchmarks/RESULTS.md; tests/test_configs.py checks
    # that the digest is still this recipe's).
    config.eval.quoted_fd = {"digest": "ae5417735bbb", "500": 201.2, "1000": 138.7}
    return config
