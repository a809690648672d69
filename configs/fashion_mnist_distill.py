"""The recipe diffjax.configs.fashion_mnist_distill (diffjax/configs/fashion_mnist_distill.py, whose docstring says what it trains):

python -m diffjax.distill --config configs/fashion_mnist_distill.py --teacher runs/fmnist_modern --workdir runs/fmnist_pd
"""

from diffjax.configs.fashion_mnist_distill import get_config

__all__ = ["get_config"]
