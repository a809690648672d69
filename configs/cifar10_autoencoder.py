"""The recipe diffjax.configs.cifar10_autoencoder (diffjax/configs/cifar10_autoencoder.py, whose docstring says what it trains):

python -m diffjax.train --config configs/cifar10_autoencoder.py --workdir runs/cifar10_autoencoder
"""

from diffjax.configs.cifar10_autoencoder import get_config

__all__ = ["get_config"]
