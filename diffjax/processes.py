"""Noise processes: x_t = alpha(t) x_0 + sigma(t) eps, for discrete and continuous time.

Every process answers the same questions, so that the forward process, the losses and the
samplers are written once:

========================  ====================================================================
``alpha_sigma(t, xp)``    the signal scale alpha(t) and noise scale sigma(t)
``derivatives(t, xp)``    d alpha / dt and d sigma / dt (continuous processes)
``t_from_log_snr(l, xp)`` the time at which log-SNR = log(alpha^2 / sigma^2) equals ``l``
``model_time(t, xp)``     what the network is given as its time input
========================  ====================================================================

``xp`` is ``jax.numpy`` inside traced code and ``numpy`` (float64) where grids are built before
compiling (DESIGN rule 6). The convention for every continuous process is t in [0, 1] with
t = 0 the data and t = 1 the noise; a :class:`~diffjax.schedules.DiffusionSchedule` is the
discrete process whose time is the int32 index t in [0, T) (0-based, as in the rest of diffjax).

=====================  ==========================================  ===========================
process                alpha(t), sigma(t)                          model time
=====================  ==========================================  ===========================
:class:`VPLinear`      exp(-t^2 (b1 - b0) / 4 - t b0 / 2),         1000 t
                       sqrt(1 - alpha^2)  (Song et al. 2021, VP)
:class:`VPCosine`      cos(phi_t) / cos(phi_0), sqrt(1 - alpha^2),  1000 t
                       phi_t = (t + s) / (1 + s) pi / 2
:class:`VE`            1, sigma_min (sigma_max / sigma_min)^t       1000 t
:class:`EDM`           1, t sigma_max  (Karras et al. 2022)         ln(sigma) / 4 (c_noise)
:class:`RectifiedFlow` 1 - t, sigma_min + (1 - sigma_min) t         1000 t
=====================  ==========================================  ===========================

The SDE of a process (Song et al. 2021, "Score-Based Generative Modeling through Stochastic
Differential Equations", arXiv:2011.13456, eq. 5; Kingma et al. 2021, VDM, Appendix) follows
from alpha and sigma alone: dx = f(t) x dt + g(t) dw with f = d log alpha / dt and
g^2 = d sigma^2 / dt - 2 f sigma^2 (:func:`sde_coefficients`).

EDM is parametrised by t = sigma / sigma_max, so it keeps the [0, 1] convention: its grids and
samplers work in sigma and map back with ``t_from_log_snr``; its log-normal training noise
(P_mean -1.2, P_std 1.2) is clipped at sigma_max, where it leaves a tail of 1.7e-6.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable, Protocol, Union

import jax
import jax.numpy as jnp
import numpy as np

from diffjax.schedules import DiffusionSchedule

__all__ = [
    "CONTINUOUS_PROCESSES",
    "EDM",
    "Marginal",
    "PROCESS_NAMES",
    "ContinuousProcess",
    "Process",
    "RectifiedFlow",
    "ScheduleTime",
    "VE",
    "VPCosine",
    "VPLinear",
    "PROCESS_PROTOCOL",
    "alpha_sigma",
    "as_continuous",
    "as_jit_argument",
    "check_process",
    "check_time",
    "get_process",
    "is_discrete",
    "log_snr",
    "marginal",
    "schedule_time",
    "sde_coefficients",
]


class ContinuousProcess(Protocol):
    """What a continuous-time process provides (t is float in [0, 1], t = 0 data, 1 noise).

    The marginal q(x_t | x_0) = N(alpha(t) x_0, sigma(t)^2 I) (Kingma et al. 2021, VDM, eq. 1),
    its time derivatives, the inverse of its log-SNR and the network's time input.
    """

    name: str
    variance_preserving: bool

    def alpha_sigma(self, t: Any, xp: Any = jnp) -> tuple[Any, Any]: ...

    def derivatives(self, t: Any, xp: Any = jnp) -> tuple[Any, Any]: ...

    def t_from_log_snr(self, log_snr: Any, xp: Any = jnp) -> Any: ...

    def model_time(self, t: Any, xp: Any = jnp) -> Any: ...


def _variance_preserving_d_sigma(alpha: Any, sigma: Any, d_alpha: Any, xp: Any) -> Any:
    # sigma^2 = 1 - alpha^2, so sigma' = -alpha alpha' / sigma (infinite where sigma = 0).
    with np.errstate(divide="ignore", invalid="ignore"):
        return -alpha * d_alpha / sigma


@jax.tree_util.register_static
@dataclasses.dataclass(frozen=True)
class VPLinear:
    """score_sde's VP SDE with a linear beta(t) = b0 + t (b1 - b0) (Song et al. 2021, eq. 11).

    log alpha(t) = -t^2 (b1 - b0) / 4 - t b0 / 2, sigma = sqrt(1 - alpha^2); the continuous
    limit of DDPM's linear schedule (b0 = 0.1, b1 = 20 are 1000 x DDPM's 1e-4 and 0.02).
    """

    beta_min: float = 0.1
    beta_max: float = 20.0
    name = "vp_linear"
    variance_preserving = True

    def _log_alpha(self, t: Any) -> Any:
        return -0.25 * t * t * (self.beta_max - self.beta_min) - 0.5 * t * self.beta_min

    def alpha_sigma(self, t: Any, xp: Any = jnp) -> tuple[Any, Any]:
        """alpha(t), sigma(t) for float t (any shape), with sigma = sqrt(-expm1(2 log alpha))."""
        log_alpha = self._log_alpha(t)
        return xp.exp(log_alpha), xp.sqrt(-xp.expm1(2.0 * log_alpha))

    def derivatives(self, t: Any, xp: Any = jnp) -> tuple[Any, Any]:
        """alpha' = -beta(t) alpha / 2, sigma' = -alpha alpha' / sigma."""
        alpha, sigma = self.alpha_sigma(t, xp)
        d_alpha = -0.5 * (self.beta_min + t * (self.beta_max - self.beta_min)) * alpha
        return d_alpha, _variance_preserving_d_sigma(alpha, sigma, d_alpha, xp)

    def t_from_log_snr(self, log_snr: Any, xp: Any = jnp) -> Any:
        """Solves (b1 - b0) t^2 / 2 + b0 t = softplus(-log_snr) (= -2 log alpha) for t >= 0."""
        target = xp.logaddexp(0.0, -log_snr)
        spread = self.beta_max - self.beta_min
        return (xp.sqrt(self.beta_min**2 + 2.0 * spread * target) - self.beta_min) / spread

    def model_time(self, t: Any, xp: Any = jnp) -> Any:
        """1000 t: the discrete index's scale, which the UNet's embedding was designed for."""
        return 1000.0 * t


