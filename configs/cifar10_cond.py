"""The recipe diffjax.configs.cifar10_cond (diffjax/configs/cifar10_cond.py, whose docstring says what it trains):

python -m diffjax.train --config configs/cifar10_cond.py --workdir runs/cifar10_cond
"""

from diffjax.configs.cifar10_cond import get_config

__all__ = ["get_config"]
