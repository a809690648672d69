"""The autoencoder's losses: reconstruction, the KL term, the hinge GAN and its adaptive weight.

Pure math on arrays, as the rest of the core is. The KL autoencoder of latent diffusion
(Rombach et al. 2022, arXiv:2112.10752, Sec. 3 and App. G; the loss of taming-transformers'
VQGAN, Esser et al. 2021, arXiv:2012.09841, eq. 7 and 8) minimises, per image,

    L = ||x - D(z)||_1 + lambda_lpips LPIPS(x, D(z)) + beta KL(q(z|x) || N(0, I))
        + lambda_adv(t) * (-mean D_psi(D(z))),

with ``z ~ q(z|x) = N(mean, exp(logvar))`` and the discriminator ``D_psi`` trained on the hinge
loss. The adversarial weight is LDM's adaptive one (VQGAN eq. 7): the ratio of the gradient
norms of the reconstruction and adversarial terms at the decoder's last layer, switched on at
step ``disc_start``.

Shapes: images ``[B, H, W, C]``, moments ``[B, h, w, c]``; per-example terms are ``[B]``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = [
    "RECONSTRUCTION_LOSSES",
    "adaptive_weight",
    "gaussian_kl",
    "generator_loss",
    "hinge_discriminator_loss",
    "reconstruction_loss",
    "sample_posterior",
]

RECONSTRUCTION_LOSSES = ("l1", "l2")
"""The per-pixel reconstruction losses: absolute (LDM) or squared error."""


def _sum_per_example(values: jnp.ndarray) -> jnp.ndarray:
    return jnp.sum(values.reshape(values.shape[0], -1), axis=-1)


def gaussian_kl(mean: jnp.ndarray, logvar: jnp.ndarray) -> jnp.ndarray:
    """``KL(N(mean, exp(logvar)) || N(0, I))`` per example, summed over the latent's elements.

    ``0.5 * sum(mean^2 + exp(logvar) - 1 - logvar)`` (Kingma & Welling 2014, arXiv:1312.6114,
    App. B).

    Args:
      mean, logvar: ``[B, ...]``.

    Returns:
      ``[B]`` float32.
    """
    mean, logvar = mean.astype(jnp.float32), logvar.astype(jnp.float32)
    return 0.5 * _sum_per_example(jnp.square(mean) + jnp.exp(logvar) - 1.0 - logvar)


def sample_posterior(mean: jnp.ndarray, logvar: jnp.ndarray, key: jax.Array) -> jnp.ndarray:
    """A draw ``mean + exp(logvar / 2) * eps``, ``eps ~ N(0, I)`` (the reparameterisation,
    Kingma & Welling 2014, eq. 10), of ``mean``'s shape."""
    noise = jax.random.normal(key, mean.shape, jnp.float32)
    return mean + jnp.exp(0.5 * logvar) * noise


def reconstruction_loss(
    images: jnp.ndarray, reconstructions: jnp.ndarray, kind: str
) -> jnp.ndarray:
    """Per-example reconstruction error summed over pixels: ``sum |x - x_hat|`` (``'l1'``) or
    ``sum (x - x_hat)^2`` (``'l2'``); ``[B, ...] -> [B]``.

    Raises:
      ValueError: an unknown ``kind``.
    """
    if kind not in RECONSTRUCTION_LOSSES:
        raise ValueError(
            f"Unknown reconstruction loss {kind!r}; expected one of {RECONSTRUCTION_LOSSES}."
        )
    error = reconstructions.astype(jnp.float32) - images.astype(jnp.float32)
    return _sum_per_example(jnp.abs(error) if kind == "l1" else jnp.square(error))


def hinge_discriminator_loss(logits_real: jnp.ndarray, logits_fake: jnp.ndarray) -> jnp.ndarray:
    """The discriminator's hinge loss ``0.5 (mean relu(1 - D(x)) + mean relu(1 + D(x_hat)))``
    (Lim & Ye 2017, arXiv:1705.02894; taming's ``hinge_d_loss``); any shapes, a scalar."""
    real = jnp.mean(jax.nn.relu(1.0 - logits_real.astype(jnp.float32)))
    fake = jnp.mean(jax.nn.relu(1.0 + logits_fake.astype(jnp.float32)))
    return 0.5 * (real + fake)


def generator_loss(logits_fake: jnp.ndarray) -> jnp.ndarray:
    """The autoencoder's adversarial loss ``-mean D(x_hat)`` (the hinge GAN's generator term);
    a scalar."""
    return -jnp.mean(logits_fake.astype(jnp.float32))


def adaptive_weight(
    reconstruction_grad: jnp.ndarray,
    adversarial_grad: jnp.ndarray,
    *,
    max_weight: float = 1e4,
    epsilon: float = 1e-4,
) -> jnp.ndarray:
    """LDM's adaptive adversarial weight (Esser et al. 2021, eq. 7):
    ``clip(||grad_L L_rec|| / (||grad_L L_adv|| + epsilon), 0, max_weight)``, the gradients taken
    with respect to the decoder's last layer ``L``; a constant for the gradient (stopped).

    Args:
      reconstruction_grad: the reconstruction loss's gradient at the last layer's kernel.
      adversarial_grad: the adversarial loss's gradient there (same shape).
      max_weight: the clip (LDM: 1e4).
      epsilon: keeps the ratio finite (LDM: 1e-4).

    Returns:
      A float32 scalar.
    """
    ratio = jnp.linalg.norm(reconstruction_grad.ravel()) / (
        jnp.linalg.norm(adversarial_grad.ravel()) + epsilon
    )
    return jax.lax.stop_gradient(jnp.clip(ratio, 0.0, max_weight).astype(jnp.float32))
