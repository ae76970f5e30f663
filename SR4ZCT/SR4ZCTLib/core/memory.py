"""Memory needed by a run, estimated before it starts, so a too-large volume is refused with the figure."""

from __future__ import annotations

import math
import os
from typing import Optional, Sequence

from ..errors import ResourceError


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


def available_memory_bytes() -> Optional[int]:
    """Memory a new process can use: psutil where installed (Slicer ships none), else the OS's own figure; None if unknown."""
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:
        pass
    if os.name == "nt":
        return _windows_available_memory()
    try:
        with open("/proc/meminfo") as meminfo:  # Linux: MemAvailable counts reclaimable caches, as psutil does
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):  # e.g. macOS has no SC_AVPHYS_PAGES
        return None


def _windows_available_memory() -> Optional[int]:
    """ullAvailPhys from GlobalMemoryStatusEx (what psutil reports on Windows)."""
    import ctypes

    class MemoryStatus(ctypes.Structure):
        _fields_ = [("dwLength", ctypes.c_ulong), ("dwMemoryLoad", ctypes.c_ulong)] + [
            (name, ctypes.c_ulonglong) for name in ("ullTotalPhys", "ullAvailPhys", "ullTotalPageFile",
                                                    "ullAvailPageFile", "ullTotalVirtual", "ullAvailVirtual",
                                                    "ullAvailExtendedVirtual")]

    status = MemoryStatus()
    status.dwLength = ctypes.sizeof(MemoryStatus)
    if not ctypes.windll.kernel32.GlobalMemoryStatusEx(ctypes.byref(status)):
        return None
    return int(status.ullAvailPhys)


def check_memory(needed: int, force: bool) -> None:
    """Refuse a run that would need more memory than is available (unless forced, or the figure is unknown)."""
    available = available_memory_bytes()
    if available is not None and needed > available and not force:
        raise ResourceError(
            f"enhancing this volume needs about {needed / 2**30:.1f} GiB of memory but {available / 2**30:.1f} GiB is "
            "available; crop the volume to the region you need, close other programs, or pass --force to try anyway"
        )
