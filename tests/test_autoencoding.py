"""The autoencoder's loss terms (diffjax/autoencoding.py) against their formulas: the KL term
against a Monte-Carlo estimate of the same divergence, the adaptive weight against its ratio of
gradient norms, and the hinge losses at known logits."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffjax.autoencoding import (
    adaptive_weight,
    gaussian_kl,
    generator_loss,
    hinge_discriminator_loss,
    reconstruction_loss,
    sample_posterior,
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