@jax.tree_util.register_static
@dataclasses.dataclass(frozen=True)
class VPCosine:
    """The cosine schedule in continuous time (Nichol & Dhariwal 2021, eq. 17):
    alpha(t) = cos(phi_t) / cos(phi_0), phi_t = (t + s) / (1 + s) pi / 2, sigma = sqrt(1 - alpha^2);
    alpha(1) = 0 (zero terminal SNR)."""

    s: float = 0.008
    name = "vp_cosine"
    variance_preserving = True

    def _phi(self, t: Any) -> Any:
        return (t + self.s) / (1.0 + self.s) * (math.pi / 2.0)

    def alpha_sigma(self, t: Any, xp: Any = jnp) -> tuple[Any, Any]:
        """alpha(t), sigma(t) for float t; alpha is clipped at 0 against rounding at t = 1.

        sigma is sqrt(sin(phi_t - phi_0) sin(phi_t + phi_0)) / cos(phi_0) (= sqrt(1 - alpha^2)
        by cos^2 a - cos^2 b = sin(b - a) sin(b + a)), which keeps its relative precision at
        small t, where 1 - alpha^2 would cancel.
        """
        phi, phi_0 = self._phi(t), self._phi(0.0)
        alpha = xp.maximum(xp.cos(phi) / math.cos(phi_0), 0.0)
        sigma_sq = xp.maximum(xp.sin(phi - phi_0) * xp.sin(phi + phi_0), 0.0)
        return alpha, xp.sqrt(sigma_sq) / math.cos(phi_0)

    def derivatives(self, t: Any, xp: Any = jnp) -> tuple[Any, Any]:
        """alpha' = -sin(phi_t) pi / (2 (1 + s) cos(phi_0)), sigma' = -alpha alpha' / sigma."""
        alpha, sigma = self.alpha_sigma(t, xp)
        d_alpha = (
            -xp.sin(self._phi(t)) * (math.pi / (2.0 * (1.0 + self.s))) / math.cos(self._phi(0.0))
        )
        return d_alpha, _variance_preserving_d_sigma(alpha, sigma, d_alpha, xp)

    def t_from_log_snr(self, log_snr: Any, xp: Any = jnp) -> Any:
        """alpha^2 = sigmoid(log_snr), so phi = arccos(cos(phi_0) sqrt(sigmoid(log_snr)))."""
        root = xp.exp(-0.5 * xp.logaddexp(0.0, -log_snr))
        phi = xp.arccos(xp.clip(math.cos(self._phi(0.0)) * root, -1.0, 1.0))
        return phi * (2.0 * (1.0 + self.s) / math.pi) - self.s

    def model_time(self, t: Any, xp: Any = jnp) -> Any:
        """1000 t."""
        return 1000.0 * t


