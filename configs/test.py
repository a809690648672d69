"""The recipe diffjax.configs.test (diffjax/configs/test.py, whose docstring says what it trains):

python -m diffjax.train --config configs/test.py --workdir runs/test
"""

from diffjax.configs.test import get_config

__all__ = ["get_config"]
