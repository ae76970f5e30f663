"""The issue's acceptance run, exactly as a user would type it, on the whole Visible Human volume:

    sr4zct simulate vhm_head_1mm.nrrd -o thick.nrrd --thickness 5 --increment 2.5
    sr4zct enhance thick.nrrd -o enhanced.nrrd --preset fast --device cpu --thickness 5

then PSNR of the result against the 1 mm truth beside cubic B-spline with and without consistency.

    python bench/cli_headline.py
"""

from __future__ import annotations

import subprocess
import sys
import time

import numpy as np

from common import VHM, Acquisition, Truth, consistency, interpolate, machine, score, workdir
from SR4ZCTLib.io.volumes import read_volume


def timed(command: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(command, check=True)
    return time.perf_counter() - started


def main() -> None:
    print(f"machine: {machine()}\n")
    folder = workdir()
    acquisition = Acquisition(5.0, 2.5)
    cli = [sys.executable, "-m", "SR4ZCTLib.cli"]
    simulate_s = timed(cli + ["simulate", str(VHM), "-o", str(folder / "thick.nrrd"), "--thickness", "5",
                              "--increment", "2.5"])
    enhance_s = timed(cli + ["enhance", str(folder / "thick.nrrd"), "-o", str(folder / "enhanced.nrrd"),
                             "--preset", "fast", "--device", "cpu", "--thickness", "5", "--progress", "none"])
    truth_volume = read_volume(VHM)
    truth = Truth("VHM head 1 mm (whole volume)", truth_volume.array.astype(np.float32), 1.0)
    thick = read_volume(folder / "thick.nrrd").array
    enhanced = read_volume(folder / "enhanced.nrrd").array.astype(np.float32)
    rows = [("linear", interpolate(thick, acquisition, 1.0, "linear")),
            ("cubic B-spline", interpolate(thick, acquisition, 1.0, "cubic"))]
    rows.append(("cubic B-spline + projection", consistency(rows[1][1], thick, acquisition, 1.0)))
    rows.append(("SR4ZCT `sr4zct enhance --preset fast --device cpu`", enhanced))
    print(f"**Whole VHM volume {truth.volume.shape}, 5 mm every 2.5 mm -> thick {thick.shape}; "
          f"simulate {simulate_s:.0f} s, enhance {enhance_s:.0f} s wall clock**\n")
    print("| method | PSNR dB | PSNR soft dB | SSIM cor | SSIM sag |\n|---|---:|---:|---:|---:|")
    scores = {}
    for name, estimate in rows:
        scores[name] = score(estimate, truth, acquisition)
        m = scores[name]
        print(f"| {name} | {m['psnr']:.2f} | {m['psnr_soft']:.2f} | {m['ssim_cor']:.4f} | {m['ssim_sag']:.4f} |")
    ours = scores[rows[-1][0]]["psnr"]
    print(f"\nSR4ZCT: {ours - scores['cubic B-spline']['psnr']:+.2f} dB over cubic B-spline, "
          f"{ours - scores['cubic B-spline + projection']['psnr']:+.2f} dB over cubic + consistency; "
          f"enhance took {enhance_s / 60:.1f} min")


if __name__ == "__main__":
    main()
