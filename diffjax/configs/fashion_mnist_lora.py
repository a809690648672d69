r"""LoRA fine-tuning of the default Fashion-MNIST run: low-rank updates of its frozen weights.

  python -m diffjax.train --config configs/fashion_mnist_lora.py --workdir runs/fmnist_lora \
      --config.objective.base=runs/fmnist

The default recipe's network and data (configs/fashion_mnist.py), with the ``'lora'``
objective: the EMA weights of the run in ``config.objective.base`` are a frozen step argument
and only a rank-4 LoRA (alpha 4: scale 1) of its attention projections is trained, 6,144
numbers against the UNet's 1,112,801, so the state (LoRA, its EMA and Adam's moments) is
0.09 MiB against 17.0 MiB for full fine-tuning (benchmarks/bench_lora.py). 500 steps. Samples, ``python -m diffjax.sample`` and
``python -m diffjax.evaluate`` use the merged weights W + (alpha / r) down @ up;
``diffjax.models.lora_weights.save_lora`` writes the LoRA in the diffusers/PEFT or kohya
format. FD-FMNIST against full fine-tuning at equal steps: benchmarks/RESULTS.md ("LoRA").
"""

from diffjax.configs import fashion_mnist
from diffjax.training.objectives import default_objective_config


def get_config():
    """Returns the Fashion-MNIST LoRA fine-tuning config."""
    config = fashion_mnist.get_config()
    config.objective = default_objective_config("lora")
    config.objective.base = "runs/fmnist"
    config.objective.rank = 4
    config.objective.alpha = 4.0
    config.training.num_steps = 500
    config.training.checkpoint_every_steps = 250
    config.eval.fd_every_steps = 500
    config.eval.quoted_fd = {}
    return config
