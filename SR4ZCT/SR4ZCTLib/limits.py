"""The documented range of every number a user gives (README, Troubleshooting); values outside are refused.

Millimetre ranges cover every CT protocol with room to spare; they exist to refuse absurd numbers
(1e-320, 1e308) before any work, with the range in the message.
"""

from __future__ import annotations

import math
import os

from .errors import InputError

RANGES: dict[str, tuple[float, float]] = {
    "thickness": (0.1, 50.0),  # mm, slice thickness (FWHM of the slice profile)
    "increment": (0.1, 50.0),  # mm, distance between slice centres
    "target-spacing": (0.05, 50.0),  # mm, output slice spacing (also at most the increment)
    "iterations": (1, 10_000_000),
    "seed": (0, 2**32 - 1),
    "threads": (1, 256),
}
UNITS = {"thickness": " mm", "increment": " mm", "target-spacing": " mm"}


def check_range(name: str, value: float) -> float:
    """value if it is a finite number within RANGES[name], else an InputError naming the option and its range."""
    low, high = RANGES[name]
    unit = UNITS.get(name, "")
    if value is None or not math.isfinite(float(value)) or not low <= value <= high:
        raise InputError(f"--{name} {value!r} is outside its range {low:g}..{high:g}{unit}; give a value in it")
    return value


def default_threads() -> int:
    """CPU threads of a run: min(4, CPU count). Fixed per machine type, so a seeded run ignores OMP_NUM_THREADS."""
    return max(1, min(4, os.cpu_count() or 1))
