r"""Progressive distillation of the modern Fashion-MNIST recipe, from 128 DDIM steps to 1, on a CPU.

  python -m diffjax.train --config configs/fashion_mnist_modern.py --workdir runs/fmnist_modern
  python -m diffjax.distill --config configs/fashion_mnist_distill.py \
      --teacher runs/fmnist_modern --workdir runs/fmnist_pd

Salimans & Ho 2022 (arXiv:2202.00512, Algorithm 2) on the teacher that recipe trains (the 1.1M
UNet, v-prediction on the cosine schedule rescaled to zero terminal SNR): seven rounds whose
students take 64, 32, 16, 8, 4, 2 and 1 DDIM steps, each starting from its teacher's weights and
trained for 250 steps (batch 64, the teacher's) with the paper's optimisation: Adam with the
learning rate annealed linearly to 0 within each round (from 5e-4, half the teacher's peak; our
choice, not tuned), no EMA, gradient clipping at 1, and the truncated-SNR weighting
max(SNR, 1). After each round FD-FMNIST (1000 samples) of the student at N steps is measured
beside the teacher's DDIM and DPM-Solver++ at N network calls.

Expected on a 2-core x86 CPU: 92 minutes for the seven rounds (61 of training, 31 of
evaluation; measured while a test suite shared the cores part of the time), and FD-FMNIST of
the students 65.3, 72.2, 90.7 and 114.0 at 8, 4, 2 and 1 steps, where the teacher's DDIM scores
130.3, 253.5, 454.6 and 800.5 (benchmarks/RESULTS.md, "Progressive distillation"). A rerun of
the same command resumes where it stopped; ``python -m diffjax.sample --workdir
runs/fmnist_pd`` samples the newest student with its own number of steps.
"""

from diffjax.pipelines.distillation import distill_config


def get_config():
    """Returns the Fashion-MNIST distillation config."""
    config = distill_config()
    config.start_steps = 64
    config.end_steps = 1
    config.steps_per_round = 250
    config.fd_num_samples = 1000
    config.fd_batch_size = 200
    config.student.optim = dict(learning_rate=5e-4)
    return config
