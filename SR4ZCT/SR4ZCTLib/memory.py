"""Memory needed by a run, estimated before it starts, so a too-large volume is refused with the figure."""

from __future__ import annotations

import math
from typing import Sequence

import psutil

from .errors import ResourceError


def fine_grid_size(n_slices: int, increment_mm: float, spacing_mm: float) -> int:
    """Samples from the first slice centre to the last, every spacing_mm (never past the last centre)."""
    return int(math.floor((n_slices - 1) * increment_mm / spacing_mm + 1e-6)) + 1


def estimate_memory_bytes(shape: Sequence[int], array_axis: int, increment_mm: float, grid_spacing_mm: float,
                          target_spacing_mm: float, phases: int = 32) -> int:
    """Peak host memory of `enhance` beyond the input itself (float32 copies, output, matrix banks)."""
    n_slices = shape[array_axis]
    in_plane = [n for axis, n in enumerate(shape) if axis != array_axis]
    plane = in_plane[0] * in_plane[1]
    n_fine = fine_grid_size(n_slices, increment_mm, grid_spacing_mm)
    n_target = fine_grid_size(n_slices, increment_mm, target_spacing_mm)
    floats = 2 * n_slices * plane + n_fine * plane + (n_target * plane if n_target != n_fine else 0)
    floats += n_target * plane // 2  # the output array in its final type
    banks = 2 * phases * max(in_plane) ** 2
    return 4 * (floats + banks) + 300 * 2**20  # plus torch's own working set


def check_memory(needed: int, force: bool) -> None:
    available = psutil.virtual_memory().available
    if needed > available and not force:
        raise ResourceError(
            f"enhancing this volume needs about {needed / 2**30:.1f} GiB of memory but {available / 2**30:.1f} GiB is "
            "available; crop the volume to the region you need, close other programs, or pass --force to try anyway"
        )
