r"""A noise-conditional Fashion-MNIST classifier for classifier guidance of the default run.

  python -m diffjax.train --config configs/fashion_mnist_classifier.py --workdir runs/fmnist_classifier
  python -m diffjax.sample --workdir runs/fmnist --classifier runs/fmnist_classifier \
      --classifier_scale 2 --class 3 --num 64

The UNet's encoder half with a pooling head (``'unet_classifier'``: 32 channels, 28 -> 14 -> 7,
one ResNet block per level, attention in the middle block; 420,618 parameters), trained with the
``'classifier'`` objective on the default recipe's process (configs/fashion_mnist.py: the
rectified flow x_t = (1 - t) x_0 + t eps, t uniform on [0, 1)) to predict the label of x_t:
the p(y | x_t) of Dhariwal & Nichol 2021 that ``diffjax.gradient_guidance`` steers an
unconditional run with. Adam at 1e-3, batch 64, EMA 0.999, 3000 steps.

Expected on a 2-core x86 CPU: about 10 minutes of training. The metrics log the
cross-entropy and the accuracy per quarter of the noise range (``accuracy_q1``, least noise,
to ``accuracy_q4``); as measured over the last 200 steps: 0.85, 0.83, 0.72 and 0.35 (the
noisiest quarter is mostly noise), and a held-out cross-entropy of 0.80 on the test split at
step 3000 (log 10 = 2.30 at chance). The guided samples' numbers are in benchmarks/RESULTS.md
("Classifier guidance").
"""

from diffjax.configs import fashion_mnist
from diffjax.models.registry import default_model_config
from diffjax.training.objectives import default_objective_config


def get_config():
    """Returns the Fashion-MNIST noisy-classifier config."""
    config = fashion_mnist.get_config()
    config.model = default_model_config("unet_classifier")
    config.model.num_classes = 10
    config.model.base_channels = 32
    config.model.channel_mults = (1, 2, 2)
    config.model.num_res_blocks = 1
    config.model.num_groups = 8
    config.objective = default_objective_config("classifier")
    config.diffusion.time_sampler = "uniform"
    config.training.num_steps = 3000
    config.training.checkpoint_every_steps = 500
    config.eval.every_steps = 500
    # No samples: the classifier's numbers are its accuracies.
    config.eval.fd_every_steps = 0
    config.eval.quoted_fd = {}
    config.sampling.every_steps = 0
    return config
