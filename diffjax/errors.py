"""The errors a user can fix by changing a config, a flag or an argument.

Every program reports these in one line (``diffjax.<program>: error: ...``) instead of a
traceback; each message names the bad value and what is allowed.
"""

from __future__ import annotations

__all__ = ["ConfigError", "ConfigTypeError", "OdeSolveError"]


class ConfigError(ValueError):
    """A config value, key or combination that a program cannot run with."""


class ConfigTypeError(ConfigError, TypeError):
    """A config value of the wrong type."""


class OdeSolveError(RuntimeError):
    """An adaptive ODE solve that used up its ``max_steps`` before reaching its end time."""
