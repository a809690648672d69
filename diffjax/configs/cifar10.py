r"""CIFAR-10 as in the DDPM paper: the 35.7M-parameter UNet for 800k steps (for a GPU or TPU).

  python -m diffjax.train --config configs/cifar10.py --workdir runs/cifar10

Ho, Jain & Abbeel 2020 (arXiv:2006.11239), Sec. 4 and Appendix B: UNet with 128 base channels,
multipliers (1, 2, 2, 2), two ResNet blocks per level, attention at 16x16, dropout 0.1; linear
betas 1e-4..0.02 over T = 1000, eps prediction with the simple loss; Adam at 2e-4 with 5000
warm-up steps, batch 128, gradient clipping at 1, EMA 0.9999, random horizontal flips,
800k steps. Every value is the default of configs/base.py; this file names the dataset and
states the run.

Data: TFDS `cifar10` (50,000 32x32 RGB training images). Preparing it needs TensorFlow once
(`pip install "diffjax[tf]"`, or run where it is installed, e.g. Colab); reading it does not.

Expected: the paper trained at 21 steps/s on a TPU v3-8 (800k steps in 10.6 hours) and reports
FID 3.17 and Inception score 9.46 with the 1000-step ancestral sampler. On diffjax this config
has not been run to completion yet and its speed on a GPU is not measured; budget on the order
of a day on one A100/H100-class GPU. Samples (workdir/samples/, DDIM 100 steps) should show
recognisable objects after some tens of thousands of steps.
"""

from diffjax.configs import base


def get_config():
    """Returns the DDPM CIFAR-10 config."""
    config = base.get_config()
    config.data.name = "cifar10"
    config.data.image_size = 32
    config.data.batch_size = 128
    config.data.random_flip = True
    config.training.num_steps = 800_000
    return config
