"""The recipe diffjax.configs.base (diffjax/configs/base.py, whose docstring says what it trains):

python -m diffjax.train --config configs/base.py --workdir runs/base
"""

from diffjax.configs.base import get_config

__all__ = ["get_config"]
