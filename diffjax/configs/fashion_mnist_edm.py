r"""Fashion-MNIST with EDM (Karras et al. 2022) on a CPU: the default run's network and budget.

  python -m diffjax.train --config configs/fashion_mnist_edm.py --workdir runs/fmnist_edm
  python -m diffjax.sample --workdir runs/fmnist_edm --sampler heun --steps 18

configs/fashion_mnist_ddpm.py with EDM's formulation instead of DDPM's (Karras et al. 2022,
arXiv:2206.00364, Table 1, "EDM" column): the process x = x_0 + sigma eps with sigma up to 80
(``diffusion.process = 'edm'``, t = sigma / 80), the preconditioned network output F with
c_skip, c_out, c_in and c_noise for sigma_data = 0.5 (``prediction_type = 'edm'``), training
noise levels ln sigma ~ N(-1.2, 1.2^2) (``time_sampler = 'edm_lognormal'``) and the loss weight
lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2 (``loss_weighting = 'edm'``),
which is 1 on F. Sample grids use EDM's deterministic Heun sampler on the Karras grid
(sigma 0.002 to 80, rho 7) with 18 noise levels, i.e. 35 network evaluations.

Expected: the cost of configs/fashion_mnist_ddpm.py per training step (a quarter of an hour on 2
cores; the Heun grids cost 35 evaluations instead of 50), and FD-FMNIST logged at steps 500 and 1000
(measured values: benchmarks/RESULTS.md).
"""

from diffjax.configs import fashion_mnist_ddpm


def get_config():
    """Returns the Fashion-MNIST EDM config."""
    config = fashion_mnist_ddpm.get_config()
    config.diffusion.process = "edm"
    config.diffusion.prediction_type = "edm"
    config.diffusion.loss_weighting = "edm"
    config.diffusion.time_sampler = "edm_lognormal"
    config.sampling.sampler = "heun"
    config.sampling.num_steps = 18
    config.eval.quoted_fd = {}  # the DDPM recipe's quote is not this one's
    return config
