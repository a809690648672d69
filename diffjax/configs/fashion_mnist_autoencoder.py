r"""The Fashion-MNIST autoencoder: the first half of the latent recipe (CPU).

  python -m diffjax.train --config configs/fashion_mnist_autoencoder.py --workdir runs/fmnist_ae

then latent diffusion in its latent space with configs/fashion_mnist_latent.py.

LDM's KL autoencoder at the scale of 28x28 grayscale images (``AUTOENCODER_PRESETS
['fashion_mnist_f4']``, 953,413 parameters): 32 channels, two downsamplings, one ResNet block
per level, a 4x compression per side to 7x7x4 latents (196 numbers for 784 pixels), trained for
1000 steps of batch 64 with the L1 reconstruction error and the KL term at LDM's weight 1e-6.
LPIPS is off (its ImageNet backbones need RGB images of at least 64 px), and so is the patch
GAN: switched on at step 1000 of a 2000-step run (--config.objective.disc_weight=0.5
--config.objective.disc_start=1000 --config.training.num_steps=2000 flags), its
adaptively weighted term (weights of 500-900) raised the reconstructions' mean L1 error from
0.08 to 0.20 within 150 steps (benchmarks/RESULTS.md).

At the end the run writes ``latent_statistics.json`` (the latents' standard deviation, 2.05 as
measured; the latent recipe scales by its inverse) and logs the PSNR / SSIM of the EMA weights'
reconstructions of held-out images (22.9 dB / 0.810 on the 10,000 test images as measured with
python -m diffjax.evaluate). About 13
minutes on a 2-core CPU.
"""

from diffjax.configs import fashion_mnist_ddpm
from diffjax.models.autoencoder import AUTOENCODER_PRESETS
from diffjax.models.registry import default_model_config
from diffjax.training.objectives import default_objective_config


def get_config():
    """Returns the Fashion-MNIST autoencoder config."""
    config = fashion_mnist_ddpm.get_config()
    config.model = default_model_config("autoencoder_kl")
    for key, value in AUTOENCODER_PRESETS["fashion_mnist_f4"].items():
        config.model[key] = value
    config.model.image_channels = 1
    config.objective = default_objective_config("autoencoder")
    config.training.num_steps = 1000
    config.training.checkpoint_every_steps = 500
    config.optim.learning_rate = 5e-4
    config.optim.warmup_steps = 100
    config.sampling.every_steps = 500
    config.sampling.num_samples = 32
    config.eval.every_steps = 500
    # No samples to score: the reconstructions' PSNR and SSIM are its numbers.
    config.eval.fd_every_steps = 0
    config.eval.quoted_fd = {}
    return config
