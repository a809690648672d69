"""The recipe diffjax.configs.fashion_mnist_edm (diffjax/configs/fashion_mnist_edm.py, whose docstring says what it trains):

python -m diffjax.train --config configs/fashion_mnist_edm.py --workdir runs/fashion_mnist_edm
"""

from diffjax.configs.fashion_mnist_edm import get_config

__all__ = ["get_config"]
