"""The recipe diffjax.configs.fashion_mnist_modern (diffjax/configs/fashion_mnist_modern.py, whose docstring says what it trains):

python -m diffjax.train --config configs/fashion_mnist_modern.py --workdir runs/fashion_mnist_modern
"""

from diffjax.configs.fashion_mnist_modern import get_config

__all__ = ["get_config"]
