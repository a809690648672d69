"""The recipe diffjax.configs.fashion_mnist_dit (diffjax/configs/fashion_mnist_dit.py, whose docstring says what it trains):

python -m diffjax.train --config configs/fashion_mnist_dit.py --workdir runs/fashion_mnist_dit
"""

from diffjax.configs.fashion_mnist_dit import get_config

__all__ = ["get_config"]
