r"""Fashion-MNIST with rectified flow (Liu et al. 2022; SD3's training recipe) on a CPU.

  python -m diffjax.train --config configs/fashion_mnist_flow.py --workdir runs/fmnist_flow
  python -m diffjax.sample --workdir runs/fmnist_flow --sampler flow_euler --steps 4

configs/fashion_mnist.py with rectified flow instead of DDPM: the straight path
x_t = (1 - t) x_0 + t eps (``diffusion.process = 'rectified_flow'``), a network predicting the
velocity eps - x_0 (``prediction_type = 'flow'``) with the plain regression loss, and SD3's
logit-normal training times t = sigmoid(n), n ~ N(0, 1) (Esser et al. 2024, arXiv:2403.03206,
eq. 19; ``time_sampler = 'logit_normal'``). Sample grids integrate the velocity with Euler's
method in 50 uniform steps.

Expected: the cost of configs/fashion_mnist.py per training step (a quarter of an hour on 2 cores),
and FD-FMNIST logged at steps 500 and 1000; few-step samples (1, 2, 4 steps) are evaluated with
python -m diffjax.evaluate (measured values: benchmarks/RESULTS.md).
"""

from diffjax.configs import fashion_mnist


def get_config():
    """Returns the Fashion-MNIST rectified-flow config."""
    config = fashion_mnist.get_config()
    config.diffusion.process = "rectified_flow"
    config.diffusion.prediction_type = "flow"
    config.diffusion.time_sampler = "logit_normal"
    config.sampling.sampler = "flow_euler"
    config.sampling.num_steps = 50
    return config