@jax.tree_util.register_static
@dataclasses.dataclass(frozen=True)
class VE:
    """score_sde's VE SDE (Song et al. 2021, eq. 9): alpha = 1,
    sigma(t) = sigma_min (sigma_max / sigma_min)^t."""

    sigma_min: float = 0.01
    sigma_max: float = 50.0
    name = "ve"
    variance_preserving = False

    def alpha_sigma(self, t: Any, xp: Any = jnp) -> tuple[Any, Any]:
        """(1, sigma(t))."""
        sigma = self.sigma_min * xp.exp(t * math.log(self.sigma_max / self.sigma_min))
        return xp.ones_like(sigma), sigma

    def derivatives(self, t: Any, xp: Any = jnp) -> tuple[Any, Any]:
        """(0, sigma(t) log(sigma_max / sigma_min))."""
        _, sigma = self.alpha_sigma(t, xp)
        return xp.zeros_like(sigma), sigma * math.log(self.sigma_max / self.sigma_min)

    def t_from_log_snr(self, log_snr: Any, xp: Any = jnp) -> Any:
        """sigma = exp(-log_snr / 2), t = log(sigma / sigma_min) / log(sigma_max / sigma_min)."""
        return (-0.5 * log_snr - math.log(self.sigma_min)) / math.log(
            self.sigma_max / self.sigma_min
        )

    def model_time(self, t: Any, xp: Any = jnp) -> Any:
        """1000 t (an affine function of log sigma)."""
        return 1000.0 * t


@jax.tree_util.register_static
@dataclasses.dataclass(frozen=True)
class EDM:
    """Karras et al. 2022 ("Elucidating the Design Space of Diffusion-Based Generative Models",
    arXiv:2206.00364): alpha = 1 and sigma = t sigma_max, so t = sigma / sigma_max.

    The model time is EDM's c_noise = ln(sigma) / 4 (its Table 1). Pair it with the 'edm'
    prediction (EDM's preconditioning, :mod:`diffjax.predictions`).
    """

    sigma_max: float = 80.0
    name = "edm"
    variance_preserving = False

    def alpha_sigma(self, t: Any, xp: Any = jnp) -> tuple[Any, Any]:
        """(1, t sigma_max)."""
        sigma = t * self.sigma_max
        return xp.ones_like(sigma), sigma

    def derivatives(self, t: Any, xp: Any = jnp) -> tuple[Any, Any]:
        """(0, sigma_max)."""
        ones = xp.ones_like(t * 1.0)
        return 0.0 * ones, self.sigma_max * ones

    def t_from_log_snr(self, log_snr: Any, xp: Any = jnp) -> Any:
        """sigma = exp(-log_snr / 2), t = sigma / sigma_max."""
        return xp.exp(-0.5 * log_snr) / self.sigma_max

    def model_time(self, t: Any, xp: Any = jnp) -> Any:
        """c_noise = ln(sigma) / 4 (Karras et al. 2022, Table 1); -inf at t = 0, which no
        sampler or training-time draw reaches."""
        with np.errstate(divide="ignore"):
            return 0.25 * xp.log(t * self.sigma_max)


