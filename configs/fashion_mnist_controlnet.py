"""The recipe diffjax.configs.fashion_mnist_controlnet (diffjax/configs/fashion_mnist_controlnet.py, whose docstring says what it trains):

python -m diffjax.train --config configs/fashion_mnist_controlnet.py --workdir runs/fashion_mnist_controlnet
"""

from diffjax.configs.fashion_mnist_controlnet import get_config

__all__ = ["get_config"]
