"""What a network predicts, as a linear map of (x_0, eps), inverted generically.

With x_t = alpha x_0 + sigma eps, every prediction type is

    prediction = a x_0 + b eps,

with (a, b) functions of the marginal (:class:`~diffjax.processes.Marginal`):

==========  =====================================  ==========================================
type        (a, b)                                 reference
==========  =====================================  ==========================================
``eps``     (0, 1)                                 Ho et al. 2020, eq. 11
``x0``      (1, 0)
``v``       (-sigma, alpha)                        Salimans & Ho 2022, Sec. 4 (any alpha, sigma)
``flow``    (d alpha / dt, d sigma / dt)           the velocity dx_t / dt; eps - x_0 for
                                                   rectified flow (Liu et al. 2022, eq. 1)
``edm``     (sigma / (s_d D), -alpha s_d / D),     EDM's preconditioned F (Karras et al. 2022,
            D = sqrt(sigma^2 + alpha^2 s_d^2)      eq. 7 and Table 1), s_d = sigma_data = 0.5
==========  =====================================  ==========================================

Given the prediction and x_t, the pair (x_0, eps) solves a 2x2 system with determinant
det = alpha b - sigma a:

    x_0 = (b x_t - sigma prediction) / det,   eps = (alpha prediction - a x_t) / det.

eps, x0 and v on a variance-preserving process (det = alpha^2 + sigma^2 = 1) use the familiar
closed forms, so DDPM-style code computes exactly what it always did. 'edm' also scales the
network's input: the network sees x_t / D (EDM's c_in applied to x_t / alpha), see
:func:`input_scale`; every other type feeds x_t as it is.

The squared error of a prediction is (det / sigma)^2 times the squared error of its implied
x_0 (at fixed x_t), which is how :mod:`diffjax.losses` turns an x_0-space weighting into one on
the network's own target.
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp

from diffjax.processes import Marginal, is_discrete

__all__ = [
    "EDM_SIGMA_DATA",
    "PREDICTION_TYPES",
    "check_prediction_supported",
    "check_prediction_type",
    "coefficients",
    "convert_prediction",
    "determinant",
    "input_scale",
    "network_inputs",
    "target",
    "to_x0_eps",
]

PREDICTION_TYPES: tuple[str, ...] = ("eps", "x0", "v", "flow", "edm")
EDM_SIGMA_DATA = 0.5
"""sigma_data of EDM's preconditioning (Karras et al. 2022: 0.5 for images in [-1, 1])."""


def check_prediction_type(prediction_type: str) -> None:
    """Raises ``ValueError`` unless ``prediction_type`` is one of :data:`PREDICTION_TYPES`."""
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(
            f"Unknown prediction_type {prediction_type!r}; expected one of {PREDICTION_TYPES}."
        )


def check_prediction_supported(prediction_type: str, process: Any) -> None:
    """Raises ``ValueError`` if ``process`` cannot define ``prediction_type``.

    The velocity ('flow') needs d alpha / dt and d sigma / dt, which a discrete schedule does
    not have.
    """
    check_prediction_type(prediction_type)
    if prediction_type == "flow" and is_discrete(process):
        raise ValueError(
            "prediction_type 'flow' (the velocity d x_t / dt) needs a continuous process; a "
            "discrete DiffusionSchedule has no time derivative. Use 'eps', 'x0', 'v' or 'edm', "
            "or a continuous process such as 'rectified_flow'."
        )


def _edm_norm(m: Marginal) -> jnp.ndarray:
    return jnp.sqrt(m.sigma**2 + (EDM_SIGMA_DATA * m.alpha) ** 2)


def coefficients(prediction_type: str, m: Marginal) -> tuple[Any, Any]:
    """(a, b) with prediction = a x_0 + b eps (see the module table: Ho et al. 2020, eq. 11;
    Salimans & Ho 2022, Sec. 4; Karras et al. 2022, eq. 7 and Table 1).

    Args:
      prediction_type: one of :data:`PREDICTION_TYPES`.
      m: the marginal at the prediction's time; 'flow' needs its derivatives.

    Returns:
      ``(a, b)``, arrays broadcastable like ``m.alpha`` (Python numbers for eps and x0).
    """
    check_prediction_type(prediction_type)
    if prediction_type == "eps":
        return 0.0, 1.0
    if prediction_type == "x0":
        return 1.0, 0.0
    if prediction_type == "v":
        return -m.sigma, m.alpha
    if prediction_type == "flow":
        if m.d_alpha is None:
            raise ValueError("prediction_type 'flow' needs the marginal's time derivatives.")
        return m.d_alpha, m.d_sigma
    norm = _edm_norm(m)
    return m.sigma / (EDM_SIGMA_DATA * norm), -m.alpha * EDM_SIGMA_DATA / norm


