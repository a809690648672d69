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

The VQ variant (van den Oord et al. 2017, arXiv:1711.00937; LDM's VQ models) replaces the
posterior by the nearest codebook entry of the encoder's output, trained either by the codebook
loss (eq. 3) or by exponential moving averages of the entries' assigned encodings (App. A.1),
with the commitment loss in both; entries that go unused are restarted at encoder outputs.

Shapes: images ``[B, H, W, C]``, moments and encodings ``[B, h, w, c]``, a codebook ``[K, c]``;
per-example terms are ``[B]``.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

__all__ = [
    "RECONSTRUCTION_LOSSES",
    "CodebookStatistics",
    "adaptive_weight",
    "codebook_from_statistics",
    "codebook_perplexity",
    "ema_codebook_update",
    "gaussian_kl",
    "generator_loss",
    "hinge_discriminator_loss",
    "quantize",
    "reconstruction_loss",
    "restart_dead_codes",
    "sample_posterior",
    "straight_through",
    "vq_losses",
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
      mean: ``[B, ...]``.
      logvar: ``[B, ...]``.

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
    ``sum (x - x_hat)^2`` (``'l2'``); ``[B, ...] -> [B]``. The L_rec term of VQGAN's loss
    (Esser et al. 2021, eq. 4) as LDM's autoencoders use it (Rombach et al. 2022, App. G).

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
    """The autoencoder's adversarial loss ``-mean D(x_hat)`` (the hinge GAN's generator term,
    Lim & Ye 2017, arXiv:1705.02894; taming's ``g_loss``); a scalar."""
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


def quantize(encodings: jnp.ndarray, codebook: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
    """The nearest codebook entry of every encoding (squared Euclidean distance): VQ-VAE's
    z_q(x) = e_k, k = argmin_j ||z_e(x) - e_j|| (van den Oord et al. 2017, Sec. 3.1, eq. 2).

    Args:
      encodings: ``[..., D]``.
      codebook: ``[K, D]``.

    Returns:
      ``(quantized [..., D], indices [...] int32)``.
    """
    flat = encodings.reshape(-1, encodings.shape[-1]).astype(jnp.float32)
    codebook = codebook.astype(jnp.float32)
    distances = (
        jnp.sum(jnp.square(flat), axis=-1, keepdims=True)
        - 2.0 * flat @ codebook.T
        + jnp.sum(jnp.square(codebook), axis=-1)[None, :]
    )
    indices = jnp.argmin(distances, axis=-1).astype(jnp.int32)
    return codebook[indices].reshape(encodings.shape), indices.reshape(encodings.shape[:-1])


def straight_through(encodings: jnp.ndarray, quantized: jnp.ndarray) -> jnp.ndarray:
    """``z_e + sg(z_q - z_e)``: the quantized values forward, the identity backward (van den
    Oord et al. 2017, Sec. 3.1)."""
    return encodings + jax.lax.stop_gradient(quantized - encodings)


def vq_losses(encodings: jnp.ndarray, quantized: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
    """The codebook loss ``mean ||sg(z_e) - e||^2`` and the commitment loss ``mean ||z_e -
    sg(e)||^2`` (van den Oord et al. 2017, eq. 3, averaged over elements); scalars."""
    codebook_loss = jnp.mean(jnp.square(jax.lax.stop_gradient(encodings) - quantized))
    commitment_loss = jnp.mean(jnp.square(encodings - jax.lax.stop_gradient(quantized)))
    return codebook_loss, commitment_loss


def codebook_perplexity(
    indices: jnp.ndarray, codebook_size: int
) -> tuple[jnp.ndarray, jnp.ndarray]:
    """``exp(-sum_k p_k log p_k)`` of the entries' frequencies in ``indices`` (K for uniform
    use, 1 for a single entry) and the fraction of entries used; float32 scalars."""
    counts = jnp.bincount(indices.ravel(), length=codebook_size).astype(jnp.float32)
    probabilities = counts / jnp.sum(counts)
    entropy = -jnp.sum(jnp.where(counts > 0, probabilities * jnp.log(probabilities), 0.0))
    return jnp.exp(entropy), jnp.mean((counts > 0).astype(jnp.float32))


class CodebookStatistics(NamedTuple):
    """The exponential moving averages of an EMA codebook (van den Oord et al. 2017, App. A.1,
    eqs. 6 and 7).

    Attributes:
      counts: ``N_k``, ``[K]``: the (decayed) number of encodings assigned to entry k.
      sums: ``m_k``, ``[K, D]``: the (decayed) sum of those encodings.
    """

    counts: jnp.ndarray
    sums: jnp.ndarray


def ema_codebook_update(
    statistics: CodebookStatistics,
    encodings: jnp.ndarray,
    indices: jnp.ndarray,
    *,
    decay: float = 0.99,
) -> CodebookStatistics:
    """One EMA step of the codebook's statistics (van den Oord et al. 2017, App. A.1, eqs. 6
    and 7): ``N_k <- decay N_k + (1 - decay) n_k`` and ``m_k <- decay m_k + (1 - decay)
    sum_{i assigned to k} z_i``.

    Args:
      statistics: the current ``(counts [K], sums [K, D])``.
      encodings: ``[..., D]`` (no gradient flows into the statistics).
      indices: ``[...]``, their entries.
      decay: gamma.

    Returns:
      The new statistics.
    """
    codebook_size = statistics.counts.shape[0]
    flat = jax.lax.stop_gradient(encodings.reshape(-1, encodings.shape[-1]).astype(jnp.float32))
    one_hot = jax.nn.one_hot(indices.ravel(), codebook_size, dtype=jnp.float32)
    counts = decay * statistics.counts + (1.0 - decay) * jnp.sum(one_hot, axis=0)
    sums = decay * statistics.sums + (1.0 - decay) * one_hot.T @ flat
    return CodebookStatistics(counts, sums)


def codebook_from_statistics(statistics: CodebookStatistics, epsilon: float = 1e-5) -> jnp.ndarray:
    """``e_k = m_k / N~_k`` (van den Oord et al. 2017, eq. 8) with the counts Laplace-smoothed,
    ``N~_k = (N_k + eps) / (N + K eps) * N``, so that an unused entry stays finite; ``[K, D]``."""
    counts = statistics.counts
    total = jnp.sum(counts)
    smoothed = (counts + epsilon) / (total + counts.shape[0] * epsilon) * total
    return statistics.sums / smoothed[:, None]


def restart_dead_codes(
    statistics: CodebookStatistics,
    encodings: jnp.ndarray,
    key: jax.Array,
    *,
    threshold: float = 1e-3,
) -> tuple[CodebookStatistics, jnp.ndarray]:
    """Restarts the entries whose count fell below ``threshold`` at encodings drawn from the
    batch (the dead-code restarts of Dhariwal et al. 2020, "Jukebox", Sec. 2.4, on the EMA
    statistics): such an entry gets count 1 and sum (and value) a random encoding.

    Returns:
      ``(statistics, number of restarted entries as a float32 scalar)``.
    """
    flat = jax.lax.stop_gradient(encodings.reshape(-1, encodings.shape[-1]).astype(jnp.float32))
    codebook_size = statistics.counts.shape[0]
    picks = flat[jax.random.randint(key, (codebook_size,), 0, flat.shape[0])]
    dead = statistics.counts < threshold
    counts = jnp.where(dead, 1.0, statistics.counts)
    sums = jnp.where(dead[:, None], picks, statistics.sums)
    return CodebookStatistics(counts, sums), jnp.sum(dead.astype(jnp.float32))