@jax.tree_util.register_static
@dataclasses.dataclass(frozen=True)
class RectifiedFlow:
    """The straight path x_t = (1 - t) x_0 + t eps of rectified flow (Liu et al. 2022,
    arXiv:2209.03003) and SD3 (Esser et al. 2024); with ``sigma_min > 0`` it is flow matching's
    optimal-transport path sigma(t) = sigma_min + (1 - sigma_min) t (Lipman et al. 2022,
    arXiv:2210.02747, eq. 20, with time reversed to t = 0 data)."""

    sigma_min: float = 0.0
    name = "rectified_flow"
    variance_preserving = False

    def alpha_sigma(self, t: Any, xp: Any = jnp) -> tuple[Any, Any]:
        """(1 - t, sigma_min + (1 - sigma_min) t)."""
        return 1.0 - t, self.sigma_min + (1.0 - self.sigma_min) * t

    def derivatives(self, t: Any, xp: Any = jnp) -> tuple[Any, Any]:
        """(-1, 1 - sigma_min): the velocity is (1 - sigma_min) eps - x_0."""
        ones = xp.ones_like(t * 1.0)
        return -ones, (1.0 - self.sigma_min) * ones

    def t_from_log_snr(self, log_snr: Any, xp: Any = jnp) -> Any:
        """With r = sigma / alpha = exp(-log_snr / 2): t = (r - sigma_min) / (r + 1 - sigma_min)."""
        ratio = xp.exp(-0.5 * log_snr)
        return (ratio - self.sigma_min) / (ratio + 1.0 - self.sigma_min)

    def model_time(self, t: Any, xp: Any = jnp) -> Any:
        """1000 t (SD3's scale)."""
        return 1000.0 * t


