r"""The base config: every key of a diffjax training run, set to the DDPM paper's choices.

It is the base that the other configs edit, not a run of its own: the default run is
configs/fashion_mnist.py (offline, on a CPU), and this file's values are the DDPM paper's
CIFAR-10 run, configs/cifar10.py. The keys, their defaults and what each does are written once,
in diffjax.training.config.base_config (the schema that validates every config is derived
from it); this file returns it.

Ho, Jain & Abbeel 2020, "Denoising Diffusion Probabilistic Models" (arXiv:2006.11239), Sec. 4 and
Appendix B: a 35.7M-parameter UNet, linear betas 1e-4..0.02 over T = 1000, eps prediction, Adam
at 2e-4 with 5000 warm-up steps, batch 128, dropout 0.1, EMA 0.9999, gradient clipping at 1,
random horizontal flips.

Any key can be overridden from the command line, e.g.

  python -m diffjax.train --config configs/base.py --workdir runs/x \
      --config.data.name=cifar10 --config.training.num_steps=1000

Expected: exactly configs/cifar10.py, whose docstring states the run (this file is its base;
on CIFAR-10 it is the DDPM paper's 800k-step run, meant for a GPU or TPU).

Sections: data, model, diffusion, codec, objective, optim, training, sampling, eval, sharding,
and the run's seed and imports.
"""

import ml_collections

from diffjax.training.config import base_config


def get_config() -> ml_collections.ConfigDict:
    """Returns the base config (DDPM on 32x32 RGB images)."""
    return base_config()
