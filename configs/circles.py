"""The recipe diffjax.configs.circles (diffjax/configs/circles.py, whose docstring says what it trains):

python -m diffjax.train --config configs/circles.py --workdir runs/circles
"""

from diffjax.configs.circles import get_config

__all__ = ["get_config"]
