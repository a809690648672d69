"""The command-line programs' shared plumbing: the runner, one-line errors, the compile cache, and
the CPU settings with their flags.

``python -m diffjax.train``, ``python -m diffjax.sample`` and ``python -m diffjax.evaluate`` are
thin absl entry points; everything they share lives here, so that neither ``import diffjax``
nor the training code imports absl or this module (DESIGN: training never imports the CLIs).

**The runner.** :func:`run_program` refuses stray arguments, quiets absl logging, applies the
CPU settings before JAX starts, turns on the persistent compilation cache and runs the program;
a failure that is the user's to fix (:func:`expected_errors`) prints one line,
``diffjax.<program>: error: ...``, and exits with status 1.

**Convolutions on CPU.**
jaxlib 0.10 hands every convolution on CPU to YNNPACK, whose weight-gradient convolution (the
one a training step needs) runs at about a fifth of its forward speed. The flag
:data:`FAST_CPU_CONVOLUTION_FLAG` gives convolutions back to XLA's Eigen kernels (measurements:
``benchmarks/RESULTS.md``); float32 results differ only in summation order. The flag names a
jaxlib-internal option, so it is only added for the jaxlib versions it was measured on; XLA
aborts the process on a flag it does not know.

**One device per core.** XLA runs YNNPACK's dots and reductions, and the thunks between the
convolutions, on one thread, so a single CPU device leaves the other cores idle for part of
every step. Splitting the CPU into one JAX device per core (:func:`use_cpu_devices` with
:func:`cpu_device_count`) runs the data-parallel shards side by side instead. It changes the
device count only; the code and the global batch stay the same.

**Several hosts.** With ``--multihost`` (or any of ``--coordinator_address``,
``--num_processes``, ``--process_id``) a program first joins the other processes through
``jax.distributed.initialize`` (:func:`start_multihost`); on a Cloud TPU pod slice, under SLURM,
Open MPI or Kubernetes, JAX finds the others itself, so the same command runs on every host.
CPU processes talk through gloo.

XLA and JAX read these settings once, when the first JAX backend starts, so call both functions
before anything runs a JAX computation (the CLIs do so unless given ``--nofast_cpu_convolutions``
or ``--cpu_devices=1``; a notebook calls them itself). On GPU and TPU they are harmless: they
only configure the CPU backend.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import Any, Callable, Mapping, NamedTuple

from absl import app, flags, logging

__all__ = [
    "DEFAULT_COMPILATION_CACHE",
    "FAST_CPU_CONVOLUTION_FLAG",
    "cpu_device_count",
    "cpu_devices_from_flag",
    "define_cpu_devices_flag",
    "define_fast_cpu_convolutions_flag",
    "define_multihost_flags",
    "enable_compilation_cache",
    "DottedOptions",
    "FAILURE_STATUS",
    "USAGE_ERROR_STATUS",
    "describe_sampler",
    "is_adaptive",
    "enable_fast_cpu_convolutions",
    "expected_errors",
    "load_config_flag",
    "main_runner",
    "parse_option",
    "run_program",
    "start_multihost",
    "usable_cpu_cores",
    "use_cpu_devices",
    "with_fast_cpu_convolution_flag",
]

FAST_CPU_CONVOLUTION_FLAG = "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution"

# jaxlib (major, minor) releases on which the flag exists and was measured to help.
_MEASURED_JAXLIB = ((0, 10),)
_FLAG_NAME = FAST_CPU_CONVOLUTION_FLAG.split("=")[0]
# The XLA flag that also sets the CPU device count (tests use it for eight fake devices).
_DEVICE_COUNT_FLAG = "--xla_force_host_platform_device_count"


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


def define_fast_cpu_convolutions_flag(default: bool = True) -> flags.FlagHolder:
    """Defines the ``--fast_cpu_convolutions`` absl flag of the command-line programs.

    Args:
      default: the flag's default (the training CLI: True; sampling and evaluation: False,
        because with the flag and several CPU devices their loops are not bit-reproducible).

    Returns:
      The flag's holder; its value says whether the program should call
      :func:`enable_fast_cpu_convolutions` first thing in ``main``.
    """
    return flags.DEFINE_bool(
        "fast_cpu_convolutions",
        default,
        f"Add {FAST_CPU_CONVOLUTION_FLAG} to $XLA_FLAGS before JAX starts: faster "
        "convolution gradients on CPU (see benchmarks/RESULTS.md). No effect on GPU/TPU, or "
        "when $XLA_FLAGS already sets that option.",
    )


def usable_cpu_cores() -> int:
    """The number of cores this process may run on (its CPU affinity; at least 1)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def cpu_device_count(batch_sizes: Sequence[int], num_cores: int | None = None) -> int:
    """How many CPU devices to train on: one per core, lowered until every batch splits evenly.

    Args:
      batch_sizes: the global batch sizes the devices share (training, evaluation,
        sampling), each >= 1.
      num_cores: cores to use; default :func:`usable_cpu_cores`.

    Returns:
      The largest ``D <= num_cores`` that divides every batch size (1 if none larger does).

    Raises:
      ValueError: ``num_cores`` or a batch size is below 1.
    """
    cores = usable_cpu_cores() if num_cores is None else num_cores
    if cores < 1:
        raise ValueError(f"num_cores must be >= 1, got {cores}.")
    if any(size < 1 for size in batch_sizes):
        raise ValueError(f"batch sizes must be >= 1, got {list(batch_sizes)}.")
    return max(
        count for count in range(1, cores + 1) if all(size % count == 0 for size in batch_sizes)
    )


