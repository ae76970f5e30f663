"""Inference: interpolate along z, run the network on every coronal and sagittal slice, fuse, make consistent.

The volume is streamed a few slices at a time: only the input (in network units) and one float
output volume exist at once. Optionally the fused result is projected onto consistency with the
measured thick slices: the regularised least-norm correction y + S^T (S S^T + lambda mu I)^-1 (b - S y)
(forward.ConsistencyProjection; the maths is in forward.py's docstring).
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import numpy as np
import torch
from torch import nn

from .acquisition import Acquisition
from .device import Compute, free_cuda_memory, is_out_of_memory
from .forward import ConsistencyProjection, linear_interpolation_matrix
from .intensity import Normalisation
from .memory import fine_grid_size
from ..options import VIEWS
from ..progress import Reporter



def interpolation_to_grid(n_slices: int, increment_mm: float, spacing_mm: float) -> torch.Tensor:
    """U (n_fine x n_slices): linear interpolation from slice centres to the fine grid."""
    n_fine = fine_grid_size(n_slices, increment_mm, spacing_mm)
    positions = np.arange(n_fine) * spacing_mm / increment_mm
    return torch.from_numpy(linear_interpolation_matrix(positions, n_slices)).float()


FLIPS = ((), (2,), (3,), (2, 3))  # test-time augmentation: training drew these flips, so each is an equal guess


def _run_network(network: nn.Module, images: torch.Tensor, device: torch.device, compute: Compute,
                 flips: bool = False) -> torch.Tensor:
    """The network on a batch of images: fp16 autocast on CUDA, else float32 (in `compute`'s memory format); with
    `flips`, the mean of its outputs on the four flips of each image, flipped back."""
    inputs = images[:, None].to(device, non_blocking=True)
    total = None
    with torch.no_grad():
        for dims in FLIPS if flips else ((),):
            flipped = compute.images(inputs.flip(dims) if dims else inputs)
            if device.type == "cuda":
                with torch.autocast("cuda", dtype=torch.float16):
                    result = network(flipped).float()
            else:
                result = network(flipped).float()
            result = result.flip(dims) if dims else result
            total = result if total is None else total + result
    return (total[:, 0] / (len(FLIPS) if flips else 1)).cpu()


class _BatchRunner:
    """Runs the network in batches; CUDA out of memory halves the batch, then moves to the CPU."""

    def __init__(self, network: nn.Module, device: torch.device, batch_size: int, reporter: Reporter,
                 compute: Compute = Compute(), flips: bool = False) -> None:
        self.network, self.device, self.batch_size, self.reporter = network, device, batch_size, reporter
        self.compute, self.flips = compute, flips

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        while True:
            try:
                results = []
                for start in range(0, images.shape[0], self.batch_size):
                    self.reporter.check()
                    results.append(_run_network(self.network, images[start:start + self.batch_size], self.device,
                                                self.compute, self.flips))
                return torch.cat(results)
            except RuntimeError as error:
                if self.device.type != "cuda" or not is_out_of_memory(error):
                    raise
                free_cuda_memory()
                if self.batch_size > 1:
                    self.batch_size //= 2
                    self.reporter.step("inference", 0.0, f"GPU out of memory; batch size now {self.batch_size}")
                else:
                    self.device = torch.device("cpu")
                    self.network = self.network.to(self.device)
                    self.reporter.step("inference", 0.0, "GPU out of memory at batch size 1; continuing on the CPU")


def enhance_stack(
    thick: np.ndarray,
    acquisition: Acquisition,
    grid_spacing_mm: float,
    network: Optional[nn.Module],
    normalisation: Normalisation,
    device: torch.device,
    *,
    views: Sequence[str] = VIEWS,
    consistency_lambda: Optional[float] = None,
    batch_size: Optional[int] = None,
    reporter: Optional[Reporter] = None,
    on_pass: Optional[Callable[[str, tuple, torch.Tensor], None]] = None,
    compute: Compute = Compute(),
    flips: bool = False,
) -> torch.Tensor:
    """Enhance a stack (n_slices, rows, cols) whose axis 0 is through-plane; returns (n_fine, rows, cols) in HU.

    network None gives plain linear interpolation, the baseline. consistency_lambda: None for no
    projection, else the projection's relative regularisation.
    on_pass(view, region, block) sees each view's network output before fusion (block = enhanced[region]).
    compute: the network's memory format (core/device.Compute; inference itself stays float32 on a CPU).
    flips: test-time augmentation, the network's mean over the four flips of each image (4x the network's time).
    """
    reporter = reporter or Reporter()
    n_slices, rows, cols = thick.shape
    measured = torch.empty((n_slices, rows, cols), dtype=torch.float32)
    for index in range(n_slices):  # convert slice by slice: no float64 copy of the whole input
        measured[index] = normalisation.forward(torch.from_numpy(np.asarray(thick[index], dtype=np.float32)))
    upsample = interpolation_to_grid(n_slices, acquisition.increment_mm, grid_spacing_mm)
    n_fine = upsample.shape[0]
    if network is None or not views:
        enhanced = torch.einsum("fs,srC->frC", upsample, measured)
    else:
        enhanced = torch.zeros((n_fine, rows, cols), dtype=torch.float32)
        network = compute.network(network.to(device).eval())
        run = _BatchRunner(network, device, batch_size or (16 if device.type == "cuda" else 4), reporter, compute, flips)
        weight = 1.0 / len(views)
        total = sum(rows if view == "coronal" else cols for view in views)
        done = 0
        for view in views:
            lines = rows if view == "coronal" else cols
            step = run.batch_size * 2
            for start in range(0, lines, step):
                stop = min(start + step, lines)
                if view == "coronal":  # images (z, column) for rows start..stop
                    block = torch.einsum("fs,srC->rfC", upsample, measured[:, start:stop, :])
                    region, result = (slice(None), slice(start, stop)), run(block).permute(1, 0, 2)
                else:  # images (z, row) for columns start..stop
                    block = torch.einsum("fs,sRc->cfR", upsample, measured[:, :, start:stop])
                    region, result = (slice(None), slice(None), slice(start, stop)), run(block).permute(1, 2, 0)
                enhanced[region] += weight * result
                if on_pass is not None:  # e.g. the confidence map: each view's own result, network units
                    on_pass(view, region, result)
                done += stop - start
                reporter.step("inference", done / total, f"{view} slices {stop}/{lines}")
    if consistency_lambda is not None:
        project_onto_measurements(enhanced, measured, acquisition, grid_spacing_mm, consistency_lambda, reporter)
    del measured
    for start in range(0, n_fine, 32):
        enhanced[start:start + 32] = normalisation.inverse(enhanced[start:start + 32])
    return enhanced


def project_onto_measurements(
    estimate: torch.Tensor,
    measured: torch.Tensor,
    acquisition: Acquisition,
    grid_spacing_mm: float,
    regularisation: float,
    reporter: Optional[Reporter] = None,
    rows_per_chunk: int = 16,
) -> None:
    """In place: the consistency projection of estimate (n_fine, rows, cols) onto the measured slices, by row chunks."""
    n_fine, rows, cols = estimate.shape
    projection = ConsistencyProjection(n_fine, measured.shape[0], grid_spacing_mm, acquisition, regularisation)
    for start in range(0, rows, rows_per_chunk):
        chunk = estimate[:, start:start + rows_per_chunk, :]
        lines = chunk.reshape(n_fine, -1).numpy().astype(np.float64)
        target = measured[:, start:start + rows_per_chunk, :].reshape(measured.shape[0], -1).numpy()
        chunk += torch.from_numpy(projection.correction(lines, target)).reshape(chunk.shape).to(chunk.dtype)
        if reporter is not None:
            reporter.step("consistency", min(1.0, (start + rows_per_chunk) / rows), "consistency projection")


def resample_along_axis0(stack: torch.Tensor, from_spacing_mm: float, to_spacing_mm: float, n_out: int) -> torch.Tensor:
    """Linear resampling of axis 0 from one uniform spacing to another (same first sample), n_out samples.

    The input grid may stop up to one sample short of the last slice centre that n_out reaches:
    that last bit is read by reflection about the last sample (less than one input sample away).
    """
    n_in = stack.shape[0]
    matrix = torch.from_numpy(linear_interpolation_matrix(np.arange(n_out) * to_spacing_mm / from_spacing_mm, n_in)).float()
    result = torch.empty((n_out,) + tuple(stack.shape[1:]), dtype=stack.dtype)
    for start in range(0, stack.shape[1], 32):
        result[:, start:start + 32] = torch.einsum("os,src->orc", matrix, stack[:, start:start + 32])
    return result
