r"""Circles (ControlNet's toy data, in the spirit of fill50k) on a laptop CPU: the base run.

  python -m diffjax.train --config configs/circles.py --workdir runs/circles

Data: the offline ``'circles'`` dataset (:mod:`diffjax.data.datasets.control`), 20,000 32x32
RGB images of a filled circle of one random colour on a background of another. This run
ignores their control images (outlines): it learns the unconditional distribution that
configs/circles_controlnet.py then controls. The network and formulation of the default
Fashion-MNIST recipe (a rectified flow, 1.1M-parameter UNet with 32 channels, 32 -> 16 -> 8,
attention at 8x8), Adam at 1e-3 with 200 warm-up steps, batch 64, EMA 0.999, 1000 steps;
samples with Euler in 50 steps.
"""

from diffjax.configs import fashion_mnist


def get_config():
    """Returns the unconditional circles config."""
    config = fashion_mnist.get_config()
    config.data.name = "circles"
    config.data.image_size = 32
    config.model.attn_resolutions = (8,)
    config.training.num_steps = 1000
    config.training.checkpoint_every_steps = 250
    config.sampling.every_steps = 500
    config.eval.every_steps = 500
    config.eval.fd_every_steps = 0
    config.eval.quoted_fd = {}
    return config
