"""A region (the panel's markups ROI): train on the region's own axial images, or on the whole scan's (a model saved
from a full run, applied to the region). Same acquisition, iterations and seed; PSNR on the region's central part.

python3 bench/region.py [--iterations N] [--device cpu]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from common import Acquisition, Truth, central, machine, psnr, simulate_with_cli, vhm_truth  # noqa: E402
from SR4ZCTLib.enhance import EnhanceOptions, enhance  # noqa: E402
from SR4ZCTLib.core.volume import Volume, read_through_plane_geometry  # noqa: E402

REGION = (slice(None), slice(32, 96), slice(32, 96))  # (k, j, i): 64 x 64 voxels in-plane, every slice


def crop(volume: Volume, region) -> Volume:
    """The region's voxels with their own positions (what the panel's ROI crop does)."""
    _, rows, columns = region
    matrix = volume.ijk_to_world.copy()
    matrix[:3, 3] = (volume.ijk_to_world @ np.array([columns.start, rows.start, 0, 1.0]))[:3]
    return Volume(np.ascontiguousarray(volume.array[region]), matrix, volume.slice_thickness_mm)


def run(thick: Volume, acquisition: Acquisition, options: EnhanceOptions, model=None):
    geometry, _ = read_through_plane_geometry(thick, acquisition.thickness_mm, acquisition.increment_mm)
    started = time.perf_counter()
    result = enhance(thick, geometry, options, model=model)
    return result, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--iterations", type=int, default=300)
    parser.add_argument("--device", default="cpu")
    arguments = parser.parse_args()
    acquisition = Acquisition(3.0, 2.0)
    truth = vhm_truth((72, 128, 128))
    with tempfile.TemporaryDirectory() as folder:
        thick = simulate_with_cli(truth, acquisition, Path(folder))
    options = EnhanceOptions(iterations=arguments.iterations, device=arguments.device, seed=0, force=True)
    region_truth = Truth(truth.name, truth.volume[REGION], truth.spacing_mm)
    rows = []
    on_region, seconds = run(crop(thick, REGION), acquisition, options)
    rows.append(("trained on the region", on_region.volume.array, on_region.metrics.timings, seconds))
    full, full_seconds = run(thick, acquisition, options)
    applied, seconds = run(crop(thick, REGION), acquisition, EnhanceOptions(device=arguments.device, force=True),
                           model=full.model)
    rows.append(("trained on the whole scan, applied to the region", applied.volume.array,
                 {**applied.metrics.timings, "training_s": full.metrics.timings["training_s"]}, seconds + full_seconds))
    print(f"**{truth.name} {truth.volume.shape}, {acquisition.describe()}, region 64 x 64 in-plane, "
          f"{arguments.iterations} iterations, {machine()}**\n")
    print("| training on | PSNR dB (region, central) | training s | total s |\n|---|---:|---:|---:|")
    for label, estimate, timings, total in rows:
        estimate = estimate.astype(np.float32)
        box = central(estimate, region_truth, acquisition)
        value = psnr(estimate[box], region_truth.volume[: estimate.shape[0]][box])
        print(f"| {label} | {value:.2f} | {timings['training_s']:.1f} | {total:.1f} |")


if __name__ == "__main__":
    sys.exit(main())
