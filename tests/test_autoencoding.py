"""The autoencoder's loss terms (diffjax/autoencoding.py) against their formulas: the KL term
against a Monte-Carlo estimate of the same divergence, the adaptive weight against its ratio of
gradient norms, the hinge losses at known logits, and the VQ codebook's quantization,
straight-through gradient, EMA update, restarts and perplexity by hand."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffjax.autoencoding import (
    CodebookStatistics,
    adaptive_weight,
    codebook_from_statistics,
    codebook_perplexity,
    ema_codebook_update,
    gaussian_kl,
    generator_loss,
    hinge_discriminator_loss,
    quantize,
    reconstruction_loss,
    restart_dead_codes,
    sample_posterior,
    straight_through,
    vq_losses,
)


def test_the_kl_term_is_the_divergence_from_the_standard_normal():
    mean = jnp.array([[0.5, -1.0, 0.0], [0.0, 0.0, 0.0]])
    logvar = jnp.array([[0.0, -1.0, 1.0], [0.0, 0.0, 0.0]])
    kl = gaussian_kl(mean, logvar)
    assert kl.shape == (2,) and kl[1] == 0.0
    # E_q[log q(z) - log p(z)] by Monte Carlo over n draws of q; its standard error bounds the
    # difference (5 standard errors: a false failure has probability ~6e-7).
    n = 200_000
    z = sample_posterior(jnp.broadcast_to(mean[0], (n, 3)), jnp.broadcast_to(logvar[0], (n, 3)),
                         jax.random.key(0))  # fmt: skip
    log_q = -0.5 * (jnp.square(z - mean[0]) / jnp.exp(logvar[0]) + logvar[0])
    log_p = -0.5 * jnp.square(z)
    terms = np.asarray(jnp.sum(log_q - log_p, axis=-1), np.float64)
    standard_error = terms.std() / np.sqrt(n)
    assert abs(terms.mean() - float(kl[0])) < 5 * standard_error


def test_the_adaptive_weight_is_the_ratio_of_gradient_norms():
    reconstruction_grad = jnp.array([[3.0, 4.0]])  # norm 5
    adversarial_grad = jnp.array([[0.0, 2.0]])  # norm 2
    np.testing.assert_allclose(
        adaptive_weight(reconstruction_grad, adversarial_grad), 5 / (2 + 1e-4)
    )
    # Clipped at max_weight, and a constant for the gradient.
    assert adaptive_weight(reconstruction_grad, jnp.zeros((1, 2))) == 1e4
    gradient = jax.grad(lambda g: adaptive_weight(g, adversarial_grad))(reconstruction_grad)
    assert np.all(gradient == 0)


def test_hinge_losses_at_known_logits():
    real, fake = jnp.array([2.0, 0.5]), jnp.array([-2.0, 0.0])
    # 0.5 * (mean(relu(1 - [2, 0.5])) + mean(relu(1 + [-2, 0]))) = 0.5 * (0.25 + 0.5)
    np.testing.assert_allclose(hinge_discriminator_loss(real, fake), 0.375)
    np.testing.assert_allclose(generator_loss(fake), 1.0)


def test_reconstruction_losses_sum_over_each_image():
    images = jnp.zeros((2, 2, 2, 1))
    reconstructions = jnp.full((2, 2, 2, 1), -0.5)
    np.testing.assert_allclose(reconstruction_loss(images, reconstructions, "l1"), [2.0, 2.0])
    np.testing.assert_allclose(reconstruction_loss(images, reconstructions, "l2"), [1.0, 1.0])
    with pytest.raises(ValueError, match="Unknown reconstruction loss 'l3'"):
        reconstruction_loss(images, reconstructions, "l3")


def test_quantize_picks_the_nearest_entry_and_passes_gradients_straight_through():
    codebook = jnp.array([[0.0, 0.0], [1.0, 1.0], [-2.0, 0.5]])
    encodings = jnp.array([[[0.4, 0.4], [0.6, 0.7]], [[-1.5, 0.0], [5.0, 5.0]]])
    quantized, indices = quantize(encodings, codebook)
    np.testing.assert_array_equal(indices, [[0, 1], [2, 1]])
    np.testing.assert_array_equal(quantized, codebook[indices])
    gradient = jax.grad(lambda z: jnp.sum(3.0 * straight_through(z, quantize(z, codebook)[0])))(
        encodings
    )
    np.testing.assert_array_equal(gradient, jnp.full(encodings.shape, 3.0))
    codebook_loss, commitment_loss = vq_losses(encodings, quantized)
    expected = np.mean(np.square(np.asarray(encodings) - np.asarray(quantized)))
    np.testing.assert_allclose([codebook_loss, commitment_loss], [expected, expected], rtol=1e-6)


def test_the_ema_codebook_follows_the_means_of_its_assigned_encodings():
    statistics = CodebookStatistics(
        jnp.array([2.0, 1.0, 0.0]), jnp.array([[2.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
    )
    encodings = jnp.array([[1.0, 1.0], [3.0, 1.0], [0.0, 4.0]])
    indices = jnp.array([0, 0, 1])
    new = ema_codebook_update(statistics, encodings, indices, decay=0.5)
    # eqs. 6 and 7: N = 0.5 N + 0.5 n, m = 0.5 m + 0.5 sum z.
    np.testing.assert_allclose(new.counts, [0.5 * 2 + 0.5 * 2, 0.5 * 1 + 0.5 * 1, 0.0])
    np.testing.assert_allclose(
        new.sums, [[0.5 * 2 + 0.5 * 4, 0.5 * 2], [0.0, 0.5 + 2.0], [0.0, 0.0]]
    )
    codebook = codebook_from_statistics(new, epsilon=0.0)
    np.testing.assert_allclose(codebook[:2], [[1.5, 0.5], [0.0, 2.5]])
    # The unused entry is restarted at one of the batch's encodings.
    restarted, count = restart_dead_codes(new, encodings, jax.random.key(0), threshold=0.1)
    assert count == 1.0 and restarted.counts[2] == 1.0
    assert any(np.array_equal(restarted.sums[2], row) for row in np.asarray(encodings))
    np.testing.assert_array_equal(restarted.sums[:2], new.sums[:2])


def test_perplexity_and_usage_of_the_codebook():
    uniform, usage = codebook_perplexity(jnp.array([0, 1, 2, 3]), 8)
    np.testing.assert_allclose([uniform, usage], [4.0, 0.5], rtol=1e-6)
    single, usage = codebook_perplexity(jnp.array([5, 5, 5]), 8)
    np.testing.assert_allclose([single, usage], [1.0, 0.125], rtol=1e-6)
