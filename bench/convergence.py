"""Quality against training iterations (to choose the `fast` preset): VHM crop, 5 mm every 2.5 mm.

Each budget is its own run (the learning-rate schedule depends on it). Prints a table, writes a PNG.

    python bench/convergence.py --preset fast --budgets 100,250,500,1000,1500,2500 --png docs/convergence_fast.png
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from common import Acquisition, consistency, interpolate, machine, run_sr4zct, score, simulate_with_cli, vhm_truth, workdir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--preset", default="fast")
    parser.add_argument("--budgets", default="100,250,500,1000,1500,2500")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--png", default=None)
    parser.add_argument("--crop", default="64,256,256", help="thick-slice input size (slices, rows, cols)")
    args = parser.parse_args()
    print(f"machine: {machine()}\n")
    slices, rows, cols = (int(v) for v in args.crop.split(","))
    acquisition = Acquisition(5.0, 2.5)
    truth = vhm_truth(shape=(int((slices - 1) * 2.5) + 1, rows, cols))
    thick = simulate_with_cli(truth, acquisition, workdir())
    cubic = interpolate(thick.array, acquisition, 1.0, "cubic")
    cubic_psnr = score(cubic, truth, acquisition)["psnr"]
    cubic_consistency = score(consistency(cubic, thick.array, acquisition, 1.0), truth, acquisition)["psnr"]
    print(f"input {thick.array.shape}; cubic B-spline {cubic_psnr:.2f} dB, cubic + consistency {cubic_consistency:.2f} dB\n")
    print("| iterations | train s | total s | PSNR fused dB | PSNR fused + consistency dB | gain over cubic dB |")
    print("|---:|---:|---:|---:|---:|---:|")
    points = []
    for budget in (int(b) for b in args.budgets.split(",")):
        started = time.perf_counter()
        base, train_s, variants = run_sr4zct(thick, acquisition, args.preset, budget, args.device)
        fused = score(variants["fused"][0], truth, acquisition)["psnr"]
        projected = score(variants["fused + consistency"][0], truth, acquisition)["psnr"]
        total = train_s + variants["fused + consistency"][1]
        points.append((budget, fused, projected))
        print(f"| {budget} | {train_s:.0f} | {total:.0f} | {fused:.2f} | {projected:.2f} | {projected - cubic_psnr:+.2f} |",
              flush=True)
        del started
    if args.png:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        budgets, fused, projected = zip(*points)
        plt.figure(figsize=(6, 4))
        plt.plot(budgets, fused, "o-", label=f"SR4ZCT {args.preset}, fused")
        plt.plot(budgets, projected, "s-", label=f"SR4ZCT {args.preset}, fused + consistency")
        plt.axhline(cubic_psnr, color="grey", ls="--", label="cubic B-spline")
        plt.axhline(cubic_consistency, color="black", ls=":", label="cubic + consistency")
        plt.xscale("log")
        plt.xlabel("training iterations")
        plt.ylabel("PSNR vs truth (dB)")
        plt.title("VHM head, 5 mm every 2.5 mm")
        plt.legend(fontsize=8)
        plt.tight_layout()
        plt.savefig(args.png, dpi=100)
        print(f"\nwrote {args.png}")


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
