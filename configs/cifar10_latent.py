"""The recipe diffjax.configs.cifar10_latent (diffjax/configs/cifar10_latent.py, whose docstring says what it trains):

python -m diffjax.train --config configs/cifar10_latent.py --workdir runs/cifar10_latent
"""

from diffjax.configs.cifar10_latent import get_config

__all__ = ["get_config"]
