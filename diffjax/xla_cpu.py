"""The XLA flag that makes convolutions faster on CPU; it must be set before JAX starts.

jaxlib 0.10 hands every convolution on CPU to YNNPACK, whose weight-gradient convolution (the
one a training step needs) runs at about a fifth of its forward speed. The flag
:data:`FAST_CPU_CONVOLUTION_FLAG` gives convolutions back to XLA's Eigen kernels. Measured on
2 cores (``benchmarks/RESULTS.md``): the DDPM UNet's training step gets 1.5x faster at the
Fashion-MNIST size and 1.7x at the CIFAR-10 size, and sampling 1.15x, with float32 results that
differ only in summation order. The flag names a jaxlib-internal option, so it is only added for
the jaxlib versions it was measured on; XLA aborts the process on a flag it does not know.

XLA reads ``$XLA_FLAGS`` once, when the first JAX backend starts, so call
:func:`enable_fast_cpu_convolutions` before anything runs a JAX computation
(``python -m diffjax.train`` and ``python -m diffjax.sample`` do so unless given
``--nofast_cpu_convolutions``). On GPU and
TPU it is harmless: the flag only configures the CPU backend.
"""

from __future__ import annotations

import os

from absl import flags, logging

__all__ = [
    "FAST_CPU_CONVOLUTION_FLAG",
    "define_fast_cpu_convolutions_flag",
    "enable_fast_cpu_convolutions",
    "with_fast_cpu_convolution_flag",
]

FAST_CPU_CONVOLUTION_FLAG = "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution"

# jaxlib (major, minor) releases on which the flag exists and was measured to help.
_MEASURED_JAXLIB = ((0, 10),)
_FLAG_NAME = FAST_CPU_CONVOLUTION_FLAG.split("=")[0]


def with_fast_cpu_convolution_flag(xla_flags: str, jaxlib_version: str) -> str | None:
    """Returns ``xla_flags`` with :data:`FAST_CPU_CONVOLUTION_FLAG` appended, or ``None``.

    Args:
      xla_flags: the current ``$XLA_FLAGS`` (possibly empty).
      jaxlib_version: ``jaxlib.version.__version__``, e.g. ``"0.10.2"``.

    Returns:
      The new flag string, or ``None`` when nothing should change: the user already chose a
      ``--xla_cpu_experimental_ynn_fusion_type`` themselves, or this jaxlib is not one the flag
      was measured on.
    """
    if _FLAG_NAME in xla_flags:
        return None
    major_minor = tuple(int(part) for part in jaxlib_version.split(".")[:2])
    if major_minor not in _MEASURED_JAXLIB:
        return None
    return f"{xla_flags} {FAST_CPU_CONVOLUTION_FLAG}".strip()


def enable_fast_cpu_convolutions() -> bool:
    """Adds :data:`FAST_CPU_CONVOLUTION_FLAG` to ``$XLA_FLAGS`` if JAX has not started yet.

    Call it first thing in a training script or notebook (before any JAX computation, device
    query or ``jax.devices()``); importing :mod:`jax` and :mod:`diffjax` is fine.

    Returns:
      ``True`` if the flag is in ``$XLA_FLAGS`` (added now, or already there), ``False`` if it
      was left out: the backend had already started (a warning is logged), the user chose
      another value of the option, or this jaxlib was not measured with it.
    """
    from jax._src import xla_bridge
    from jaxlib import version as jaxlib_version

    current = os.environ.get("XLA_FLAGS", "")
    if FAST_CPU_CONVOLUTION_FLAG in current.split():
        return True
    updated = with_fast_cpu_convolution_flag(current, jaxlib_version.__version__)
    if updated is None:
        return False
    if xla_bridge.backends_are_initialized():
        logging.warning(
            "JAX's backend has already started, so %s cannot take effect; set it in "
            "$XLA_FLAGS before the first JAX computation for faster CPU training.",
            FAST_CPU_CONVOLUTION_FLAG,
        )
        return False
    os.environ["XLA_FLAGS"] = updated
    return True


def define_fast_cpu_convolutions_flag() -> flags.FlagHolder:
    """Defines the ``--fast_cpu_convolutions`` absl flag of the command-line programs.

    Returns:
      The flag's holder; its value (default ``True``) says whether the program should call
      :func:`enable_fast_cpu_convolutions` first thing in ``main``.
    """
    return flags.DEFINE_bool(
        "fast_cpu_convolutions",
        True,
        f"Add {FAST_CPU_CONVOLUTION_FLAG} to $XLA_FLAGS before JAX starts: faster "
        "convolutions on CPU (see benchmarks/RESULTS.md). No effect on GPU/TPU, or when "
        "$XLA_FLAGS already sets that option.",
    )
