"""DPM-Solver++(2M): a second-order multistep solver of the probability-flow ODE in data-prediction
form (Lu et al. 2022, "DPM-Solver++", arXiv:2211.01095, Algorithm 2), for any process.

With lambda_t = log(alpha_t / sigma_t), h_i = lambda_{t_i} - lambda_{t_{i-1}} and
r_i = h_{i-1} / h_i, one step from grid point t_{i-1} to t_i is

    x_{t_i} = (sigma_{t_i} / sigma_{t_{i-1}}) x_{t_{i-1}} + alpha_{t_i} (1 - e^{-h_i}) D_i,
    D_i = (1 + 1 / (2 r_i)) x0_{i-1} - 1 / (2 r_i) x0_{i-2},

where x0_j is the (optionally clipped) x0-prediction at t_j and the first step uses
D_1 = x0_0. With ``order=1`` every D_i = x0_{i-1}: that is DDIM with eta = 0.

Coefficients are computed once in float64 NumPy from the concrete process, written so that
nothing is infinite:
alpha_{t_i} (1 - e^{-h_i}) = alpha_{t_i} - alpha_{t_{i-1}} sigma_{t_i} / sigma_{t_{i-1}}
and 1 / (2 r_i) = h_i / (2 h_{i-1}), which is 0 after a zero-terminal-SNR start (h_1 = inf).
After the last grid point the solver steps to sigma = 0, where h = inf and a second-order
extrapolation in lambda diverges; that step is first order, so the sample is the x0-prediction
at the last grid point. See :mod:`diffjax.samplers.timesteps` for why the grid must end at the
smallest noise level and why its start is clipped at a log-SNR of -6; a continuous process's
grid (:func:`~diffjax.samplers.grids.log_snr_times`) follows the same rules and ends where
sigma / alpha = 0.002.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import DTypeLike

from diffjax import predictions
from diffjax.processes import check_process, is_discrete
from diffjax.samplers.grids import check_defined_start, log_snr_times, make_grid
from diffjax.samplers.runner import Plan, run_plan
from diffjax.samplers.steps import dpm_solver_2m_step
from diffjax.samplers.timesteps import concrete_schedule_array, solver_timesteps

__all__ = ["SOLVER_ORDERS", "dpm_solver_coefficients", "dpm_solver_plan", "dpm_solver_sample"]

SOLVER_ORDERS: tuple[int, ...] = (1, 2)


def dpm_solver_coefficients(
    alphas: np.ndarray,
    sigmas: np.ndarray,
    timesteps: np.ndarray,
    order: int = 2,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-step coefficients of DPM-Solver++(2M) on a grid, in float64 (Lu et al. 2022,
    "DPM-Solver++", arXiv:2211.01095, Algorithm 2; order 1 is DDIM, Song et al. 2021, eq. 12).

    Step k goes from grid point k to grid point k + 1 (or to sigma = 0 after the last one):
    x_{k+1} = state_scale[k] x_k
              + data_scale[k] ((1 + correction[k]) x0_k - correction[k] x0_{k-1}).

    Args:
      alphas: float64 alpha at each index ``timesteps`` refers to (``[T]`` for a schedule).
      sigmas: float64 sigma there (> 0 at every grid point).
      timesteps: int ``[S]`` indices of the grid points into ``alphas``, in visiting order.
      order: 1 (DDIM) or 2 (DPM-Solver++(2M)).

    Returns:
      ``(state_scale, data_scale, correction)``, each float64 ``[S]``.
    """
    alpha = alphas[timesteps]
    sigma = sigmas[timesteps]
    alpha_next = np.concatenate([alpha[1:], [1.0]])
    sigma_next = np.concatenate([sigma[1:], [0.0]])
    state_scale = sigma_next / sigma
    data_scale = alpha_next - alpha * state_scale
    correction = np.zeros_like(alpha)
    if order == 2 and len(timesteps) > 2:
        with np.errstate(divide="ignore"):
            lambdas = np.log(alpha) - np.log(sigma)
        steps = np.diff(lambdas)  # h_1 .. h_{S-1}, between consecutive grid points
        # Steps 1 .. S-2 land on grid points; step 0 and the last step (to sigma = 0) stay
        # first order.
        correction[1:-1] = steps[1:] / (2.0 * steps[:-1])
    return state_scale, data_scale, correction


def _dpm_solver_body(model, process, x, previous_x0, step, noise_key, settings, options):
    _, x0, _ = settings.denoise(model, step.current, x)
    c = step.coefficients
    x_next = dpm_solver_2m_step(
        x, x0, previous_x0, c["state_scale"], c["data_scale"], c["correction"]
    )
    return x_next, x0, x0