def determinant(prediction_type: str, m: Marginal) -> Any:
    """det = alpha b - sigma a of the (x_t, prediction) system; 0 where x_0 is undetermined."""
    if prediction_type == "eps":
        return m.alpha
    if prediction_type == "x0":
        return -m.sigma
    if prediction_type == "v" and m.variance_preserving:
        return 1.0
    if prediction_type == "edm":
        return -_edm_norm(m) / EDM_SIGMA_DATA
    a, b = coefficients(prediction_type, m)
    return m.alpha * b - m.sigma * a


def target(prediction_type: str, x0: jnp.ndarray, eps: jnp.ndarray, m: Marginal) -> jnp.ndarray:
    """The regression target a x_0 + b eps of ``prediction_type``: eps (Ho et al. 2020,
    eq. 14), v (Salimans & Ho 2022, Sec. 4), EDM's effective target (Karras et al. 2022, eq. 8).

    Args:
      prediction_type: one of :data:`PREDICTION_TYPES`.
      x0: ``[B, ...]``.
      eps: ``[B, ...]``.
      m: the marginal, broadcastable to ``x0``.

    Returns:
      ``[B, ...]``.
    """
    check_prediction_type(prediction_type)
    if prediction_type == "eps":
        return eps
    if prediction_type == "x0":
        return x0
    if prediction_type == "v":
        return m.alpha * eps - m.sigma * x0
    a, b = coefficients(prediction_type, m)
    return a * x0 + b * eps


def to_x0_eps(
    prediction_type: str, prediction: jnp.ndarray, x_t: jnp.ndarray, m: Marginal
) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Inverts a prediction into the pair (x_0, eps) it implies at ``x_t``.

    x_0 = (x_t - sigma eps) / alpha for eps (Ho et al. 2020, eq. 15), EDM's
    D = c_skip x + c_out F for 'edm' (Karras et al. 2022, eq. 7), and the 2x2 inversion of the
    module docstring for every type.

    Args:
      prediction_type: one of :data:`PREDICTION_TYPES`.
      prediction: the network output ``[B, ...]``.
      x_t: the noisy input ``[B, ...]`` (unscaled, whatever :func:`input_scale` fed the net).
      m: the marginal at t, broadcastable to ``x_t``.

    Returns:
      ``(x0, eps)``, each ``[B, ...]``. Undefined where det = 0 (e.g. eps at alpha = 0).
    """
    check_prediction_type(prediction_type)
    if prediction_type == "eps":
        return (x_t - m.sigma * prediction) / m.alpha, prediction
    if prediction_type == "x0":
        return prediction, (x_t - m.alpha * prediction) / m.sigma
    if prediction_type == "v" and m.variance_preserving:
        return m.alpha * x_t - m.sigma * prediction, m.sigma * x_t + m.alpha * prediction
    a, b = coefficients(prediction_type, m)
    det = determinant(prediction_type, m)
    return (b * x_t - m.sigma * prediction) / det, (m.alpha * prediction - a * x_t) / det


def convert_prediction(
    prediction: jnp.ndarray, x_t: jnp.ndarray, m: Marginal, from_type: str, to_type: str
) -> jnp.ndarray:
    """Re-expresses a prediction of one type as another at the same (x_t, t): all are affine in
    (x_0, eps), the parameterisations of Salimans & Ho 2022, Sec. 4 (:func:`to_x0_eps`, then
    :func:`target`)."""
    if from_type == to_type:
        check_prediction_type(from_type)
        return prediction
    x0, eps = to_x0_eps(from_type, prediction, x_t, m)
    return target(to_type, x0, eps, m)


def input_scale(prediction_type: str, m: Marginal) -> jnp.ndarray | None:
    """What multiplies x_t before the network sees it: 1 / sqrt(sigma^2 + alpha^2 s_d^2) for
    'edm' (c_in of x_t / alpha; Karras et al. 2022, eq. 7 and Table 1), None (no scaling) for
    every other type."""
    if prediction_type != "edm":
        return None
    return 1.0 / _edm_norm(m)


def network_inputs(
    prediction_type: str, process: Any, m: Marginal, x_t: jnp.ndarray, t: jnp.ndarray
) -> tuple[jnp.ndarray, jnp.ndarray]:
    """What a ``model_fn`` is called with at (x_t, t).

    The network sees x_t scaled by :func:`input_scale` ('edm' only) and the process's model
    time (the int index for a schedule; 1000 t or EDM's c_noise for a continuous process): EDM's
    F(c_in x; c_noise) (Karras et al. 2022, eq. 7 and Table 1).

    Args:
      prediction_type: what the network predicts.
      process: the noise process.
      m: the marginal at ``t`` (:func:`diffjax.processes.marginal`).
      x_t: ``[B, ...]``.
      t: ``[B]`` process times.

    Returns:
      ``(network input [B, ...] in the dtype of x_t, network time [B])``.
    """
    scale = input_scale(prediction_type, m)
    x_in = x_t if scale is None else x_t * scale.astype(x_t.dtype)
    t_in = t if is_discrete(process) else process.model_time(jnp.asarray(t, jnp.float32))
    return x_in, t_in