@jax.tree_util.register_static
@dataclasses.dataclass(frozen=True)
class ScheduleTime:
    """A discrete schedule seen in continuous time, for the ODE and SDE samplers and the ODE
    likelihood of a model trained on a :class:`~diffjax.schedules.DiffusionSchedule` (DDPM's
    chain as a discretised VP SDE: Song et al. 2021, score_sde, Sec. 3.4).

    Index i of a schedule of T steps sits at t_i = (i + 1) / T; between the points the log-SNR
    is interpolated linearly in t (and extrapolated linearly below t_0 = 1 / T), and alpha^2 =
    sigmoid(lambda), sigma^2 = sigmoid(-lambda) (Kingma et al. 2021, VDM, eq. 4 with gamma =
    -lambda), so the marginals at the grid points are the schedule's own. The network is called
    with the fractional index T t - 1, the input scale its integer timesteps had. For the linear
    and cosine schedules this is, up to O(1 / T), VPLinear(T beta_1, T beta_T) and VPCosine(s)
    (score_sde evaluates DDPM checkpoints the same way). Build it with :func:`schedule_time`.

    Attributes:
      log_snr_table: the schedule's log-SNR at indices 0..T-1 (a tuple, so the process is a
        hashable static pytree like the others).
    """

    log_snr_table: tuple[float, ...]
    name = "schedule_time"
    variance_preserving = True

    @property
    def num_timesteps(self) -> int:
        """T of the schedule."""
        return len(self.log_snr_table)

    def first_time(self) -> float:
        """t_0 = 1 / T, the time of index 0 (the schedule's smallest noise level)."""
        return 1.0 / self.num_timesteps

    def last_finite_time(self) -> float:
        """The largest t with a finite log-SNR: 1, or (T - 1) / T for zero terminal SNR."""
        return 1.0 if math.isfinite(self.log_snr_table[-1]) else 1.0 - 1.0 / self.num_timesteps

    def _log_snr_and_slope(self, t: Any, xp: Any) -> tuple[Any, Any]:
        table = xp.asarray(self.log_snr_table, dtype=xp.float64 if xp is np else jnp.float32)
        count = self.num_timesteps
        position = t * count - 1.0
        lower = xp.clip(xp.floor(position), 0, count - 2).astype(xp.int32)
        low, high = table[lower], table[lower + 1]
        with np.errstate(invalid="ignore"):
            slope = (high - low) * count
            value = low + (position - lower) * (high - low)
        return value, slope

    def alpha_sigma(self, t: Any, xp: Any = jnp) -> tuple[Any, Any]:
        """(sqrt(sigmoid(lambda(t))), sqrt(sigmoid(-lambda(t))))."""
        log_snr, _ = self._log_snr_and_slope(t, xp)
        return xp.exp(-0.5 * xp.logaddexp(0.0, -log_snr)), xp.exp(-0.5 * xp.logaddexp(0.0, log_snr))

    def derivatives(self, t: Any, xp: Any = jnp) -> tuple[Any, Any]:
        """alpha' = alpha sigma^2 lambda' / 2, sigma' = -sigma alpha^2 lambda' / 2 (lambda' is
        constant between two indices)."""
        log_snr, slope = self._log_snr_and_slope(t, xp)
        alpha, sigma = self.alpha_sigma(t, xp)
        return 0.5 * alpha * sigma**2 * slope, -0.5 * sigma * alpha**2 * slope

    def t_from_log_snr(self, log_snr: Any, xp: Any = jnp) -> Any:
        """The inverse of the interpolation (the table decreases; extrapolated at both ends)."""
        table = np.asarray(self.log_snr_table, np.float64)
        finite = table[np.isfinite(table)]
        times = (np.arange(finite.shape[0]) + 1.0) / self.num_timesteps
        inside = xp.interp(-log_snr, -xp.asarray(finite), xp.asarray(times))
        first_slope = (finite[1] - finite[0]) * self.num_timesteps
        below = times[0] + (log_snr - finite[0]) / first_slope
        return xp.where(log_snr > finite[0], below, inside)

    def model_time(self, t: Any, xp: Any = jnp) -> Any:
        """The fractional index T t - 1."""
        return t * self.num_timesteps - 1.0


def schedule_time(schedule: DiffusionSchedule) -> ScheduleTime:
    """The continuous-time view :class:`ScheduleTime` of a concrete schedule (its log-SNR
    interpolated in t; Kingma et al. 2021, VDM, eq. 4; Song et al. 2021, score_sde, Sec. 3.4).

    Raises:
      TypeError: ``schedule`` is not a DiffusionSchedule, or is traced (it must be concrete,
        as for the samplers' grids).
    """
    if not isinstance(schedule, DiffusionSchedule):
        raise TypeError(f"schedule_time needs a DiffusionSchedule, got {type(schedule).__name__}.")
    try:
        table = np.asarray(schedule.log_snr, np.float64)
    except jax.errors.TracerArrayConversionError as error:
        raise TypeError(
            "schedule_time needs a concrete schedule; close over it inside jax.jit instead of "
            "passing it as an argument."
        ) from error
    if table.shape[0] < 2:
        raise ValueError(f"schedule_time needs T >= 2 timesteps, got {table.shape[0]}.")
    return ScheduleTime(tuple(float(value) for value in table))


def as_continuous(process: Any) -> Any:
    """``process`` itself if continuous, its :func:`schedule_time` view if a schedule (DDPM's
    chain as a discretised VP SDE, Song et al. 2021, score_sde, Sec. 3.4)."""
    return schedule_time(process) if is_discrete(process) else process


Process = Union[DiffusionSchedule, VPLinear, VPCosine, VE, EDM, RectifiedFlow, ScheduleTime]
"""A discrete :class:`~diffjax.schedules.DiffusionSchedule` or a continuous process."""

