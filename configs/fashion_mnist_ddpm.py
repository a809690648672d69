"""The recipe diffjax.configs.fashion_mnist_ddpm (diffjax/configs/fashion_mnist_ddpm.py, whose docstring says what it trains):

python -m diffjax.train --config configs/fashion_mnist_ddpm.py --workdir runs/fmnist_ddpm
"""

from diffjax.configs.fashion_mnist_ddpm import get_config

__all__ = ["get_config"]
