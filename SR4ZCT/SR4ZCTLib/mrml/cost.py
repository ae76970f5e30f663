"""What a run will cost, before Apply: the result's size and spacing, memory needed against free memory, and the
time on the chosen device from the benchmark timings (docs/benchmarks.md). No torch import: the panel shows it
while fields change.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

from ..core.memory import available_memory_bytes, estimate_memory_bytes, fine_grid_size

# Seconds per training iteration and per output voxel of inference, measured (docs/benchmarks.md, "Compute" and the
# README's demo): the GPU is an NVIDIA H200, the CPU 2 shared x86_64 cores. A paper iteration is a full image, so it
# scales with the in-plane size (measured on 512 x 512). None: not measured on that device.
BENCHMARK_SOURCE = "benchmark timings (docs/benchmarks.md: NVIDIA H200 GPU, 2-core CPU)"
TRAINING_S_PER_ITERATION = {("fast", "cpu"): 0.2, ("fast", "cuda"): 7.5 / 1500,
                            ("paper", "cpu"): None, ("paper", "cuda"): 0.1379}
PAPER_MEASURED_PIXELS = 512 * 512
INFERENCE_S_PER_VOXEL = {("fast", "cpu"): 205.9 / (202 * 512 * 512), ("fast", "cuda"): 1.1 / (202 * 512 * 512),
                         ("paper", "cpu"): None, ("paper", "cuda"): 11.4 / (202 * 512 * 512)}
PRESET_ITERATIONS = {"fast": 1500}  # core/training.py PRESETS (not imported: it imports torch); a test ties them
PAPER_EPOCHS = 200  # an epoch: every training slice once along each in-plane axis, batch 1


@dataclass(frozen=True)
class RunCost:
    """A run's expected size, memory and time (seconds per device: None where no timing was measured)."""

    output_shape: tuple  # (slices, rows, columns) of the result
    output_spacing_mm: float
    memory_needed_bytes: int
    memory_free_bytes: Optional[int]
    seconds: dict  # device ("cpu", "cuda") -> seconds or None
    training_skipped: bool = False

    @property
    def refused(self) -> bool:
        """True when the engine's memory check will refuse the run unless forced."""
        return self.memory_free_bytes is not None and self.memory_needed_bytes > self.memory_free_bytes


def training_iterations(preset: str, iterations: Optional[int], n_slices: int) -> int:
    """The iterations a run will train: the user's, else the preset's (paper: 200 epochs of the training slices,
    all but the validation slab of about 10 %)."""
    if iterations:
        return int(iterations)
    if preset == "paper":
        return max(1, PAPER_EPOCHS * 2 * (n_slices - max(1, round(0.1 * n_slices))))
    return PRESET_ITERATIONS.get(preset, 1500)


def estimate_cost(shape: Sequence[int], array_axis: int, increment_mm: float, in_plane_spacing_mm: Sequence[float],
                  target_spacing_mm: Optional[float], preset: str, iterations: Optional[int] = None,
                  train: bool = True) -> RunCost:
    """The cost of enhancing a (k, j, i) array of `shape` whose through-plane numpy axis is array_axis."""
    grid = min(in_plane_spacing_mm)
    target = target_spacing_mm or grid
    in_plane = [n for axis, n in enumerate(shape) if axis != array_axis]
    n_output = fine_grid_size(shape[array_axis], increment_mm, target)
    voxels = n_output * in_plane[0] * in_plane[1]
    n_iterations = training_iterations(preset, iterations, shape[array_axis]) if train else 0
    seconds = {}
    for device in ("cpu", "cuda"):
        per_iteration = TRAINING_S_PER_ITERATION.get((preset, device))
        per_voxel = INFERENCE_S_PER_VOXEL.get((preset, device))
        if per_iteration is None or per_voxel is None:
            seconds[device] = None
            continue
        if preset == "paper":
            per_iteration *= in_plane[0] * in_plane[1] / PAPER_MEASURED_PIXELS
        seconds[device] = n_iterations * per_iteration + voxels * per_voxel
    needed = estimate_memory_bytes(shape, array_axis, increment_mm, grid, target)
    return RunCost((n_output, *in_plane), target, needed, available_memory_bytes(), seconds, not train)


def duration_text(seconds: Optional[float]) -> str:
    """'about 40 s', 'about 5 min', 'about 3.2 h'; 'not measured' for None."""
    if seconds is None:
        return "not measured"
    if seconds < 90:
        return f"about {max(1, round(seconds)):.0f} s"
    if seconds < 5400:
        return f"about {seconds / 60:.0f} min"
    return f"about {seconds / 3600:.1f} h"
