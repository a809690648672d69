"""The recipe diffjax.configs.fashion_mnist_latent (diffjax/configs/fashion_mnist_latent.py, whose docstring says what it trains):

python -m diffjax.train --config configs/fashion_mnist_latent.py --config.codec.options.workdir=runs/fmnist_ae --workdir runs/fmnist_latent
"""

from diffjax.configs.fashion_mnist_latent import get_config

__all__ = ["get_config"]
