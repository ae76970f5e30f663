"""Quality against a ground truth, methods side by side in one run (prints Markdown tables).

    python bench/quality.py --truth vhm --settings 5/2.5                 # the headline case, CPU
    python bench/quality.py --truth vhm,phantom --settings all --presets fast,paper --paper-iterations 3000
"""

from __future__ import annotations

import argparse
import shutil
import time

import numpy as np

from common import (EXTRA_SETTINGS, PAPER_SETTINGS, Acquisition, consistency, interpolate, machine, phantom_truth,
                    run_sr4zct, score, simulate_with_cli, table, vhm_truth, workdir, write_results)


try:
    import SimpleITK  # noqa: F401

    METHODS = ("linear", "cubic", "lanczos")
except ImportError:  # Lanczos comes from SimpleITK; the lent GPU machines lack it
    METHODS = ("linear", "cubic")


def parse_settings(text: str):
    if text == "all":
        return PAPER_SETTINGS + EXTRA_SETTINGS
    if text == "paper":
        return PAPER_SETTINGS
    return [tuple(float(v) for v in item.split("/")) for item in text.split(",")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--truth", default="vhm", help="vhm, phantom or vhm,phantom")
    parser.add_argument("--settings", default="5/2.5", help="thickness/increment list, 'paper' or 'all'")
    parser.add_argument("--presets", default="fast", help="fast, paper or fast,paper")
    parser.add_argument("--iterations", type=int, default=None, help="fast preset iterations (default: the preset's)")
    parser.add_argument("--paper-iterations", type=int, default=None,
                        help="paper preset iterations (default: its 200 epochs; give fewer on a CPU, stated in the table)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--methods", default=",".join(METHODS), help="interpolation baselines (lanczos needs SimpleITK)")
    parser.add_argument("--json", help="also write all figures here")
    args = parser.parse_args()
    print(f"machine: {machine()}\n")
    truths = {"vhm": vhm_truth, "phantom": phantom_truth}
    results = []
    for truth_name in args.truth.split(","):
        truth = truths[truth_name]()
        folder = workdir()
        try:
            for thickness, increment in parse_settings(args.settings):
                acquisition = Acquisition(thickness, increment)
                thick = simulate_with_cli(truth, acquisition, folder)
                rows = []
                methods = args.methods.split(",")
                for method in methods:
                    started = time.perf_counter()
                    estimate = interpolate(thick.array, acquisition, truth.spacing_mm, method)
                    elapsed = time.perf_counter() - started
                    rows.append((f"{method}", score(estimate, truth, acquisition), 0.0, elapsed))
                    started = time.perf_counter()
                    projected = consistency(estimate, thick.array, acquisition, truth.spacing_mm)
                    rows.append((f"{method} + projection", score(projected, truth, acquisition), 0.0,
                                 elapsed + time.perf_counter() - started))
                for preset in args.presets.split(","):
                    iterations = args.iterations if preset == "fast" else args.paper_iterations
                    base, train_s, variants = run_sr4zct(thick, acquisition, preset, iterations, args.device)
                    label = f"SR4ZCT {preset} ({base.metrics.training['iterations']} it)"
                    for variant, (estimate, infer_s) in variants.items():
                        rows.append((f"{label} {variant}", score(estimate, truth, acquisition), train_s, infer_s))
                title = (f"{truth.name}, thickness {thickness:g} mm, increment {increment:g} mm "
                         f"(overlap {acquisition.overlap_mm:g} mm); PSNR on [-1024, 3071] HU, soft tissue [-160, 240] HU")
                print(table(title, rows))
                linear = rows[0][1]["psnr"]
                best_baseline = max(r[1]["psnr"] for r in rows[:2 * len(methods)])
                cubic = rows[2][1]["psnr"]
                ours = next(r[1]["psnr"] for r in rows if r[0].endswith("fused + consistency"))  # the shipped default
                print(f"\ngain of the shipped default (fused + consistency): {ours - linear:+.2f} dB over linear, "
                      f"{ours - cubic:+.2f} dB over cubic B-spline, {ours - best_baseline:+.2f} dB over the best "
                      "interpolation(+projection); the other SR4ZCT rows are informative\n", flush=True)
                results.append({"truth": truth.name, "thickness_mm": thickness, "increment_mm": increment,
                                "rows": [{"method": r[0], **r[1], "train_s": r[2], "infer_s": r[3]} for r in rows]})
        finally:
            shutil.rmtree(folder, ignore_errors=True)
    if args.json:
        write_results(args.json, results)


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
