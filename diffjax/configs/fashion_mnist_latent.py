r"""Latent diffusion on Fashion-MNIST (CPU): the default recipe's rectified flow, run in the
latent space of the Fashion-MNIST autoencoder.

  python -m diffjax.train --config configs/fashion_mnist_autoencoder.py --workdir runs/fmnist_ae
  python -m diffjax.train --config configs/fashion_mnist_latent.py \
      --config.codec.options.workdir=runs/fmnist_ae --workdir runs/fmnist_latent
  python -m diffjax.sample --workdir runs/fmnist_latent

The codec (``config.codec.name = 'autoencoder'``) encodes every training batch into 7x7x4
latents (a posterior draw times 1/std of the autoencoder's training latents, from its
``latent_statistics.json``), the UNet denoises latents, and every sample grid, FD-FMNIST and
the sample CLI decode its samples with the autoencoder's decoder. The denoiser is the default
recipe's rectified flow on a one-level UNet (7x7 has no even side to halve), with attention at
7x7; x0 is never clipped in latent space.

A latent step costs about a third of the default recipe's pixel step, so these 3000 steps take
its 1000 steps' time (about 11.5 minutes on a 2-core CPU, plus the autoencoder's 12.5, once);
the FD-FMNIST of 1000 decoded EMA samples at the end measured 27.0, against the pixel recipe's
34.5 (benchmarks/RESULTS.md). With --config.training.latent_cache=runs/fmnist_latents and
--config.data.random_flip=False the training split is encoded once instead of every step.
"""

from diffjax.configs import fashion_mnist


def get_config():
    """Returns the Fashion-MNIST latent diffusion config (set codec.options.workdir)."""
    config = fashion_mnist.get_config()
    config.codec.name = "autoencoder"
    # The autoencoder run (configs/fashion_mnist_autoencoder.py); required.
    config.codec.options.workdir = ""
    # 0: 1/std of the autoencoder's training latents (its latent_statistics.json).
    config.codec.options.scaling_factor = 0.0
    config.model.base_channels = 64
    config.model.channel_mults = (1,)
    config.model.num_res_blocks = 2
    config.model.attn_resolutions = (7,)
    config.model.num_groups = 8
    # A step here costs about a third of a pixel-space step: 3000 steps take the default
    # recipe's 1000 steps' time. One FD-FMNIST, at the end.
    config.training.num_steps = 3000
    config.training.checkpoint_every_steps = 1000
    config.sampling.every_steps = 1000
    config.eval.fd_every_steps = 3000
    config.eval.quoted_fd = {}
    return config
