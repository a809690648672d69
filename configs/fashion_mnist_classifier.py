"""The recipe diffjax.configs.fashion_mnist_classifier (diffjax/configs/fashion_mnist_classifier.py, whose docstring says what it trains):

python -m diffjax.train --config configs/fashion_mnist_classifier.py --workdir runs/fashion_mnist_classifier
"""

from diffjax.configs.fashion_mnist_classifier import get_config

__all__ = ["get_config"]
