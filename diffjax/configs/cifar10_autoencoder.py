r"""The CIFAR-10 autoencoder, the first half of the CIFAR-10 latent recipe (for a GPU or TPU).

  python -m diffjax.train --config configs/cifar10_autoencoder.py --workdir runs/cifar10_ae

then latent diffusion in its latent space with configs/cifar10_latent.py.

LDM's KL autoencoder at CIFAR-10's size: 128 channels, multipliers (1, 2, 2) (two
downsamplings: 32x32x3 -> 8x8x4 latents), two ResNet blocks per level, L1 reconstruction plus
the KL term at 1e-6, and from step 50,001 the hinge patch-GAN with LDM's adaptive weight (0.5),
alternating with the autoencoder, for 100k steps of batch 128 with Adam at 1e-4. LPIPS is off:
its ImageNet backbones need images of at least 64 px.

Not run yet: its reconstruction PSNR/SSIM (``python -m diffjax.evaluate --workdir
runs/cifar10_ae``) and its speed on an accelerator are not measured.
"""

from diffjax.configs import cifar10
from diffjax.models.registry import default_model_config
from diffjax.training.objectives import default_objective_config


def get_config():
    """Returns the CIFAR-10 autoencoder config."""
    config = cifar10.get_config()
    config.model = default_model_config("autoencoder_kl")
    config.model.base_channels = 128
    config.model.channel_mults = (1, 2, 2)
    config.model.num_res_blocks = 2
    config.model.latent_channels = 4
    config.model.image_channels = 3
    config.objective = default_objective_config("autoencoder")
    config.objective.disc_weight = 0.5
    config.objective.disc_start = 50_001
    config.training.num_steps = 100_000
    config.training.checkpoint_every_steps = 5000
    config.optim.learning_rate = 1e-4
    config.optim.warmup_steps = 1000
    config.optim.ema_decay = 0.999
    config.sampling.every_steps = 5000
    config.sampling.num_samples = 32
    config.eval.every_steps = 5000
    config.eval.fd_every_steps = 0
    return config
