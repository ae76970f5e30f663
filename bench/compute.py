"""Compute cost of `enhance` on a full-size input: 512 x 512 x 150 slices, 3 mm every 1 mm, 0.74 mm pixels.

Prints time per stage, peak host memory (RSS) and peak GPU memory for one preset per run:

    python bench/compute.py --preset fast
    python bench/compute.py --preset paper --iterations 2000   # reduced schedule; full-schedule time extrapolated
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from common import machine, vhm_truth
from SR4ZCTLib.enhance import EnhanceOptions, enhance
from SR4ZCTLib.core.phantom import make_phantom
from SR4ZCTLib.progress import Reporter
from SR4ZCTLib.core.training import preset, split_validation_slab, total_iterations
from SR4ZCTLib.core.volume import Volume, read_through_plane_geometry


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--preset", default="fast")
    parser.add_argument("--iterations", type=int, default=None)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--slices", type=int, default=150)
    args = parser.parse_args()
    print(f"machine: {machine()}")
    started = time.perf_counter()
    cache = Path(tempfile.gettempdir()) / f"sr4zct_compute_input_{args.slices}.npy"
    if cache.exists():
        array = np.load(cache)
    elif args.slices <= 160:  # real anatomy, quick to make: the VHM crop tiled 2 x 2 in-plane
        array = np.ascontiguousarray(np.tile(vhm_truth().volume[: args.slices].astype(np.int16), (1, 2, 2)))
        np.save(cache, array)
    else:
        array = np.round(make_phantom((args.slices, 512, 512), 0.74, seed=5, vessels=12, nodules=6)).astype(np.int16)
        np.save(cache, array)
    volume = Volume(array, Volume.matrix_from((0, 0, 0), (0.74, 0.74, 1.0), np.eye(3)))
    print(f"input {array.shape} int16 made in {time.perf_counter() - started:.0f} s")
    geometry, _ = read_through_plane_geometry(volume, 3.0)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    shown = {}

    def report(progress) -> None:  # a line per stage and per tenth, so a cut-off run still tells its pace
        tenth = int(progress.fraction * 10)
        if shown.get(progress.stage) != tenth:
            shown[progress.stage] = tenth
            print(f"  {time.perf_counter() - started:7.1f} s  {progress.stage} {progress.fraction:.0%} {progress.message}",
                  flush=True)

    started = time.perf_counter()
    result = enhance(volume, geometry, EnhanceOptions(preset=args.preset, iterations=args.iterations, device=args.device),
                     reporter=Reporter(report))
    peak_rss_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    peak_gpu = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else float("nan")
    timings, training = result.metrics.timings, result.metrics.training
    full = total_iterations(preset(args.preset), len(split_validation_slab(args.slices)[0]))
    per_iteration = timings["training_s"] / training["iterations"]
    print(f"\n**{args.preset} preset on 512 x 512 x {args.slices} (3 mm every 1 mm) -> {result.volume.array.shape}; "
          f"{result.metrics.device}**\n")
    print("| preset | iterations | training s | inference s | total s | peak RSS GiB | peak GPU GiB | "
          "validation PSNR dB (linear) |")
    print("|---|---:|---:|---:|---:|---:|---:|---|")
    print(f"| {args.preset} | {training['iterations']} | {timings['training_s']:.1f} | {timings['inference_s']:.1f} | "
          f"{timings['total_s']:.1f} | {peak_rss_gib:.2f} | {peak_gpu:.2f} | "
          f"{training['validation_psnr_db']:.2f} ({training['validation_linear_psnr_db']:.2f}) |")
    if training["iterations"] != full:
        print(f"\nthe preset's own schedule is {full} iterations: about {per_iteration * full / 60:.1f} min of training "
              f"at the measured {per_iteration * 1000:.1f} ms per iteration")


if __name__ == "__main__":
    main()