CONTINUOUS_PROCESSES: dict[str, Callable[..., Any]] = {
    "vp_linear": VPLinear,
    "vp_cosine": VPCosine,
    "ve": VE,
    "edm": EDM,
    "rectified_flow": RectifiedFlow,
}
PROCESS_NAMES: tuple[str, ...] = ("discrete",) + tuple(CONTINUOUS_PROCESSES)


def get_process(name: str, **options: float) -> Any:
    """A continuous process by name (:data:`PROCESS_NAMES`; 'discrete' is built by
    :func:`~diffjax.schedules.get_schedule` instead).

    Args:
      name: ``'vp_linear' | 'vp_cosine' | 've' | 'edm' | 'rectified_flow'``.
      **options: the process's parameters (e.g. ``sigma_max=80.0``), checked against its fields.

    Returns:
      The process: a frozen dataclass registered as a *static* pytree, so it can be passed
      through ``jax.jit`` like a schedule, as compile-time constants (a new process value
      compiles anew, as a new schedule length would).

    Example:
      >>> process = get_process("rectified_flow")
      >>> process.alpha_sigma(np.float64(0.25), np)
      (0.75, 0.25)
    """
    if name == "discrete":
        raise ValueError(
            "the discrete process is a DiffusionSchedule: build it with "
            "diffjax.get_schedule(name, num_timesteps, zero_terminal_snr)."
        )
    if name not in CONTINUOUS_PROCESSES:
        raise ValueError(f"Unknown process {name!r}; expected one of {PROCESS_NAMES}.")
    cls = CONTINUOUS_PROCESSES[name]
    fields = [field.name for field in dataclasses.fields(cls)]
    unknown = sorted(set(options) - set(fields))
    if unknown:
        raise ValueError(f"Process {name!r} does not take {unknown}; its options are {fields}.")
    for key, value in options.items():
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not math.isfinite(value)
        ):
            raise ValueError(f"Process option {name}.{key} must be a finite number, got {value!r}.")
    process = cls(**{key: float(value) for key, value in options.items()})
    _check_parameters(process)
    return process


def _check_parameters(process: Any) -> None:
    problems = {
        VPLinear: lambda p: None if 0 <= p.beta_min < p.beta_max else "0 <= beta_min < beta_max",
        VPCosine: lambda p: None if 0 <= p.s < 1 else "0 <= s < 1",
        VE: lambda p: None if 0 < p.sigma_min < p.sigma_max else "0 < sigma_min < sigma_max",
        EDM: lambda p: None if p.sigma_max > 0 else "sigma_max > 0",
        RectifiedFlow: lambda p: None if 0 <= p.sigma_min < 1 else "0 <= sigma_min < 1",
    }
    needed = problems[type(process)](process)
    if needed is not None:
        raise ValueError(f"Process {process.name!r} needs {needed}; got {process}.")


def is_discrete(process: Any) -> bool:
    """Whether ``process`` is a discrete :class:`~diffjax.schedules.DiffusionSchedule`."""
    return isinstance(process, DiffusionSchedule)


PROCESS_PROTOCOL: tuple[str, ...] = (
    "name", "variance_preserving", "alpha_sigma", "derivatives", "t_from_log_snr", "model_time",
)  # fmt: skip
"""The attributes a continuous process has (:class:`ContinuousProcess`)."""


def check_process(process: Any) -> None:
    """Raises ``TypeError`` unless ``process`` is a schedule or follows :class:`ContinuousProcess`.

    Any object with the protocol's attributes works with every sampler, loss and the
    likelihood (a user's own process class, not only the built-in ones); it must be hashable
    (a frozen dataclass, say), because samplers compile one program per process, like the
    built-ins, which are static pytrees.
    """
    if is_discrete(process):
        return
    missing = [name for name in PROCESS_PROTOCOL if not hasattr(process, name)]
    if missing:
        raise TypeError(
            f"process must be a diffjax DiffusionSchedule (get_schedule) or a continuous process "
            f"with {list(PROCESS_PROTOCOL)} (get_process: {list(CONTINUOUS_PROCESSES)}, or a "
            f"class of your own); {type(process).__name__} lacks {missing}."
        )
    try:
        hash(process)
    except TypeError as error:
        raise TypeError(
            f"A continuous process must be hashable (e.g. @dataclasses.dataclass(frozen=True)); "
            f"{type(process).__name__} is not: {error}"
        ) from error