def use_cpu_devices(num_devices: int) -> bool:
    """Makes JAX's CPU backend show ``num_devices`` devices, if JAX has not started yet.

    Sets ``jax_num_cpu_devices``. The devices share the machine's cores; a mesh over them
    (:func:`diffjax.training.make_mesh`) runs the data-parallel shards side by side. Call it
    before any JAX computation or device query; importing :mod:`jax` and :mod:`diffjax` is
    fine. A count the user chose (``$XLA_FLAGS`` with ``--xla_force_host_platform_device_count``,
    ``$JAX_NUM_CPU_DEVICES`` or ``jax_num_cpu_devices``) is kept.

    Args:
      num_devices: the number of CPU devices, >= 1 (e.g. from :func:`cpu_device_count`).

    Returns:
      ``True`` if the CPU backend will have ``num_devices`` devices, ``False`` if the count
      was left alone: the user chose another, or the backend had already started (a warning
      is logged).

    Raises:
      ValueError: ``num_devices`` is below 1.
    """
    from jax._src import xla_bridge

    if num_devices < 1:
        raise ValueError(f"num_devices must be >= 1, got {num_devices}.")
    if _DEVICE_COUNT_FLAG in os.environ.get("XLA_FLAGS", ""):
        return False
    if xla_bridge.num_cpu_devices.value >= 0:
        return xla_bridge.num_cpu_devices.value == num_devices
    if xla_bridge.backends_are_initialized():
        logging.warning(
            "JAX's backend has already started, so the CPU cannot be split into %d devices; "
            "call diffjax.use_cpu_devices before the first JAX computation.",
            num_devices,
        )
        return False
    import jax

    jax.config.update("jax_num_cpu_devices", num_devices)
    return True


def define_cpu_devices_flag() -> flags.FlagHolder:
    """Defines the ``--cpu_devices`` absl flag of the command-line programs.

    Returns:
      The flag's holder; its value (default 0: automatic) is the number of CPU devices the
      program passes to :func:`use_cpu_devices` (0: :func:`cpu_device_count` of its batch
      sizes).
    """
    return flags.DEFINE_integer(
        "cpu_devices",
        0,
        "Split the CPU into this many JAX devices for data-parallel work (0: one per usable "
        "core, lowered until the batch sizes split evenly; 1: a single device). No effect on "
        "GPU/TPU, or when $XLA_FLAGS or $JAX_NUM_CPU_DEVICES already sets the CPU device count.",
        lower_bound=0,
    )


