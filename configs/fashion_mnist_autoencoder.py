"""The recipe diffjax.configs.fashion_mnist_autoencoder (diffjax/configs/fashion_mnist_autoencoder.py, whose docstring says what it trains):

python -m diffjax.train --config configs/fashion_mnist_autoencoder.py --workdir runs/fmnist_ae
"""

from diffjax.configs.fashion_mnist_autoencoder import get_config

__all__ = ["get_config"]