@jax.tree_util.register_static
@dataclasses.dataclass(frozen=True)
class _StaticProcess:
    """A user's process class that is no JAX pytree, carried through ``jax.jit`` as a static
    value, like the built-in processes (it delegates every attribute)."""

    process: Any

    def __getattr__(self, name: str) -> Any:
        if name == "process":
            raise AttributeError(name)
        return getattr(self.process, name)


def as_jit_argument(process: Any) -> Any:
    """``process`` in a form ``jax.jit`` takes as an argument: itself for a schedule or a
    registered pytree (the built-ins are static pytrees), else a static wrapper."""
    check_process(process)
    leaves = jax.tree_util.tree_leaves(process)
    if len(leaves) == 1 and leaves[0] is process:
        return _StaticProcess(process)
    return process


def check_time(process: Any, t: Any, batch_size: int | None = None) -> jnp.ndarray:
    """Validates a time array for ``process`` and returns it as a JAX array.

    Discrete processes take int t in [0, T); continuous ones float t in [0, 1]. Values are
    checked where they are concrete (not under ``jit``); shapes always.

    Args:
      process: the process.
      t: scalar or ``[B]``.
      batch_size: B, when ``t`` must match a batch.

    Raises:
      TypeError: an integer t for a continuous process or a float t for a discrete one.
      ValueError: a wrong shape, or concrete values out of range.
    """
    t = jnp.asarray(t)
    discrete = is_discrete(process)
    if discrete and not jnp.issubdtype(t.dtype, jnp.integer):
        raise TypeError(f"t must be an integer timestep array, got dtype {t.dtype}.")
    if not discrete and not jnp.issubdtype(t.dtype, jnp.floating):
        raise TypeError(
            f"the continuous process {process.name!r} takes float t in [0, 1] (0: data, 1: "
            f"noise), got dtype {t.dtype}."
        )
    if batch_size is not None and (t.ndim > 1 or (t.ndim == 1 and t.shape[0] != batch_size)):
        raise ValueError(
            f"t must be a scalar or have shape [B] = [{batch_size}], got shape {t.shape}."
        )
    if isinstance(t, jax.core.Tracer) or t.size == 0:
        return t
    values = np.asarray(t)
    low, high = (0, process.num_timesteps - 1) if discrete else (0.0, 1.0)
    if values.min() < low or values.max() > high or not np.all(np.isfinite(values)):
        allowed = (
            f"[0, {process.num_timesteps}) for a schedule of T={process.num_timesteps} steps"
            if discrete
            else f"[0, 1] for the continuous process {process.name!r}"
        )
        raise ValueError(
            f"t must lie in {allowed}; got values in [{values.min()}, {values.max()}]."
        )
    return t


def _broadcast(values: jnp.ndarray, ndim: int) -> jnp.ndarray:
    if values.ndim == 0:
        return values
    return values.reshape(values.shape + (1,) * (ndim - 1))


def alpha_sigma(
    process: Any, t: Any, ndim: int, dtype: Any = jnp.float32
) -> tuple[jnp.ndarray, jnp.ndarray]:
    """The marginal's scales alpha(t), sigma(t), shaped to multiply a rank-``ndim`` array.

    For a discrete schedule these are ``sqrt_alphas_cumprod[t]`` and
    ``sqrt_one_minus_alphas_cumprod[t]`` (Ho et al. 2020, eq. 4); for a continuous process its
    closed form in float32 (q(x_t | x_0) = N(alpha x_0, sigma^2 I), Kingma et al. 2021, eq. 1).

    Args:
      process: a schedule or continuous process.
      t: ``[B]`` or scalar (int for discrete, float for continuous).
      ndim: rank of the data the coefficients multiply.
      dtype: dtype of the result.

    Returns:
      ``(alpha, sigma)``, each ``[B, 1, ..., 1]`` (or scalar) of ``dtype``.
    """
    if is_discrete(process):
        alpha = process.sqrt_alphas_cumprod[t]
        sigma = process.sqrt_one_minus_alphas_cumprod[t]
    else:
        alpha, sigma = process.alpha_sigma(jnp.asarray(t, jnp.float32))
    return _broadcast(alpha, ndim).astype(dtype), _broadcast(sigma, ndim).astype(dtype)


