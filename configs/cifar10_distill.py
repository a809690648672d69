"""The recipe diffjax.configs.cifar10_distill (diffjax/configs/cifar10_distill.py, whose docstring says what it trains):

python -m diffjax.distill --config configs/cifar10_distill.py --teacher runs/cifar10_v --workdir runs/cifar10_pd
"""

from diffjax.configs.cifar10_distill import get_config

__all__ = ["get_config"]
