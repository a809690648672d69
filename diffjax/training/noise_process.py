"""The noise process of a config's ``diffusion`` section (used by the programs and by the
objectives' checks, which must not import the programs)."""

from __future__ import annotations

from typing import Any, Mapping

from diffjax.errors import ConfigError

__all__ = ["build_process"]


def build_process(diffusion: Mapping[str, Any]) -> Any:
    """The noise process a config's ``diffusion`` section describes.

    Raises:
      ConfigError: an unknown process or a bad option, naming the key.
    """
    from diffjax.processes import PROCESS_NAMES, get_process
    from diffjax.schedules import SCHEDULE_NAMES, get_schedule

    name = diffusion["process"]
    if name not in PROCESS_NAMES:
        raise ConfigError(f"config.diffusion.process must be one of {PROCESS_NAMES}, got {name!r}.")
    if diffusion["schedule"] not in SCHEDULE_NAMES:
        raise ConfigError(
            f"config.diffusion.schedule must be one of {SCHEDULE_NAMES}, got "
            f"{diffusion['schedule']!r}."
        )
    try:
        if name == "discrete":
            if diffusion["process_options"]:
                raise ValueError(
                    f"the discrete process takes no process_options (its keys are schedule, "
                    f"num_timesteps and zero_terminal_snr), got "
                    f"{dict(diffusion['process_options'])}"
                )
            return get_schedule(
                diffusion["schedule"], num_timesteps=diffusion["num_timesteps"],
                zero_terminal_snr=diffusion["zero_terminal_snr"],
            )  # fmt: skip
        return get_process(name, **diffusion["process_options"])
    except (TypeError, ValueError) as error:
        raise ConfigError(f"config.diffusion.process={name!r}: {error}") from error
