"""The confidence map: where the coronal and sagittal passes disagree, the network is unsure.

disagreement = G_sigma * |coronal - sagittal| in HU, on the output grid (G_sigma: a Gaussian of
`SMOOTHING_VOXELS` voxels, so single noisy voxels do not dominate). It is computed before the
consistency step, from the two network passes that the fused result averages. High values mark
places to read with care; they are not an error bound (docs/benchmarks.md measures how well they
rank the true error).
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from ..errors import InputError
from ..options import VIEWS
from .inference import resample_along_axis0
from .volume import Volume

SMOOTHING_VOXELS = 1.0


class PassDifference:
    """An `on_pass` hook for `enhance_stack`: accumulates coronal minus sagittal (network units) on the fine grid."""

    def __init__(self, shape: tuple[int, int, int], views) -> None:
        if set(views) != set(VIEWS):
            raise InputError("the confidence map compares the coronal and sagittal passes; run with both views")
        self.difference = torch.zeros(shape, dtype=torch.float32)

    def __call__(self, view: str, region: tuple, block: torch.Tensor) -> None:
        self.difference[region] += block if view == "coronal" else -block


def disagreement_stack(difference: torch.Tensor, scale: float, grid_spacing_mm: float,
                       target_spacing_mm: float, n_out: int) -> torch.Tensor:
    """|coronal - sagittal| in HU (network difference times the normalisation scale), smoothed, on the target grid."""
    from scipy.ndimage import gaussian_filter

    values = np.abs(difference.numpy()) * np.float32(scale)
    smoothed = torch.from_numpy(gaussian_filter(values, SMOOTHING_VOXELS, mode="nearest").astype(np.float32))
    if abs(target_spacing_mm - grid_spacing_mm) > 1e-9:
        smoothed = resample_along_axis0(smoothed, grid_spacing_mm, target_spacing_mm, n_out)
    return smoothed


def confidence_volume(passes: Optional[PassDifference], scale: float, grid_spacing_mm: float, target_spacing_mm: float,
                      array_axis: int, ijk_to_world: np.ndarray, n_slices: int) -> Optional[Volume]:
    """The disagreement map as a float32 Volume on the output grid (same matrix as the result), or None."""
    if passes is None:
        return None
    stack = disagreement_stack(passes.difference, scale, grid_spacing_mm, target_spacing_mm, n_slices)
    return Volume(np.ascontiguousarray(np.moveaxis(stack.numpy(), 0, array_axis)), ijk_to_world.copy())
