"""The training recipes, shipped with the package so that a notebook or a script outside a
checkout reads them too: ``diffjax.configs.get_config("fashion_mnist")``.

Each module's ``get_config()`` returns an ``ml_collections.ConfigDict`` and its docstring says
what the recipe trains and what to expect. The command line reads the same recipes through the
files of the repository's ``configs/`` folder (``python -m diffjax.train --config
configs/fashion_mnist.py``), each of which imports its module from here.

=============================  ===================================================================
``base``                       every key, set to the DDPM paper's choices
``fashion_mnist``              the offline default: Fashion-MNIST on a laptop CPU, a rectified flow
``fashion_mnist_ddpm``         the same network and budget with DDPM (cosine schedule, eps)
``fashion_mnist_edm``          the same with EDM's formulation and Heun sampler
``fashion_mnist_modern``       DDPM with v-prediction, zero terminal SNR and trailing timesteps
``fashion_mnist_autoencoder``  the Fashion-MNIST KL autoencoder (CPU)
``fashion_mnist_latent``       the default recipe's flow in that autoencoder's latent space (CPU)
``fashion_mnist_classifier``   a noisy classifier of the default recipe's process (guidance; CPU)
``fashion_mnist_lora``         a LoRA of the default run's frozen weights (CPU)
``fashion_mnist_controlnet``   a ControlNet of the default run on Sobel edge maps (CPU)
``fashion_mnist_dit``          the default recipe with a pixel-space DiT at its training FLOPs
``circles``                    coloured circles, ControlNet's toy data, unconditional (CPU)
``circles_controlnet``         a ControlNet of the circles run on their outlines (CPU)
``cifar10``                    the DDPM paper's CIFAR-10 run (GPU/TPU)
``cifar10_cond``               the same, class-conditional with classifier-free guidance
``cifar10_autoencoder``        a CIFAR-10 KL autoencoder with the patch GAN (GPU/TPU; not run yet)
``cifar10_latent``             latent diffusion in its space (GPU/TPU; not run yet)
``test``                       a tiny run for the tests and smoke checks
=============================  ===================================================================

The distillation recipes (:data:`DISTILL_RECIPES`) are configs of ``python -m diffjax.distill``
(:func:`diffjax.pipelines.distillation.distill_config`), not of training:

=========================  ===============================================================
``fashion_mnist_distill``  progressive distillation of the modern recipe, 128 -> 1 steps (CPU)
``cifar10_distill``        the same on CIFAR-10 with FID (GPU/TPU)
=========================  ===============================================================
"""

from __future__ import annotations

import importlib

import ml_collections

__all__ = ["DISTILL_RECIPES", "RECIPES", "get_config"]

RECIPES: tuple[str, ...] = (
    "base", "fashion_mnist", "fashion_mnist_ddpm", "fashion_mnist_edm", "fashion_mnist_modern",
    "fashion_mnist_autoencoder", "fashion_mnist_latent", "fashion_mnist_classifier",
    "fashion_mnist_lora", "fashion_mnist_controlnet", "fashion_mnist_dit", "circles", "circles_controlnet",
    "cifar10_autoencoder", "cifar10_latent", "cifar10", "cifar10_cond", "test",
)  # fmt: skip
DISTILL_RECIPES: tuple[str, ...] = ("fashion_mnist_distill", "cifar10_distill")


def get_config(name: str) -> ml_collections.ConfigDict:
    """The config of recipe ``name`` (one of :data:`RECIPES` or :data:`DISTILL_RECIPES`).

    Raises:
      ValueError: an unknown name.
    """
    if name not in RECIPES + DISTILL_RECIPES:
        raise ValueError(f"Unknown recipe {name!r}; the recipes are {RECIPES + DISTILL_RECIPES}.")
    return importlib.import_module(f"diffjax.configs.{name}").get_config()