def cpu_devices_from_flag(flag_value: int, batch_sizes: Sequence[object]) -> int:
    """The CPU device count that a ``--cpu_devices`` value asks for.

    Args:
      flag_value: ``--cpu_devices``: a count >= 1, or 0 for automatic.
      batch_sizes: the program's global batch sizes. Entries that are not integers >= 1 are
        skipped, because the program's own validation reports them by name later.

    Returns:
      ``flag_value`` if it is set, else :func:`cpu_device_count` of the valid batch sizes.
    """
    if flag_value:
        return flag_value
    return cpu_device_count([s for s in batch_sizes if isinstance(s, int) and s >= 1])


class MultihostError(RuntimeError):
    """Joining a multi-host run failed (bad arguments, or the other processes cannot be reached)."""


def start_multihost(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
) -> None:
    """Joins a multi-host run: ``jax.distributed.initialize`` with CPU collectives over gloo.

    Call it before anything starts JAX's backend, in every process. Arguments left None are
    found by JAX (Cloud TPU, SLURM, Open MPI, Kubernetes, ``$JAX_COORDINATOR_ADDRESS``).

    Args:
      coordinator_address: ``host:port`` of process 0, reachable from every process.
      num_processes: the number of processes (>= 1).
      process_id: this process's index in ``[0, num_processes)``.

    Raises:
      MultihostError: a bad argument, or the processes could not be joined; the message says
        which.
    """
    import jax
    from jax._src import xla_bridge

    if num_processes is not None and num_processes < 1:
        raise MultihostError(f"--num_processes must be >= 1, got {num_processes}.")
    if process_id is not None and num_processes is not None and not 0 <= process_id < num_processes:
        raise MultihostError(
            f"--process_id must be in [0, {num_processes}) for --num_processes={num_processes}, "
            f"got {process_id}."
        )
    if xla_bridge.backends_are_initialized():
        raise MultihostError(
            "JAX's backend has already started, so this process can no longer join a "
            "multi-host run; call start_multihost() before any JAX computation."
        )
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    try:
        jax.distributed.initialize(
            coordinator_address=coordinator_address or None,
            num_processes=num_processes,
            process_id=process_id,
        )
    except (RuntimeError, ValueError, TypeError) as error:
        this_one = "auto" if process_id is None else process_id
        raise MultihostError(
            f"could not join the multi-host run (coordinator {coordinator_address or 'auto'}, "
            f"{num_processes or 'auto'} processes, this one {this_one}): "
            f"{_one_line(str(error))}. Outside a TPU pod, SLURM, Open MPI or Kubernetes pass "
            f"--coordinator_address=HOST:PORT --num_processes=N --process_id=I on every host."
        ) from error


class MultihostFlags(NamedTuple):
    """The holders of the multi-host flags (:func:`define_multihost_flags`)."""

    multihost: flags.FlagHolder
    coordinator_address: flags.FlagHolder
    num_processes: flags.FlagHolder
    process_id: flags.FlagHolder

    def requested(self) -> bool:
        """Whether the command asks to join a multi-host run."""
        return bool(
            self.multihost.value
            or self.coordinator_address.value
            or self.num_processes.value
            or self.process_id.value >= 0
        )

    def start(self) -> None:
        """:func:`start_multihost` with the flags' values (unset ones found by JAX)."""
        start_multihost(
            self.coordinator_address.value or None,
            self.num_processes.value or None,
            None if self.process_id.value < 0 else self.process_id.value,
        )


def define_multihost_flags() -> MultihostFlags:
    """Defines ``--multihost``, ``--coordinator_address``, ``--num_processes``, ``--process_id``."""
    return MultihostFlags(
        flags.DEFINE_bool(
            "multihost",
            False,
            "Join a multi-host run (jax.distributed.initialize) before JAX starts. On a Cloud TPU "
            "pod slice, SLURM, Open MPI or Kubernetes the same command on every host finds the "
            "others; elsewhere also pass --coordinator_address, --num_processes, --process_id.",
        ),
        flags.DEFINE_string(
            "coordinator_address", "", "HOST:PORT of process 0 in a multi-host run."
        ),
        flags.DEFINE_integer(
            "num_processes", 0, "Processes of a multi-host run (0: found by JAX).", lower_bound=0
        ),
        flags.DEFINE_integer(
            "process_id", -1, "This process's index in a multi-host run (-1: found by JAX)."
        ),
    )


