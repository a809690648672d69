"""The recipe diffjax.configs.fashion_mnist_lora (diffjax/configs/fashion_mnist_lora.py, whose docstring says what it trains):

python -m diffjax.train --config configs/fashion_mnist_lora.py --workdir runs/fashion_mnist_lora
"""

from diffjax.configs.fashion_mnist_lora import get_config

__all__ = ["get_config"]
