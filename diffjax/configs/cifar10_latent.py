r"""Latent diffusion on CIFAR-10 (for a GPU or TPU): the DDPM recipe's UNet, narrowed to 8x8x4
latents of the CIFAR-10 autoencoder.

  python -m diffjax.train --config configs/cifar10_autoencoder.py --workdir runs/cifar10_ae
  python -m diffjax.train --config configs/cifar10_latent.py \
      --config.codec.options.workdir=runs/cifar10_ae --workdir runs/cifar10_latent

The codec encodes each batch into 8x8x4 latents (scaled by 1/std of the autoencoder's training
latents); the UNet (128 channels, multipliers (1, 2, 2): 8 -> 4 -> 2, attention at 4x4, two
ResNet blocks, dropout 0.1) learns v-prediction on the cosine schedule, 200k steps of batch 128;
FID (Inception, 10k samples) of decoded samples is logged at the end. With
--config.training.latent_cache=runs/cifar10_latents and --config.data.random_flip=False the
training split is encoded once.

Not run yet: its FID and speed are not measured (no accelerator was available).
"""

from diffjax.configs import cifar10


def get_config():
    """Returns the CIFAR-10 latent diffusion config (set codec.options.workdir)."""
    config = cifar10.get_config()
    config.codec.name = "autoencoder"
    config.codec.options.workdir = ""
    config.codec.options.scaling_factor = 0.0
    config.model.channel_mults = (1, 2, 2)
    config.model.attn_resolutions = (4,)
    config.diffusion.schedule = "cosine"
    config.diffusion.prediction_type = "v"
    config.training.num_steps = 200_000
    config.eval.fd_every_steps = 200_000
    config.eval.fd_features = "inception"
    config.eval.quoted_fd = {}
    return config