DEFAULT_COMPILATION_CACHE = os.path.join("~", ".cache", "diffjax", "jax-cache")


def enable_compilation_cache(path: str = DEFAULT_COMPILATION_CACHE) -> None:
    """Turns on JAX's persistent compilation cache, unless $JAX_COMPILATION_CACHE_DIR is set.

    A resumed run (after a kill or preemption) then loads its compiled step from disk instead
    of compiling it again. Used by the CLIs; a notebook may call it too.

    Args:
      path: cache folder (``~`` is expanded); empty leaves JAX's settings alone.
    """
    import jax

    if not path or os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        return
    jax.config.update("jax_compilation_cache_dir", os.path.expanduser(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


def expected_errors() -> tuple[type[BaseException], ...]:
    """The failures that are the user's to fix (config, workdir, data, resume, divergence,
    weight files): the CLIs report them in one line instead of a traceback."""
    from diffjax.data.datasets import DatasetUnavailableError
    from diffjax.errors import ConfigError, OdeSolveError
    from diffjax.training import checkpoint
    from diffjax.training.loop import NonFiniteLossError
    from diffjax.training.workdir import WorkdirError
    from diffjax.weights import (
        StateDictMismatchError,
        UnsupportedCheckpointError,
        WeightsChecksumError,
        WeightsUnavailableError,
    )

    return (
        MultihostError,
        ConfigError,
        OdeSolveError,
        WorkdirError,
        NonFiniteLossError,
        DatasetUnavailableError,
        checkpoint.IncompatibleCheckpointError,
        checkpoint.NoUsableCheckpointError,
        checkpoint.NonFiniteStateError,
        WeightsUnavailableError,
        WeightsChecksumError,
        UnsupportedCheckpointError,
        StateDictMismatchError,
    )


def is_adaptive(sampler: str) -> bool:
    """Whether a registered sampler chooses its own steps (it has tolerances: ``'ode'``)."""
    from diffjax.samplers import sampler_options

    return "rtol" in sampler_options(sampler)


def describe_sampler(sampler: str, options: Mapping[str, Any]) -> tuple[str, str]:
    """(the settings in words, the same as a file-name part), with the sampler's own defaults
    for the options not given: steps (``ddpm``'s default: all T), or for an adaptive solver its
    tolerance, since ``num_steps`` only sets its first step."""
    from diffjax.samplers import sampler_options

    full = {**sampler_options(sampler), **options}
    if is_adaptive(sampler):
        rtol = full["rtol"]
        return f"{sampler}, adaptive, rtol={rtol:g}", f"{sampler}_rtol{rtol:g}"
    steps = full.get("num_steps")
    steps = "all" if steps is None else steps
    return f"{sampler}, {steps} steps", f"{sampler}_{steps}steps"


def parse_option(text: str, flag: str = "--option") -> tuple[str, Any]:
    """``'eta=0.5'`` -> ``('eta', 0.5)``: ints, floats, ``true``/``false`` and strings.

    Raises:
      ConfigError: the text is not ``name=value`` (``flag`` names the flag in the message).
    """
    from diffjax.errors import ConfigError

    name, separator, raw = text.partition("=")
    if not separator or not name.strip():
        raise ConfigError(f"{flag}={text!r} must be name=value (e.g. {flag} eta=0.5).")
    raw = raw.strip()
    for convert in (int, float):
        try:
            return name.strip(), convert(raw)
        except ValueError:
            pass
    if raw.lower() in ("true", "false"):
        return name.strip(), raw.lower() == "true"
    return name.strip(), raw


def _one_line(text: str) -> str:
    return " ".join(part.strip() for part in text.splitlines() if part.strip())


def config_flag_error(error: BaseException, flag: str = "config") -> str | None:
    """One line saying what went wrong reading an ml_collections config flag, or None.

    ml_collections loads the file and applies the ``--config.*`` overrides while the flags are
    parsed or when the value is first read; a missing file, an unknown key or a bad value then
    raises ``OSError``, ``AttributeError``, ``KeyError``, ``TypeError`` or ``ValueError`` with a
    message spread over several lines, and the file's own code any exception (a
    ``SyntaxError``, a ``NameError``, ...), named here with its line in the file.
    """
    if isinstance(error, SyntaxError):
        return (
            f"--{flag}: the config file {error.filename} has a syntax error at line "
            f"{error.lineno}: {error.msg}."
        )
    if not isinstance(error, (OSError, AttributeError, KeyError, TypeError, ValueError)):
        where = _config_file_line(error)
        return f"--{flag}: the config file raised {type(error).__name__}{where}: {error}"
    if isinstance(error, OSError):
        lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
        detail = lines[-1] if lines else str(error)
        return (
            f"--{flag}: the config file cannot be loaded ({detail}); pass the path of a "
            f"configs/*.py file, relative to the current directory."
        )
    if isinstance(error, (AttributeError, KeyError)):
        while error.args and isinstance(error.args[0], BaseException):
            error = error.args[0]
        detail = _one_line(error.args[0] if error.args and isinstance(error.args[0], str)
                           else str(error))  # fmt: skip
        return f"a --{flag}.* override names a key the config does not have: {detail}"
    if isinstance(error, (TypeError, ValueError)):
        return f"a --{flag}.* override has a bad value: {_one_line(str(error))}"
    return None


def _config_file_line(error: BaseException) -> str:
    """`` (file, line N)`` of the innermost traceback frame outside the libraries, or ''."""
    import traceback

    frames = [
        frame for frame in traceback.extract_tb(error.__traceback__)
        if "site-packages" not in frame.filename and not frame.filename.startswith("<")
    ]  # fmt: skip
    return f" ({frames[-1].filename}, line {frames[-1].lineno})" if frames else ""


def load_config_flag(holder: Any, flag: str = "config") -> Any:
    """The value of an ml_collections config flag, or a :class:`ConfigError` in one line.

    See :func:`config_flag_error` for the errors it rewords.
    """
    from diffjax.errors import ConfigError

    try:
        config = holder.value
        config.keys()  # a file that failed to load gives a placeholder that raises on any use
        return config
    except Exception as error:  # the config file's own code may raise anything
        raise ConfigError(config_flag_error(error, flag)) from error


USAGE_ERROR_STATUS = 2
"""Exit status of a command line that cannot be parsed: an unknown flag, a bad flag value, a
``--config`` file that cannot be loaded or an override naming no key (as argparse)."""

FAILURE_STATUS = 1
"""Exit status of any other expected failure (:func:`expected_errors`), e.g. a config that
fails validation, a missing dataset or an incompatible resume."""


def _flags_parser(
    name: str, argv: list[str], rewrite: Callable[[list[str]], list[str]] | None = None
) -> list[str]:
    """absl's flag parsing, with its errors as one line ``{name}: error: ...`` (exit
    :data:`USAGE_ERROR_STATUS`); ``rewrite`` first takes out the arguments a program reads
    itself.

    Besides absl's own errors this covers the config flags' (:func:`config_flag_error`), which
    ml_collections raises while it loads the file and applies ``--config.*`` overrides.
    """
    if rewrite is not None:
        argv = rewrite(argv)
        sys.argv[:] = argv  # ml_collections reads the --config.* overrides from sys.argv
    try:
        return flags.FLAGS(argv)
    except flags.Error as error:
        message = f"{_one_line(str(error))} (--helpshort lists the flags)"
    except Exception as error:  # the config file's own code may raise anything
        message = config_flag_error(error)
        if message is None:
            raise
    print(f"{name}: error: {message}", file=sys.stderr, flush=True)
    sys.exit(USAGE_ERROR_STATUS)


def main_runner(
    name: str,
    main: Callable[[list[str]], None],
    rewrite: Callable[[list[str]], list[str]] | None = None,
) -> None:
    """``app.run(main)`` with flag errors reported in one line (see :func:`_flags_parser`)."""
    import functools

    app.run(main, flags_parser=functools.partial(_flags_parser, name, rewrite=rewrite))


class DottedOptions:
    """Takes ``--{prefix}<name>=<value>`` arguments out of the command line, for a dict-valued
    config field whose keys the config file does not list (ml_collections accepts overrides
    of existing keys only), e.g. ``--config.sampling.options.eta=0.5``: a sampler's own
    options, which are checked against the sampler later.

    Args:
      prefix: e.g. ``"--config.sampling.options."``.
    """

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.texts: list[str] = []

    def rewrite(self, argv: list[str]) -> list[str]:
        """``argv`` without those arguments, which are kept as ``name=value`` texts."""
        kept, index = [], 0
        while index < len(argv):
            argument = argv[index]
            index += 1
            if not argument.startswith(self.prefix):
                kept.append(argument)
                continue
            text = argument[len(self.prefix) :]
            if "=" not in text and index < len(argv):  # --prefix.name value
                text, index = f"{text}={argv[index]}", index + 1
            self.texts.append(text)
        return kept

    def values(self) -> dict[str, Any]:
        """The options as ``{name: value}`` (:func:`parse_option`'s conversions)."""
        return dict(parse_option(text, self.prefix.rstrip(".")) for text in self.texts)


def run_program(
    name: str,
    argv: Sequence[str],
    program: Callable[[], object],
    *,
    fast_cpu_convolutions: bool,
    cpu_devices: int | Callable[[], int] | None = None,
    compilation_cache: str = DEFAULT_COMPILATION_CACHE,
    multihost: MultihostFlags | None = None,
) -> None:
    """The command-line programs' shared ``main``: set-up, run, and one-line failures.

    Refuses stray arguments, quiets absl logging to warnings unless ``--verbosity`` was given,
    adds the CPU convolution flag and splits the CPU into devices before JAX starts
    (:func:`enable_fast_cpu_convolutions`, :func:`use_cpu_devices`), turns on the compilation
    cache, then runs ``program``. An :func:`expected_errors` failure prints
    ``"{name}: error: ..."`` and exits with status 1 (with ``--verbosity=1``, its traceback
    instead).

    Args:
      name: the program's name in error messages, e.g. ``"diffjax.train"``.
      argv: absl's remaining arguments (only the program name is allowed).
      program: runs the work, reading the parsed flags itself.
      fast_cpu_convolutions: whether to add the CPU convolution flag.
      cpu_devices: the number of CPU devices to ask for (or a function returning it, called
        inside the error handling, e.g. because it reads the config); None leaves JAX's default.
      compilation_cache: see :func:`enable_compilation_cache`.
      multihost: the program's multi-host flags; when they ask for it, the process joins the
        run (:func:`start_multihost`) after the CPU settings and before anything else.
    """
    if len(argv) > 1:
        print(f"{name}: error: unexpected arguments {list(argv[1:])}; every option is a "
              f"--flag (--helpshort lists them).", file=sys.stderr, flush=True)  # fmt: skip
        sys.exit(USAGE_ERROR_STATUS)
    if not flags.FLAGS["verbosity"].present:
        # orbax logs every step of every save at INFO; the program prints its own summary.
        logging.set_verbosity(logging.WARNING)
    errors = expected_errors()
    try:
        if fast_cpu_convolutions:
            enable_fast_cpu_convolutions()
        if cpu_devices is not None:
            use_cpu_devices(cpu_devices() if callable(cpu_devices) else cpu_devices)
        if multihost is not None and multihost.requested():
            multihost.start()
        enable_compilation_cache(compilation_cache)
        program()
    except KeyboardInterrupt:
        # The program has said where it stopped; no traceback for a Ctrl-C.
        sys.exit(130)
    except errors as error:
        if logging.get_verbosity() >= logging.DEBUG:
            raise
        print(f"{name}: error: {error}", file=sys.stderr, flush=True)
        sys.exit(FAILURE_STATUS)
