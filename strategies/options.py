"""Checks of strategy options, run by each config's `__post_init__` so that a bad option is refused when the config
is read: one-line ValueErrors that name the strategy, the option and what is allowed."""

from __future__ import annotations

import math
from typing import Any


def require(label: str, condition: bool, message: str) -> None:
    """ValueError "`label`: `message`" unless `condition` holds."""
    if not condition:
        raise ValueError(f"{label}: {message}")


def positive(label: str, key: str, value: float) -> None:
    """A finite number > 0 (a learning rate, a step size)."""
    require(label, value > 0.0, f"{key} must be > 0, got {value}")
    require(label, math.isfinite(value), f"{key} must be finite, got {value}")


def non_negative(label: str, key: str, value: float) -> None:
    """A finite number >= 0."""
    require(label, 0.0 <= value < math.inf, f"{key} must be a finite number >= 0, got {value}")


def in_range(label: str, key: str, value: float, low: float, high: float, closed_high: bool = True) -> None:
    """`low` <= value <= `high` (or < `high` when not `closed_high`)."""
    inside = low <= value <= high if closed_high else low <= value < high
    require(label, inside, f"{key} must be in [{low:g}, {high:g}{']' if closed_high else ')'}, got {value}")


def concurrency(label: str, value: int) -> None:
    """Clients in flight at once: >= 0, where 0 means every client."""
    require(label, value >= 0, f"concurrency must be >= 0 (0: every client), got {value}")


def one_of(label: str, key: str, value: Any, allowed: tuple[str, ...]) -> None:
    require(label, value in allowed, f"{key} must be one of {', '.join(allowed)}, got {value!r}")