def dpm_solver_plan(
    process: Any,
    *,
    num_steps: int = 20,
    spacing: str = "logsnr",
    order: int = 2,
    min_log_snr: float = -6.0,
    prediction_type: str,
) -> Plan:
    """Checks DPM-Solver++'s options and builds its grid (see :func:`dpm_solver_sample`):
    DPM-Solver++(2M) (Lu et al. 2022, "DPM-Solver++", arXiv:2211.01095, Algorithm 2)."""
    check_process(process)
    predictions.check_prediction_supported(prediction_type, process)
    if order not in SOLVER_ORDERS or isinstance(order, bool):
        raise ValueError(f"Unknown order {order!r}; expected one of {SOLVER_ORDERS}.")
    # An eps-model's x0 is ill-conditioned at tiny alpha: do not start there (timesteps docs).
    start_at_t_max = prediction_type != "eps"
    if is_discrete(process):
        alpha = concrete_schedule_array(process.sqrt_alphas_cumprod, "dpm_solver_sample")
        sigma = concrete_schedule_array(process.sqrt_one_minus_alphas_cumprod, "dpm_solver_sample")
        times = solver_timesteps(alpha, sigma, num_steps, spacing, min_log_snr, start_at_t_max)
        grid = make_grid(process, times)
        coefficients = dpm_solver_coefficients(alpha, sigma, times, order)
    else:
        if spacing != "logsnr":
            raise ValueError(
                f"Unknown spacing {spacing!r} for a continuous process; expected 'logsnr' "
                f"(use the 'heun' or 'euler' sampler for Karras et al.'s grid)."
            )
        times = log_snr_times(
            process, num_steps, min_log_snr=min_log_snr, start_at_t_max=start_at_t_max
        )
        grid = make_grid(process, times)
        alpha, sigma = process.alpha_sigma(times, np)
        coefficients = dpm_solver_coefficients(
            np.broadcast_to(alpha, times.shape), np.broadcast_to(sigma, times.shape),
            np.arange(times.shape[0]), order,
        )  # fmt: skip
    check_defined_start(grid, prediction_type, process)
    state_scale, data_scale, correction = coefficients
    return Plan(
        body=_dpm_solver_body,
        grid=grid,
        coefficients=dict(state_scale=state_scale, data_scale=data_scale, correction=correction),
        prediction_type=prediction_type,
        variance_preserving=is_discrete(process) or process.variance_preserving,
        start_scale=1.0 if is_discrete(process) else float(grid.sigma[0]),
        initial_carry=jnp.zeros_like,
    )


def dpm_solver_sample(
    model_fn: Callable[[jnp.ndarray, jnp.ndarray], jnp.ndarray],
    process: Any,
    key: jax.Array,
    shape: tuple[int, ...],
    *,
    num_steps: int = 20,
    spacing: str = "logsnr",
    order: int = 2,
    min_log_snr: float = -6.0,
    prediction_type: str,
    clip_x0: bool = False,
    x_T: jnp.ndarray | None = None,
    return_trajectory: bool = False,
    dtype: DTypeLike = jnp.float32,
    out_sharding: jax.sharding.Sharding | None = None,
    guide: Callable | None = None,
):
    """DPM-Solver++(2M) sampling (Lu et al. 2022, Algorithm 2) as one ``lax.scan``.

    Deterministic given x_T: the key only draws x_T. ``num_steps`` model calls on a grid that
    ends at the smallest noise level (t = 0 of a schedule), then the x0-prediction there is
    returned. The grid starts at the largest t for 'v', 'x0', 'flow' and 'edm' models and, for
    'eps' models, at the first time above ``min_log_snr``, where x0 = (x_t - sigma eps) / alpha
    does not amplify the model's error by up to sigma / alpha = 2e4 (the cosine schedule's
    T-1); see :mod:`diffjax.samplers.timesteps`.

    Args:
      model_fn: ``model_fn(x_in [B, ...], t_in [B]) -> prediction [B, ...]``.
      process: the schedule or continuous process (concrete: the grid is built in NumPy).
      key: PRNG key (or ``[B]`` per-sample keys) for x_T.
      shape: ``(B, ...)`` of the samples.
      num_steps: S, the number of model calls (1 <= S <= T for a schedule).
      spacing: ``'logsnr'`` (uniform in lambda, the default); for a schedule also
        ``'karras'`` or one of the t-based ``'leading' | 'trailing' | 'linspace'`` (for
        comparison: they end far from t = 0 or space the low-noise end too coarsely).
      order: 2 for DPM-Solver++(2M), 1 for its first-order form (= DDIM, eta = 0).
      min_log_snr: no model call below this log-SNR (except at the largest t for non-eps
        models); see :func:`log_snr_timesteps`.
      prediction_type: what the model predicts.
      clip_x0: clip each x0-prediction to [-1, 1] (the "thresholding" of Lu et al. 2022).
      x_T: optional start ``[B, ...]``.
      return_trajectory: also return a :class:`Trajectory`.
      dtype: dtype of the state.
      out_sharding: optional sharding of ``[B, ...]``.
      guide: ``guide(x_t, t, alpha, sigma, x0_hat, eps_hat) -> (x0_hat, eps_hat)`` after each
        network call (:mod:`diffjax.samplers.guidance`), before ``clip_x0``; None for none.

    Returns:
      Samples ``[B, ...]``, or ``(samples, trajectory)``.

    Raises:
      ValueError / TypeError: for a bad argument, before anything is compiled.
    """
    plan = dpm_solver_plan(
        process, num_steps=num_steps, spacing=spacing, order=order, min_log_snr=min_log_snr,
        prediction_type=prediction_type,
    )  # fmt: skip
    return run_plan(
        plan, model_fn, process, key, shape, clip_x0=clip_x0, x_T=x_T,
        return_trajectory=return_trajectory, dtype=dtype, out_sharding=out_sharding,
        guide=guide,
    )  # fmt: skip
