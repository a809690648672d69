"""The recipe diffjax.configs.circles_controlnet (diffjax/configs/circles_controlnet.py, whose docstring says what it trains):

python -m diffjax.train --config configs/circles_controlnet.py --workdir runs/circles_controlnet
"""

from diffjax.configs.circles_controlnet import get_config

__all__ = ["get_config"]
