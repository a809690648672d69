"""The recipe diffjax.configs.cifar10 (diffjax/configs/cifar10.py, whose docstring says what it trains):

python -m diffjax.train --config configs/cifar10.py --workdir runs/cifar10
"""

from diffjax.configs.cifar10 import get_config

__all__ = ["get_config"]
