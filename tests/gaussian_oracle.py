"""Exact denoisers for Gaussian-mixture data: the oracle the sampler tests feed to the samplers.

For data x_0 ~ sum_k w_k N(m_k, diag(s_k^2)) the noised marginal of x_t = alpha x_0 + sigma eps
is again a mixture, q(x_t) = sum_k w_k N(alpha m_k, diag(alpha^2 s_k^2 + sigma^2)), and the
posterior mean (the exact minimiser of the x0-regression loss) is closed-form:

    E[x_0 | x_t] = sum_k r_k(x_t) [m_k + alpha s_k^2 / (alpha^2 s_k^2 + sigma^2) (x_t - alpha m_k)],

with responsibilities r_k(x_t) proportional to w_k N(x_t; alpha m_k, alpha^2 s_k^2 + sigma^2).
The exact eps- and v-predictions follow from it by the usual affine conversions. A single
Gaussian is the mixture with K = 1, and then the probability-flow ODE is also closed-form
(:func:`gaussian_flow_map`), which gives a per-sample reference with no statistical noise.

The mixture's parameters live in float64 NumPy; the denoiser runs in float32 JAX inside the
samplers' ``lax.scan``.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

import diffjax as dj
from diffjax import predictions


class GaussianMixture(NamedTuple):
    """Data law sum_k weights[k] N(means[k], diag(stds[k]^2)); float64 [K], [K, D], [K, D]."""

    weights: np.ndarray
    means: np.ndarray
    stds: np.ndarray

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    def sample(self, rng: np.random.Generator, num: int) -> tuple[np.ndarray, np.ndarray]:
        """Draws ``num`` samples; returns (x [num, D] float64, component index [num])."""
        component = rng.choice(len(self.weights), size=num, p=self.weights)
        noise = rng.standard_normal((num, self.dim))
        return self.means[component] + self.stds[component] * noise, component


def gaussian(mean, std) -> GaussianMixture:
    """A single diagonal Gaussian N(mean, diag(std^2)) as a one-component mixture."""
    mean = np.asarray(mean, np.float64)[None]
    return GaussianMixture(
        np.ones(1), mean, np.broadcast_to(np.asarray(std, np.float64), mean.shape)
    )


def ring_mixture(num_modes: int, radius: float, std: float, dim: int = 2) -> GaussianMixture:
    """Equal-weight isotropic modes on a circle of ``radius`` in the first two of ``dim`` axes;
    in higher dimensions the other axes hold a fixed random offset per mode (seeded)."""
    angles = 2 * np.pi * np.arange(num_modes) / num_modes
    means = np.zeros((num_modes, dim))
    means[:, 0], means[:, 1] = radius * np.cos(angles), radius * np.sin(angles)
    if dim > 2:
        means[:, 2:] = 0.5 * np.random.default_rng(1234).standard_normal((num_modes, dim - 2))
    weights = np.linspace(1.0, 2.0, num_modes)
    return GaussianMixture(weights / weights.sum(), means, np.full((num_modes, dim), std))


def posterior_mean(
    mixture: GaussianMixture, x_t: jnp.ndarray, alpha: jnp.ndarray, sigma: jnp.ndarray
) -> jnp.ndarray:
    """E[x_0 | x_t] for x_t [B, D] with per-example alpha, sigma [B]."""
    means, variances0, prior = _mixture_arrays(mixture)
    return _posterior_mean(means, variances0, prior, x_t, alpha, sigma)


def _mixture_arrays(mixture: GaussianMixture):
    return (
        jnp.asarray(mixture.means, jnp.float32),  # [K, D]
        jnp.asarray(mixture.stds**2, jnp.float32),  # [K, D]
        jnp.log(jnp.asarray(mixture.weights, jnp.float32))[None],  # [1, K]
    )


def _posterior_mean(means, variances0, log_weights, x_t, alpha, sigma):
    """The formula of the module docstring; log_weights [B or 1, K] may mask components."""
    alpha, sigma = alpha[:, None, None], sigma[:, None, None]
    variances_t = alpha**2 * variances0 + sigma**2  # [B, K, D]
    residual = x_t[:, None, :] - alpha * means  # [B, K, D]
    log_density = -0.5 * jnp.sum(residual**2 / variances_t + jnp.log(variances_t), axis=-1)
    responsibilities = jax.nn.softmax(log_weights + log_density, axis=-1)  # [B, K]
    component_means = means + alpha * variances0 / variances_t * residual  # [B, K, D]
    return jnp.einsum("bk,bkd->bd", responsibilities, component_means)


def _exact_prediction(prediction_type, means, variances0, log_weights, alpha, sigma, x_t):
    flat = x_t.reshape(x_t.shape[0], -1)
    x0_hat = _posterior_mean(means, variances0, log_weights, flat, alpha, sigma)
    alpha, sigma = alpha[:, None], sigma[:, None]
    eps_hat = dj.eps_from_x0(flat, x0_hat, alpha, sigma)
    return dj.prediction_target(x0_hat, eps_hat, alpha, sigma, prediction_type).reshape(x_t.shape)


def _unconditional(prediction_type):
    def predict(means, variances0, prior, sqrt_ac, sqrt_1mac, x_t, t):
        return _exact_prediction(
            prediction_type, means, variances0, prior, sqrt_ac[t], sqrt_1mac[t], x_t
        )

    return predict


def _conditional(prediction_type):
    def predict(means, variances0, prior, sqrt_ac, sqrt_1mac, x_t, t, labels):
        num_modes = means.shape[0]
        one_mode = jnp.where(jnp.arange(num_modes)[None] == labels[:, None], 0.0, -jnp.inf)
        log_weights = jnp.where((labels == num_modes)[:, None], prior, one_mode)
        return _exact_prediction(
            prediction_type, means, variances0, log_weights, sqrt_ac[t], sqrt_1mac[t], x_t
        )

    return predict


# Module-level functions, so the jitted samplers see the same callable for every mixture and
# schedule (their arrays are bound as traced Partial arguments): one compile serves them all.
_VP_TYPES = ("eps", "x0", "v", "edm")
_UNCONDITIONAL = {name: _unconditional(name) for name in _VP_TYPES}
_CONDITIONAL = {name: _conditional(name) for name in _VP_TYPES}


def time_from_model_time(process, t_in: jnp.ndarray) -> jnp.ndarray:
    """The process time behind a network time input (the inverse of ``process.model_time``)."""
    if isinstance(process, dj.EDM):
        return jnp.exp(4.0 * t_in) / process.sigma_max
    if isinstance(process, dj.processes.ScheduleTime):
        return (t_in + 1.0) / process.num_timesteps
    return t_in / 1000.0


def _continuous(prediction_type):
    def predict(means, variances0, prior, process, x_in, t_in):
        flat = x_in.reshape(x_in.shape[0], -1)
        t = time_from_model_time(process, t_in)
        m = dj.marginal(process, t, 2)
        scale = predictions.input_scale(prediction_type, m)
        x_t = flat if scale is None else flat / scale
        x0_hat = _posterior_mean(means, variances0, prior, x_t, m.alpha[:, 0], m.sigma[:, 0])
        eps_hat = (x_t - m.alpha * x0_hat) / m.sigma
        return predictions.target(prediction_type, x0_hat, eps_hat, m).reshape(x_in.shape)

    return predict


_CONTINUOUS = {name: _continuous(name) for name in predictions.PREDICTION_TYPES}


def exact_model_fn(
    mixture: GaussianMixture, process, prediction_type: str = "eps"
) -> jax.tree_util.Partial:
    """The Bayes-optimal ``model_fn(x_in [B, ...], t_in [B]) -> prediction`` for this data law,
    for a schedule (t_in the index) or a continuous process (t_in its model time, x_in scaled
    as the 'edm' prediction's input)."""
    if isinstance(process, dj.DiffusionSchedule):
        return jax.tree_util.Partial(
            _UNCONDITIONAL[prediction_type],
            *_mixture_arrays(mixture),
            process.sqrt_alphas_cumprod,
            process.sqrt_one_minus_alphas_cumprod,
        )
    # A process of the user's own (no JAX pytree) is bound as the static value samplers use.
    process = dj.processes.as_jit_argument(process)
    return jax.tree_util.Partial(_CONTINUOUS[prediction_type], *_mixture_arrays(mixture), process)


def exact_conditional_model_fn(
    mixture: GaussianMixture, schedule: dj.DiffusionSchedule, prediction_type: str = "eps"
) -> jax.tree_util.Partial:
    """``model_fn(x_t [B, D], t, labels)``: label k < K conditions on mode k; K is unconditional."""
    return jax.tree_util.Partial(
        _CONDITIONAL[prediction_type],
        *_mixture_arrays(mixture),
        schedule.sqrt_alphas_cumprod,
        schedule.sqrt_one_minus_alphas_cumprod,
    )


def denoised_reference(
    mixture: GaussianMixture, schedule: dj.DiffusionSchedule, rng: np.random.Generator, num: int
) -> np.ndarray:
    """Exact draws of what an exact sampler returns: x_0 ~ data, x at t = 0, then E[x_0 | x].

    Every sampler here ends with the x0-prediction at the schedule's smallest noise level
    (t = 0, sigma_0 = 0.01 for the linear schedule), which shrinks a mode of std s by
    alpha_0 s / sqrt(alpha_0^2 s^2 + sigma_0^2); this is the law that includes that shrinkage.
    """
    x0, _ = mixture.sample(rng, num)
    alpha = float(schedule.sqrt_alphas_cumprod[0])
    sigma = float(schedule.sqrt_one_minus_alphas_cumprod[0])
    x_t = alpha * x0 + sigma * rng.standard_normal(x0.shape)
    batch = jnp.full((num,), alpha, jnp.float32), jnp.full((num,), sigma, jnp.float32)
    return np.asarray(posterior_mean(mixture, jnp.asarray(x_t, jnp.float32), *batch), np.float64)


def gaussian_flow_map(
    mixture: GaussianMixture, schedule: dj.DiffusionSchedule, x_start: np.ndarray, t_start: int
) -> np.ndarray:
    """The exact probability-flow ODE from x at t_start down to t = 0, then E[x_0 | x_{t=0}].

    For Gaussian data N(m, s^2) per axis the ODE keeps the standardised coordinate
    z = (x_t - alpha_t m) / sqrt(alpha_t^2 s^2 + sigma_t^2) fixed: a deterministic flow with
    Gaussian marginals is, per axis, the monotone affine map between them. float64.
    """
    if len(mixture.weights) != 1:
        raise ValueError("the flow map is closed-form only for a single Gaussian")
    mean, std = mixture.means[0], mixture.stds[0]
    abar = np.asarray(schedule.alphas_cumprod, np.float64)
    alpha_start, alpha_0 = np.sqrt(abar[t_start]), np.sqrt(abar[0])
    sigma_start, sigma_0 = np.sqrt(1 - abar[t_start]), np.sqrt(1 - abar[0])
    z = (np.asarray(x_start, np.float64) - alpha_start * mean) / np.sqrt(
        alpha_start**2 * std**2 + sigma_start**2
    )
    return mean + alpha_0 * std**2 / np.sqrt(alpha_0**2 * std**2 + sigma_0**2) * z


class AffineLaw(NamedTuple):
    """Output = offset + slope * x_T + noise_std * z' per axis, z' independent of x_T; [D] each."""

    offset: np.ndarray
    slope: np.ndarray
    noise_std: np.ndarray

    @property
    def std(self) -> np.ndarray:
        return np.sqrt(self.slope**2 + self.noise_std**2)


def gaussian_sampler_law(
    mixture: GaussianMixture,
    schedule: dj.DiffusionSchedule,
    timesteps,
    kind: str,
    eta: float = 0.0,
    variance: str = "small",
) -> AffineLaw:
    """The exact law of a sampler's output for Gaussian data, from the papers' update rules.

    With Gaussian data the exact x0-prediction is affine in x_t per axis,
    x0_hat = m + c_t (x_t - alpha_t m) with c_t = alpha_t s^2 / (alpha_t^2 s^2 + sigma_t^2), so
    every sampler here is an affine map of x_T plus independent Gaussian noise, and its output
    is N(mean, std^2) per axis. This follows that map in float64, written independently of the
    library from Ho et al. 2020 (Alg. 2), Song et al. 2021 (eqs. 12, 16) and Lu et al. 2022
    (DPM-Solver++(2M), Alg. 2, with e^{-h} and r_i as in the paper).

    Args:
      mixture: a single Gaussian (:func:`gaussian`).
      schedule: the discrete schedule (not zero-terminal-SNR).
      timesteps: the descending grid the sampler visits.
      kind: ``'ddpm' | 'ddim' | 'dpm_solver'``.
      eta: DDIM's eta.
      variance: DDPM's ``'small' | 'large'``.

    Returns:
      The :class:`AffineLaw` of the output as a function of x_T.
    """
    if len(mixture.weights) != 1:
        raise ValueError("the sampler law is closed-form only for a single Gaussian")
    mean, std = mixture.means[0], mixture.stds[0]
    abar = np.asarray(schedule.alphas_cumprod, np.float64)[np.asarray(timesteps)]
    abar_next = np.concatenate([abar[1:], [1.0]])
    # x = slope * z + offset + n, z = x_T ~ N(0, I), n independent noise of variance noise_var.
    slope, offset, noise_var = np.ones_like(mean), np.zeros_like(mean), np.zeros_like(mean)
    previous = None  # DPM-Solver++: (slope, offset) of the previous x0-prediction, and its h
    for i, (a_t, a_s) in enumerate(zip(abar, abar_next)):
        alpha, sigma = np.sqrt(a_t), np.sqrt(1.0 - a_t)
        gain = alpha * std**2 / (a_t * std**2 + sigma**2)
        x0_slope, x0_offset = gain * slope, gain * offset + (1.0 - gain * alpha) * mean
        last = i == len(abar) - 1
        if kind in ("ddim", "ddpm"):
            posterior_var = (1.0 - a_s) / (1.0 - a_t) * (1.0 - a_t / a_s)
            noise_scale2 = posterior_var if kind == "ddpm" else eta**2 * posterior_var
            direction = np.sqrt(max(1.0 - a_s - noise_scale2, 0.0))
            # x_s = sqrt(a_s) x0_hat + direction (x - alpha x0_hat) / sigma + noise = M x + const
            on_x0 = np.sqrt(a_s) - direction * alpha / sigma
            multiplier = direction / sigma + on_x0 * gain
            added = 1.0 - a_t / a_s if (kind == "ddpm" and variance == "large") else noise_scale2
            slope = multiplier * slope
            offset = multiplier * offset + on_x0 * (1.0 - gain * alpha) * mean
            noise_var = multiplier**2 * noise_var + (0.0 if last else added)
        elif kind == "dpm_solver":
            if last:
                slope, offset = x0_slope, x0_offset
                break
            alpha_s, sigma_s = np.sqrt(a_s), np.sqrt(1.0 - a_s)
            h = np.log(alpha_s / sigma_s) - np.log(alpha / sigma)
            data_slope, data_offset = x0_slope, x0_offset
            if previous is not None:
                (previous_slope, previous_offset), previous_h = previous
                half_inverse_r = 1.0 / (2.0 * previous_h / h)
                data_slope = (1 + half_inverse_r) * x0_slope - half_inverse_r * previous_slope
                data_offset = (1 + half_inverse_r) * x0_offset - half_inverse_r * previous_offset
            slope = sigma_s / sigma * slope - alpha_s * np.expm1(-h) * data_slope
            offset = sigma_s / sigma * offset - alpha_s * np.expm1(-h) * data_offset
            previous = (x0_slope, x0_offset), h
        else:
            raise ValueError(f"unknown kind {kind!r}")
    return AffineLaw(offset, slope, np.sqrt(noise_var))


def effective_stds(mixture: GaussianMixture, schedule: dj.DiffusionSchedule) -> np.ndarray:
    """Per-mode stds [K, D] of an ideal sampler: alpha_0 s^2 / sqrt(alpha_0^2 s^2 + sigma_0^2).

    The samplers return E[x_0 | x] at t = 0; for well-separated modes that is the Gaussian
    posterior mean of the mode x belongs to, which shrinks the mode by this factor (0.98 for
    s = 0.05 with the linear schedule) and leaves its mean and weight unchanged.
    """
    alpha_0 = float(schedule.sqrt_alphas_cumprod[0])
    sigma_0 = float(schedule.sqrt_one_minus_alphas_cumprod[0])
    stds = mixture.stds
    return alpha_0 * stds**2 / np.sqrt(alpha_0**2 * stds**2 + sigma_0**2)


class ModeStatistics(NamedTuple):
    """Per-mode statistics of samples against a well-separated mixture, each with its null law.

    Attributes:
      weights_chi2: Pearson sum_k (n_k - N w_k)^2 / (N w_k); ~ chi^2 with K - 1 dof.
      width_chi2: sum_k z_k^2, z_k = (r_k^2 - 1) sqrt(n_k D / 2); ~ chi^2 with K dof.
      means_chi2: sum_k n_k ||mean_k - m_k||^2 / s_k^2 (isotropic s_k); ~ chi^2 with K D dof.
      width_ratio: pooled r = sqrt(sum ||x - m_k||^2 / (N D s_k^2)); 1 +- 1/sqrt(2 N D).
    """

    weights_chi2: float
    width_chi2: float
    means_chi2: float
    width_ratio: float

    def dof(self, num_modes: int, dim: int) -> int:
        return (num_modes - 1) + num_modes + num_modes * dim

    def normalized(self, num_modes: int, dim: int) -> float:
        """(weights + width + means chi^2) / dof: about 1 for exact samples."""
        total = self.weights_chi2 + self.width_chi2 + self.means_chi2
        return total / self.dof(num_modes, dim)


def mode_statistics(mixture: GaussianMixture, stds: np.ndarray, x) -> ModeStatistics:
    """Assigns each sample to its nearest mode mean and compares counts, widths and means.

    Args:
      mixture: the data law (means and weights are used).
      stds: [K, D] isotropic per-mode stds to test against (e.g. :func:`effective_stds`).
      x: samples [N, D].
    """
    x = np.asarray(x, np.float64).reshape(len(x), -1)
    num, dim = x.shape
    num_modes = len(mixture.weights)
    distances = ((x[:, None, :] - mixture.means[None]) ** 2).sum(-1)
    nearest = distances.argmin(1)
    counts = np.bincount(nearest, minlength=num_modes)
    expected = num * mixture.weights
    weights_chi2 = float(((counts - expected) ** 2 / expected).sum())
    width_chi2 = means_chi2 = pooled = 0.0
    for k in range(num_modes):
        members = x[nearest == k]
        if len(members) == 0:
            return ModeStatistics(weights_chi2, np.inf, np.inf, 0.0)
        scale = stds[k, 0]
        squared = ((members - mixture.means[k]) ** 2).sum() / scale**2
        pooled += squared
        width_chi2 += (squared / (len(members) * dim) - 1.0) ** 2 * len(members) * dim / 2.0
        means_chi2 += len(members) * ((members.mean(0) - mixture.means[k]) ** 2).sum() / scale**2
    return ModeStatistics(
        weights_chi2, width_chi2, means_chi2, float(np.sqrt(pooled / (num * dim)))
    )


def gaussian_moment_chi2(x, mean: np.ndarray, stds: np.ndarray) -> float:
    """sum_d [N (mean_d - m_d)^2 / s_d^2 + 2 (N - 1) (std_d / s_d - 1)^2]: ~ chi^2 with 2D dof
    for N samples of N(m, diag(s^2)) (the std term by the delta method)."""
    x = np.asarray(x, np.float64).reshape(len(x), -1)
    num = len(x)
    mean_term = num * (x.mean(0) - mean) ** 2 / stds**2
    std_term = 2.0 * (num - 1) * (x.std(0, ddof=1) / stds - 1.0) ** 2
    return float((mean_term + std_term).sum())


class FullGaussian(NamedTuple):
    """Data law N(mean, covariance) with a full covariance (float64 [D], [D, D])."""

    mean: np.ndarray
    covariance: np.ndarray

    def sample(self, rng: np.random.Generator, num: int) -> np.ndarray:
        return rng.multivariate_normal(self.mean, self.covariance, size=num)

    def log_prob(self, x: np.ndarray, alpha: float = 1.0, sigma: float = 0.0) -> np.ndarray:
        """log q_t(x) of x_t = alpha x_0 + sigma eps: N(alpha mean, alpha^2 C + sigma^2 I), [N]."""
        dim = self.mean.shape[0]
        covariance = alpha**2 * self.covariance + sigma**2 * np.eye(dim)
        residual = np.asarray(x, np.float64) - alpha * self.mean
        _, log_det = np.linalg.slogdet(covariance)
        mahalanobis = np.einsum("nd,de,ne->n", residual, np.linalg.inv(covariance), residual)
        return -0.5 * (mahalanobis + log_det + dim * np.log(2 * np.pi))


def random_full_gaussian(dim: int, seed: int = 0) -> FullGaussian:
    """N(m, Q diag(s^2) Q^T) with a random rotation Q and stds s spread over [0.2, 1]: strongly
    correlated coordinates, so that Hutchinson's estimator has a non-zero variance."""
    rng = np.random.default_rng(seed)
    rotation, _ = np.linalg.qr(rng.standard_normal((dim, dim)))
    stds = np.linspace(0.2, 1.0, dim)
    return FullGaussian(0.3 * rng.standard_normal(dim), rotation @ np.diag(stds**2) @ rotation.T)


def _full_gaussian_predict(prediction_type):
    def predict(mean, eigenvalues, eigenvectors, process, x_in, t_in):
        flat = x_in.reshape(x_in.shape[0], -1)
        t = time_from_model_time(process, t_in)
        m = dj.marginal(process, t, 2)
        scale = predictions.input_scale(prediction_type, m)
        x_t = flat if scale is None else flat / scale
        gain = m.alpha * eigenvalues / (m.alpha**2 * eigenvalues + m.sigma**2)  # [B, D]
        residual = (x_t - m.alpha * mean) @ eigenvectors
        x0_hat = mean + (gain * residual) @ eigenvectors.T
        eps_hat = (x_t - m.alpha * x0_hat) / m.sigma
        return predictions.target(prediction_type, x0_hat, eps_hat, m).reshape(x_in.shape)

    return predict


_FULL_GAUSSIAN = {name: _full_gaussian_predict(name) for name in predictions.PREDICTION_TYPES}


def full_gaussian_model_fn(law: FullGaussian, process, prediction_type: str = "x0"):
    """The exact ``model_fn`` of N(mean, C) for a continuous process:
    E[x_0 | x_t] = m + alpha C (alpha^2 C + sigma^2 I)^-1 (x_t - alpha m)."""
    eigenvalues, eigenvectors = np.linalg.eigh(law.covariance)
    return jax.tree_util.Partial(
        _FULL_GAUSSIAN[prediction_type],
        jnp.asarray(law.mean, jnp.float32),
        jnp.asarray(eigenvalues, jnp.float32),
        jnp.asarray(eigenvectors, jnp.float32),
        process,
    )


class IntervalMixture(NamedTuple):
    """Per axis (D independent axes), the piecewise-uniform law sum_k P_k U[lows_k, highs_k]:
    what uniform dequantization makes of a discrete law on the 8-bit grid. float64 [K] each."""

    weights: np.ndarray
    lows: np.ndarray
    highs: np.ndarray
    dim: int

    def entropy_bits(self) -> float:
        """Bits per axis of the discrete law on the 8-bit bins: H(P) + sum_k P_k log2(n_k), with
        n_k = (highs_k - lows_k) / (2 / 255) bins under component k."""
        bins = (self.highs - self.lows) * 127.5
        return float(-np.sum(self.weights * np.log2(self.weights / bins)))

    def sample_levels(self, rng: np.random.Generator, num: int) -> np.ndarray:
        """8-bit data k / 127.5 - 1 [num, D]: k uniform on component k's bins (float32)."""
        component = rng.choice(len(self.weights), size=(num, self.dim), p=self.weights)
        first = np.rint((self.lows + 1.0) * 127.5 + 0.5).astype(int)[component]
        count = np.rint((self.highs - self.lows) * 127.5).astype(int)[component]
        levels = first + np.floor(rng.random((num, self.dim)) * count).astype(int)
        return (levels / 127.5 - 1.0).astype(np.float32)

    def log_prob(self, x: np.ndarray, alpha: float, sigma: float) -> np.ndarray:
        """log q_t(x) of x_t = alpha y + sigma eps, [N] (sums over the D axes), float64."""
        from scipy.special import log_ndtr, logsumexp

        x = np.asarray(x, np.float64)[..., None]
        log_mass = _log_interval_mass(x / alpha, sigma / alpha, self.lows, self.highs, log_ndtr, np)
        log_density = logsumexp(
            np.log(self.weights) - np.log(self.highs - self.lows) + log_mass, axis=-1
        ) - np.log(alpha)
        return np.sum(log_density, axis=-1)


def _log_interval_mass(mean, scale, lows, highs, log_ndtr, xp):
    """log(Phi((high - mean) / scale) - Phi((low - mean) / scale)), stable on both sides."""
    upper, lower = (highs - mean) / scale, (lows - mean) / scale
    flip = lower > 0
    big = xp.where(flip, log_ndtr(-lower), log_ndtr(upper))
    small = xp.where(flip, log_ndtr(-upper), log_ndtr(lower))
    return big + xp.log1p(-xp.exp(small - big))


def _interval_predict(weights, lows, highs, process, x_in, t_in):
    from jax.scipy.special import log_ndtr

    t = time_from_model_time(process, t_in)
    m = dj.marginal(process, t, x_in.ndim)
    # At alpha = 0 the posterior is the prior; alpha = 1e-6 gives it to float32 precision.
    alpha, sigma = jnp.maximum(m.alpha[..., None], 1e-6), m.sigma[..., None]
    mean, scale = x_in[..., None] / alpha, sigma / alpha  # [B, ..., 1]
    log_mass = _log_interval_mass(mean, scale, lows, highs, log_ndtr, jnp)  # [B, ..., K]
    responsibilities = jax.nn.softmax(jnp.log(weights / (highs - lows)) + log_mass, axis=-1)
    upper, lower = (highs - mean) / scale, (lows - mean) / scale
    log_phi = lambda z: -0.5 * z**2 - 0.5 * np.log(2 * np.pi)  # noqa: E731
    within = mean + scale * (
        jnp.exp(log_phi(lower) - log_mass) - jnp.exp(log_phi(upper) - log_mass)
    )
    return jnp.sum(responsibilities * jnp.clip(within, lows, highs), axis=-1)


def interval_model_fn(law: IntervalMixture, process) -> jax.tree_util.Partial:
    """The exact x0-prediction E[y | x_t] of the piecewise-uniform law (truncated normals)."""
    return jax.tree_util.Partial(
        _interval_predict,
        jnp.asarray(law.weights, jnp.float32),
        jnp.asarray(law.lows, jnp.float32),
        jnp.asarray(law.highs, jnp.float32),
        process,
    )


class CallCounter:
    """A model wrapper that counts, at run time, how many times the model is evaluated."""

    def __init__(self, model_fn):
        self.model_fn, self.calls = model_fn, 0

    def _count(self):
        self.calls += 1

    def __call__(self, x, t):
        jax.debug.callback(self._count)
        return self.model_fn(x, t)


def _class_log_prob(means, variances0, log_weights, process, labels, x_t, t):
    alpha, sigma = dj.alpha_sigma(process, t, 3)  # [B, 1, 1]
    variances_t = alpha**2 * variances0 + sigma**2  # [B, K, D]
    residual = x_t.reshape(x_t.shape[0], 1, -1) - alpha * means
    log_density = -0.5 * jnp.sum(
        residual**2 / variances_t + jnp.log(2 * jnp.pi * variances_t), axis=-1
    )
    log_posterior = jax.nn.log_softmax(log_weights + log_density, axis=-1)  # [B, K]
    return jnp.take_along_axis(log_posterior, labels[:, None], axis=-1)[:, 0]


def exact_class_log_prob(
    mixture: GaussianMixture, process, labels: jnp.ndarray
) -> jax.tree_util.Partial:
    """``log_prob_fn(x_t [B, D], t [B]) -> [B]``: the exact log p(y | x_t) of the noised mixture
    when the class y is the component (Bayes' rule on the mixture of the module docstring).
    ``t`` is the process time: int for a schedule, float for a continuous process."""
    return jax.tree_util.Partial(
        _class_log_prob,
        *_mixture_arrays(mixture),
        dj.processes.as_jit_argument(process),
        jnp.asarray(labels, jnp.int32),
    )


def component(mixture: GaussianMixture, index: int) -> GaussianMixture:
    """Mixture component ``index`` alone: the data law of class ``index``."""
    return GaussianMixture(
        np.ones(1), mixture.means[index : index + 1], mixture.stds[index : index + 1]
    )


def _learned_variance_predict(mean, variance0, sqrt_ac, sqrt_1mac, chain, x_t, t):
    chain_index, coef1, posterior_variance, min_log, max_log = chain
    alpha, sigma = sqrt_ac[t][:, None], sqrt_1mac[t][:, None]
    total = alpha**2 * variance0 + sigma**2
    x0_mean = mean + alpha * variance0 / total * (x_t - alpha * mean)
    x0_variance = variance0 * sigma**2 / total
    i = chain_index[t]
    reverse_variance = posterior_variance[i][:, None] + coef1[i][:, None] ** 2 * x0_variance
    low, high = min_log[i][:, None], max_log[i][:, None]
    values = 2.0 * (jnp.log(reverse_variance) - low) / (high - low) - 1.0
    return jnp.concatenate([(x_t - alpha * x0_mean) / sigma, values], axis=-1)


def learned_variance_model_fn(
    law: GaussianMixture, schedule: dj.DiffusionSchedule, timesteps: np.ndarray
) -> jax.tree_util.Partial:
    """The exact learned-variance ``model_fn(x_t [B, D], t [B]) -> [B, 2 D]`` of Gaussian data
    (one component) on the DDPM chain over ``timesteps`` (a respaced subset of the schedule's):
    eps_hat, then the Improved DDPM values v that make exp(v' log beta' + (1 - v') log beta~'),
    v' = (v + 1) / 2, the true reverse variance of the chain,

        Var[x_{s} | x_t] = beta~'_t + coef1'_t^2 Var[x_0 | x_t],
        Var[x_0 | x_t] = s^2 sigma_t^2 / (alpha_t^2 s^2 + sigma_t^2),

    with the chain's posterior coefficient coef1' and bounds beta~', beta' (the reverse kernel of
    Gaussian data is exactly Gaussian, so the ancestral chain with these moments samples
    q(x_s) exactly at every step, whatever the step count)."""
    ascending = np.sort(np.asarray(timesteps))
    chain = dj.samplers.respace_schedule(schedule, ascending)
    chain_index = np.zeros(schedule.num_timesteps, np.int32)
    chain_index[ascending] = np.arange(len(ascending))
    arrays = (
        jnp.asarray(chain_index),
        chain.posterior_mean_coef1,
        chain.posterior_variance,
        chain.posterior_log_variance_clipped,
        jnp.log(chain.betas),
    )
    return jax.tree_util.Partial(
        _learned_variance_predict,
        jnp.asarray(law.means[0], jnp.float32),
        jnp.asarray(law.stds[0] ** 2, jnp.float32),
        schedule.sqrt_alphas_cumprod,
        schedule.sqrt_one_minus_alphas_cumprod,
        arrays,
    )
