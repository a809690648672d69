r"""Class-conditional CIFAR-10 with classifier-free guidance (for a GPU or TPU).

  python -m diffjax.train --config configs/cifar10_cond.py --workdir runs/cifar10_cond
  python -m diffjax.sample --workdir runs/cifar10_cond --guidance 3.0 --num 100

The DDPM CIFAR-10 setup of configs/cifar10.py plus class conditioning: a learned embedding of
the label (11 rows: 10 classes and the null label 10) added to the time embedding, and label
dropout 0.1 during training, so one network is both the conditional and the unconditional
model of classifier-free guidance (Ho & Salimans 2022, arXiv:2207.12598, Algorithm 1). Sample
grids use guidance weight 3 (eq. 6 with w = 3, i.e. their w' = 2) with DDIM in 100 steps, ten
rows of one class each.

Expected: the cost per training step of configs/cifar10.py (the label embedding is
negligible; a guided sampling step costs two network evaluations). Guided samples should look
like their class well before unconditional ones look like anything. Ho & Salimans report their
results on ImageNet 64x64, not CIFAR-10; no figure is claimed here, and this config has not
been run to completion on diffjax yet.
"""

from diffjax.configs import cifar10


def get_config():
    """Returns the class-conditional CIFAR-10 config with classifier-free guidance."""
    config = cifar10.get_config()
    config.model.num_classes = 10
    config.training.cond_dropout = 0.1
    config.sampling.guidance_scale = 3.0
    config.sampling.num_samples = 100
    return config
