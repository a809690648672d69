"""The recipe diffjax.configs.fashion_mnist (diffjax/configs/fashion_mnist.py, whose docstring says what it trains):

python -m diffjax.train --config configs/fashion_mnist.py --workdir runs/fashion_mnist
"""

from diffjax.configs.fashion_mnist import get_config

__all__ = ["get_config"]
