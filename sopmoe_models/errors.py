"""The one kind of error a user can fix: :class:`UserError`, printed by the CLI as one line with exit code 2.

Every layer raises it (or a subclass: ``ConfigError``, ``DataError``, ``ExpertMismatchError``) with a message that
names the file, key or flag and says what to do; ``harness.cli.main`` catches it once. :func:`finite` is the check
every number that comes in from outside goes through (flags, config, baselines, tolerances, weights): NaN and ±inf
compare false with everything, so an unchecked NaN turns every ``x > limit`` test into "fine".
"""

from __future__ import annotations

import math
from typing import Any


class UserError(ValueError):
    """A mistake in what the user gave (a file, key, flag or value); the message says which and what to do."""


def is_number(x: Any) -> bool:
    """A real int or float (not a bool, not a string)."""
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def finite(x: Any, where: str, *, minimum: float | None = None) -> float:
    """``float(x)`` when it is a finite number (and ``>= minimum`` when given), else a :class:`UserError` naming
    ``where`` (a flag, key or ``file: key``)."""
    if not is_number(x):
        raise UserError(f"{where}: expected a number, got {x!r}")
    value = float(x)
    if not math.isfinite(value):
        raise UserError(f"{where}: {x!r} is not a finite number (NaN and infinity are refused)")
    if minimum is not None and value < minimum:
        raise UserError(f"{where}: must be >= {minimum:g}, got {x!r}")
    return value
