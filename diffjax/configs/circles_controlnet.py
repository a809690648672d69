r"""A ControlNet of the circles run: draw the circle whose outline the control image gives.

  python -m diffjax.train --config configs/circles_controlnet.py --workdir runs/circles_cn \
      --config.objective.base=runs/circles
  python -m diffjax.sample --workdir runs/circles_cn --control outline.png

The base run's network (configs/circles.py) with the ``'controlnet'`` objective: its EMA
weights are a frozen step argument and only a ControlNet (a copy of its encoder and middle
block, a condition encoder of widths 16 and 32 at full resolution, zero convolutions)
is trained, on the circles' outlines (``cond['control']``). The condition is dropped to an
all-zero control for 10% of the examples, so ``python -m diffjax.sample --guidance W`` guides on it. 1000 steps;
the outline agreement of its samples by training step, against the base's and the data's, is
in benchmarks/RESULTS.md ("ControlNet").
"""

from diffjax.configs import circles
from diffjax.models.registry import controlnet_model_config
from diffjax.training.objectives import default_objective_config


def get_config():
    """Returns the circles ControlNet config."""
    config = circles.get_config()
    config.model = controlnet_model_config(config.model)
    # Control images at the input's size: two widths, no stride (diffusers' four widths
    # and three stride-2 steps are for a 512x512 image over 64x64 latents).
    config.model.conditioning_embedding_channels = (16, 32)
    config.objective = default_objective_config("controlnet")
    config.objective.base = "runs/circles"
    config.training.cond_dropout = 0.1
    config.training.num_steps = 1000
    return config