@functools.partial(
    jax.tree_util.register_dataclass,
    data_fields=["alpha", "sigma", "d_alpha", "d_sigma"],
    meta_fields=["variance_preserving"],
)
@dataclasses.dataclass(frozen=True)
class Marginal:
    """The marginal's coefficients at some times, as the prediction conversions need them:
    q(x_t | x_0) = N(alpha x_0, sigma^2 I) (Kingma et al. 2021, VDM, eq. 1) and its derivatives.

    A pytree whose leaves are the four arrays (so it passes through ``jit`` and ``lax.scan``);
    ``variance_preserving`` is static.

    Attributes:
      alpha, sigma: x_t = alpha x_0 + sigma eps, broadcastable to the data.
      d_alpha, d_sigma: their time derivatives (None for a discrete schedule, which has none).
      variance_preserving: alpha^2 + sigma^2 = 1 by construction (a Python bool).
    """

    alpha: Any
    sigma: Any
    d_alpha: Any = None
    d_sigma: Any = None
    variance_preserving: bool = True


def marginal(process: Any, t: Any, ndim: int, dtype: Any = jnp.float32) -> Marginal:
    """The :class:`Marginal` of ``process`` at ``t``, each coefficient ``[B, 1, ..., 1]``.

    alpha and sigma of q(x_t | x_0) = N(alpha x_0, sigma^2 I) (Kingma et al. 2021, VDM, eq. 1;
    Ho et al. 2020, eq. 4 for a schedule), with d alpha / dt and d sigma / dt.

    Args:
      process: a schedule or continuous process.
      t: ``[B]`` or scalar.
      ndim: rank of the data.
      dtype: dtype of the coefficients.
    """
    alpha, sigma = alpha_sigma(process, t, ndim, dtype)
    if is_discrete(process):
        return Marginal(alpha, sigma, None, None, True)
    d_alpha, d_sigma = process.derivatives(jnp.asarray(t, jnp.float32))
    return Marginal(
        alpha, sigma, _broadcast(jnp.asarray(d_alpha), ndim).astype(dtype),
        _broadcast(jnp.asarray(d_sigma), ndim).astype(dtype), process.variance_preserving,
    )  # fmt: skip


def log_snr(process: Any, t: Any) -> jnp.ndarray:
    """log SNR(t) = log(alpha^2 / sigma^2) (Kingma et al. 2021's lambda), float32, shape of t."""
    alpha, sigma = alpha_sigma(process, t, 1)
    return 2.0 * (jnp.log(alpha) - jnp.log(sigma))


def sde_coefficients(process: Any, t: Any) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Drift and squared diffusion of the forward SDE dx = f(t) x dt + g(t) dw.

    f = alpha' / alpha and g^2 = 2 sigma sigma' - 2 f sigma^2 (Song et al. 2021, eq. 5, for a
    linear drift; Kingma et al. 2021, VDM, eq. 4 in continuous time). For VP this is
    f = -beta / 2, g^2 = beta; for VE f = 0, g^2 = d sigma^2 / dt.

    Args:
      process: a continuous process.
      t: float ``[B]`` or scalar in [0, 1].

    Returns:
      ``(f, g^2)``, float32 with the shape of ``t``.
    """
    if is_discrete(process):
        raise TypeError(
            "sde_coefficients needs a continuous process; a DiffusionSchedule is discrete."
        )
    t = jnp.asarray(t, jnp.float32)
    alpha, sigma = process.alpha_sigma(t)
    d_alpha, d_sigma = process.derivatives(t)
    drift = d_alpha / alpha
    return drift, 2.0 * sigma * d_sigma - 2.0 * drift * sigma * sigma
