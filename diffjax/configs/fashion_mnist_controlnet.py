r"""A ControlNet of the default Fashion-MNIST run on Sobel edge maps.

  python -m diffjax.train --config configs/fashion_mnist_controlnet.py \
      --workdir runs/fmnist_cn --config.objective.base=runs/fmnist

The default recipe's network (configs/fashion_mnist.py) with the ``'controlnet'`` objective on
the ``'fashion_mnist_edges'`` dataset: Fashion-MNIST with the Sobel edge map of each image as
``cond['control']`` (:func:`diffjax.metrics.edges.edge_map`). The base run's EMA weights are
frozen; only the ControlNet trains (condition dropped for 10% of the examples). 1000 steps.
"""

from diffjax.configs import fashion_mnist
from diffjax.models.registry import controlnet_model_config
from diffjax.training.objectives import default_objective_config


def get_config():
    """Returns the Fashion-MNIST edges ControlNet config."""
    config = fashion_mnist.get_config()
    config.model = controlnet_model_config(config.model)
    # Control images at the input's size: two widths, no stride (diffusers' four widths
    # and three stride-2 steps are for a 512x512 image over 64x64 latents).
    config.model.conditioning_embedding_channels = (16, 32)
    config.data.name = "fashion_mnist_edges"
    config.objective = default_objective_config("controlnet")
    config.objective.base = "runs/fmnist"
    config.training.cond_dropout = 0.1
    config.eval.fd_every_steps = 0
    config.eval.quoted_fd = {}
    return config
