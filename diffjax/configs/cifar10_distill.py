r"""Progressive distillation on CIFAR-10, from 512 DDIM steps to 1 (for a GPU or TPU).

  python -m diffjax.train --config configs/cifar10.py --workdir runs/cifar10_v \
      --config.diffusion.schedule=cosine --config.diffusion.zero_terminal_snr=True \
      --config.diffusion.prediction_type=v --config.sampling.options.spacing=trailing
  python -m diffjax.distill --config configs/cifar10_distill.py \
      --teacher runs/cifar10_v --workdir runs/cifar10_pd

The teacher is the DDPM paper's CIFAR-10 network trained with v-prediction on the cosine
schedule rescaled to zero terminal SNR (the first command). Nine rounds take the students from
256 to 1 DDIM steps (the first teacher takes 512, the most a T = 1000 schedule nests), each
trained for 50,000 steps at batch 128 (the teacher's) with the learning rate annealed linearly
from 1e-4 to 0, no EMA, gradient clipping at 1 and the truncated-SNR weighting. After each round
FID (Inception features, 50,000 samples, against the statistics of the teacher's
config.eval.split) of the student at N steps is measured beside the teacher's DDIM and
DPM-Solver++ at N network calls.

What it should reproduce: Salimans & Ho 2022 (arXiv:2202.00512) report FID
2.57, 3.00, 4.51 and 9.12 at 8, 4, 2 and 1 steps on CIFAR-10 from a teacher sampled with 8192
steps, with their own (larger) network and a continuous-time v-prediction model. This config
has not been run: the steps per round and the learning rate are ours, not measured, and the
nine rounds cost about half of the teacher's own 800k training steps plus the evaluations.
"""

from diffjax.pipelines.distillation import distill_config


def get_config():
    """Returns the CIFAR-10 distillation config."""
    config = distill_config()
    config.start_steps = 256
    config.end_steps = 1
    config.steps_per_round = 50_000
    config.fd_features = "inception"
    config.fd_num_samples = 50_000
    config.fd_batch_size = 500
    config.student.optim = dict(learning_rate=1e-4)
    return config
