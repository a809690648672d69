"""The recipe diffjax.configs.fashion_mnist_flow (diffjax/configs/fashion_mnist_flow.py, whose docstring says what it trains):

  python -m diffjax.train --config configs/fashion_mnist_flow.py --workdir runs/fashion_mnist_flow
"""

from diffjax.configs.fashion_mnist_flow import get_config

__all__ = ["get_config"]
