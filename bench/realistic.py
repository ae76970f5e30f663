"""Quality without the inverse crime: thick slices the tool's model does not assume, against the strongest
learning-free baseline (cubic B-spline or Lanczos + the consistency projection).

Cases (thick slices simulated from the finest truth by quadrature on its samples, never by the tool's operator,
except `box`, which is the tool's own model and is kept as the inverse-crime reference):
  box        the tool's forward model (box profile), no noise
  realistic  a box of 0.8 x thickness blurred by a Gaussian so that the FWHM is the nominal thickness,
             plus in-plane correlated noise (Gaussian-filtered, sigma 1 pixel) of 10 HU per slice
  gaussian   a Gaussian profile of FWHM = thickness, plus the same noise
  wide       the realistic slices 15 % wider than nominal (FWHM 1.15 x thickness), plus the same noise
The slice centres start and end a margin inside the truth, so the anatomy continues past the end slices,
as in a real scan. SR4ZCT runs as a user would: nominal thickness, the shipped default options (blurred-box profile, training noise auto,
projection on); variants change one thing at a time.

    python bench/realistic.py --truth phantom --settings all --cases box,realistic,gaussian --tune   # choose lambda
    python bench/realistic.py --truth vhm --settings all --cases box,realistic,gaussian              # report, learning-free
    python bench/realistic.py --truth vhm --settings 5/2.5 --cases realistic --train                 # + SR4ZCT
"""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import replace

import numpy as np
from scipy.ndimage import gaussian_filter
from scipy.special import ndtr

from common import (EXTRA_SETTINGS, PAPER_SETTINGS, SOFT_TISSUE_WINDOW_HU, VHM, Acquisition, Truth, central,
                    consistency, interpolate, machine, score, table, write_results)
from SR4ZCTLib.core.intensity import psnr
from SR4ZCTLib.enhance import EnhanceOptions, enhance
from SR4ZCTLib.core.forward import CONSISTENCY_LAMBDA, FWHM_TO_SIGMA, thick_sampling_matrix
from SR4ZCTLib.core.phantom import make_ball_phantom, make_phantom
from SR4ZCTLib.core.volume import Volume, read_through_plane_geometry
from SR4ZCTLib.io.volumes import read_volume

LAMBDAS = (0.003, 0.01, 0.03, 0.1, 0.3, 1.0)
NOISE_HU = 10.0
MARGIN_MM = 16.0


def finest_truth(name: str) -> tuple[np.ndarray, float, str]:
    """(volume (z, y, x) HU, spacing mm, label): the phantom at 0.5 mm (tuning), the ball phantom at 0.8 mm (report,
    statistically isotropic: bench/isotropy.py) or the VHM head at 1 mm (report, sharper along z than in-plane)."""
    if name == "phantom":
        return make_phantom((200, 192, 192), 0.5, seed=11, noise_hu=8.0), 0.5, "phantom 0.5 mm (seed 11)"
    if name == "balls":
        return make_ball_phantom((240, 192, 192), 0.8, 1000, seed=3), 0.8, "ball phantom 0.8 mm (seed 3, isotropic)"
    full = read_volume(VHM).array.astype(np.float32)
    y0, x0 = (full.shape[1] - 256) // 2, (full.shape[2] - 256) // 2
    return full[:, y0:y0 + 256, x0:x0 + 256], 1.0, "VHM head 1 mm, all 245 slices, central 256 x 256"


def blurred_box_sigma(thickness: float, box_fraction: float = 0.8) -> float:
    """Gaussian sigma that blurs a box of box_fraction x thickness to a FWHM of exactly `thickness`."""
    width = box_fraction * thickness

    def half_max_gap(sigma: float) -> float:
        value = lambda x: ndtr((x + width / 2) / sigma) - ndtr((x - width / 2) / sigma)  # noqa: E731
        return value(thickness / 2) - 0.5 * value(0.0)

    low, high = 1e-6, thickness
    for _ in range(100):
        middle = 0.5 * (low + high)
        low, high = (low, middle) if half_max_gap(middle) > 0 else (middle, high)  # a wider blur: a wider FWHM
    return 0.5 * (low + high)


def profile(case: str, offsets_mm: np.ndarray, thickness: float) -> np.ndarray:
    """Slice sensitivity profile (unnormalised) at offsets from the slice centre."""
    if case == "wide":
        return profile("realistic", offsets_mm, 1.15 * thickness)
    if case == "gaussian":
        return np.exp(-0.5 * (offsets_mm / (thickness * FWHM_TO_SIGMA)) ** 2)
    sigma, width = blurred_box_sigma(thickness), 0.8 * thickness
    return ndtr((offsets_mm + width / 2) / sigma) - ndtr((offsets_mm - width / 2) / sigma)


def simulate(truth: np.ndarray, spacing: float, acquisition: Acquisition, case: str, seed: int):
    """(thick int16 (n, y, x), index of the first centre in the truth): slices from a margin inside the truth."""
    n_truth = truth.shape[0]
    first = int(round(MARGIN_MM / spacing))
    span = (n_truth - 1 - 2 * first) * spacing
    count = int(math.floor(span / acquisition.increment_mm + 1e-9)) + 1
    centres = first + np.arange(count) * acquisition.increment_mm / spacing  # in truth samples
    if case == "box":
        weights = thick_sampling_matrix(n_truth, centres, acquisition.thickness_mm / spacing, "box")
    else:
        weights = profile(case, (np.arange(n_truth)[None, :] - centres[:, None]) * spacing, acquisition.thickness_mm)
        weights /= weights.sum(axis=1, keepdims=True)
    thick = np.einsum("mk,kyx->myx", weights.astype(np.float32), truth)
    if case != "box":
        rng = np.random.default_rng(seed)
        for index in range(count):
            noise = gaussian_filter(rng.normal(size=thick.shape[1:]), 1.0)
            thick[index] += (NOISE_HU / noise.std()) * noise
    return np.round(thick).astype(np.int16), first


VARIANTS = {  # SR4ZCT runs side by side: name -> options changed from the shipped default (told the nominal only)
    "default": {},  # blurred box, training noise auto, projection on
    "box": {"profile": "box", "training_noise": "off"},  # the default before issue 16
    "noise": {"profile": "box", "training_noise": "auto"},
    "blurred": {"profile": "blurred-box", "training_noise": "off"},
    "blurred+noise": {"profile": "blurred-box", "training_noise": "auto"},
    "auto+noise": {"profile": "auto", "training_noise": "auto"},
    "spread": {"profile_spread": 0.1},
}


def thick_volume(thick: np.ndarray, spacing: float, acquisition: Acquisition, profile=None):
    """(Volume, geometry) of simulated thick slices as a user gives them: the nominal thickness and increment."""
    volume = Volume(thick, Volume.matrix_from((0, 0, 0), (spacing, spacing, acquisition.increment_mm), np.eye(3)))
    geometry, _ = read_through_plane_geometry(volume, acquisition.thickness_mm, acquisition.increment_mm, profile)
    return volume, geometry


def apply(volume: Volume, geometry, model, **options) -> np.ndarray:
    """A trained model run on the volume with the shipped inference options unless `options` (float32 array)."""
    result = enhance(volume, geometry, EnhanceOptions(device="cpu", force=True, **options), model=model)
    return result.volume.array.astype(np.float32)


def sr4zct(thick: np.ndarray, spacing: float, acquisition: Acquisition, iterations=None, **changes):
    """SR4ZCT as a user runs it (nominal thickness, default profile, the shipped options unless `changes`), the
    volume with the geometry it used, and the same model unprojected."""
    volume, geometry = thick_volume(thick, spacing, acquisition, changes.get("profile"))
    started = time.perf_counter()
    shipped = enhance(volume, geometry, EnhanceOptions(device="cpu", iterations=iterations, force=True, **changes))
    total_s = time.perf_counter() - started
    return shipped, total_s, volume, apply(volume, shipped.geometry, shipped.model, consistency=False)


def oracle(volume: np.ndarray, spacing: float, acquisition: Acquisition, case: str, seed: int, thick: np.ndarray,
           iterations=None):
    """The oracle ceiling (bench/oracle.py): trained on a second simulation (another noise draw) against the truth,
    run on `thick` as the shipped default runs, projected and not."""
    from oracle import oracle_model

    train_thick, first = simulate(volume, spacing, acquisition, case, seed + 7919)
    image, geometry = thick_volume(thick, spacing, acquisition)
    model = oracle_model(train_thick, volume[first:], spacing, geometry.acquisition, iterations=iterations)
    return (apply(image, geometry, model), apply(image, geometry, model, consistency=False),
            model.metrics["training_seconds"])


def psnr_only(estimate: np.ndarray, truth: Truth, acquisition: Acquisition) -> dict:
    """score() without SSIM (NaN), for the many rows of the lambda scan."""
    region = central(estimate, truth, acquisition)
    a, b = estimate[region], truth.volume[: estimate.shape[0]][region]
    return {"psnr": psnr(a, b), "psnr_soft": psnr(a, b, SOFT_TISSUE_WINDOW_HU), "ssim_cor": math.nan, "ssim_sag": math.nan}


def parse_settings(text: str):
    if text == "all":
        return PAPER_SETTINGS + EXTRA_SETTINGS
    return [tuple(float(v) for v in item.split("/")) for item in text.split(",")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--truth", default="vhm", choices=("vhm", "balls", "phantom"))
    parser.add_argument("--settings", default="5/2.5", help="thickness/increment list or 'all'")
    parser.add_argument("--cases", default="box,realistic,gaussian")
    parser.add_argument("--methods", default="linear,cubic,lanczos")
    parser.add_argument("--tune", action="store_true", help=f"score the projection at lambda in {LAMBDAS}")
    parser.add_argument("--train", action="store_true", help="also run SR4ZCT (the fast preset, CPU)")
    parser.add_argument("--iterations", type=int, default=None)
    parser.add_argument("--variants", default="default", help=f"SR4ZCT variants with --train, from {', '.join(VARIANTS)}")
    parser.add_argument("--flips", action="store_true", help="also each variant's model with test-time flips (4x inference)")
    parser.add_argument("--oracle", action="store_true", help="also the supervised oracle ceiling (bench/oracle.py)")
    parser.add_argument("--no-ssim", action="store_true", help="PSNR only (SSIM shown as nan), for the long tables")
    parser.add_argument("--json", help="also write all figures here")
    args = parser.parse_args()
    print(f"machine: {machine()}; projection lambda {CONSISTENCY_LAMBDA:g} (forward.CONSISTENCY_LAMBDA)\n", flush=True)
    volume, spacing, label = finest_truth(args.truth)
    lambdas = LAMBDAS if args.tune else (CONSISTENCY_LAMBDA,)
    measure = psnr_only if args.tune or args.no_ssim else score
    results = []
    for thickness, increment in parse_settings(args.settings):
        acquisition = Acquisition(thickness, increment)
        for case in args.cases.split(","):
            thick, first = simulate(volume, spacing, acquisition, case, seed=int(thickness * 100 + increment * 10))
            rows, extra = [], {}
            for method in args.methods.split(","):
                estimate = interpolate(thick, acquisition, spacing, method)
                truth = Truth(label, volume[first:first + estimate.shape[0]], spacing)
                rows.append((method, measure(estimate, truth, acquisition), 0.0, 0.0))
                for lam in lambdas:
                    started = time.perf_counter()
                    projected = consistency(estimate, thick, acquisition, spacing, lam)
                    rows.append((f"{method} + projection (lambda {lam:g})", measure(projected, truth, acquisition), 0.0,
                                 time.perf_counter() - started))
                if method != "linear":  # the projection with the profile the shipped default assumes, too
                    started = time.perf_counter()
                    projected = consistency(estimate, thick, replace(acquisition, profile="blurred-box"), spacing,
                                            CONSISTENCY_LAMBDA)
                    rows.append((f"{method} + projection (lambda {CONSISTENCY_LAMBDA:g}, blurred box)",
                                 measure(projected, truth, acquisition), 0.0, time.perf_counter() - started))
            for variant in args.variants.split(",") if args.train else ():
                shipped, total_s, image, plain = sr4zct(thick, spacing, acquisition, args.iterations,
                                                        **VARIANTS[variant])
                train_s = shipped.metrics.timings["training_s"]
                infer_s = shipped.metrics.timings["inference_s"]
                name = ("**SR4ZCT shipped default** (blurred box, training noise, projection on)" if variant == "default"
                        else f"SR4ZCT {variant} ({', '.join(f'{k}={v}' for k, v in VARIANTS[variant].items())})")
                rows.append((name, measure(shipped.volume.array.astype(np.float32), truth, acquisition), train_s,
                             infer_s))
                rows.append((f"SR4ZCT {variant}, same model, projection off", measure(plain, truth, acquisition),
                             train_s, infer_s))
                for lam in (lambdas if args.tune else ()):
                    rows.append((f"SR4ZCT {variant} unprojected + projection (lambda {lam:g})",
                                 measure(consistency(plain, thick, acquisition, spacing, lam), truth, acquisition),
                                 train_s, infer_s))
                for project in (True, False) if args.flips else ():
                    started = time.perf_counter()
                    flipped = apply(image, shipped.geometry, shipped.model, consistency=project, flips=True)
                    rows.append((f"SR4ZCT {variant} + test-time flips, projection {'on' if project else 'off'}",
                                 measure(flipped, truth, acquisition), train_s, time.perf_counter() - started))
                extra[variant] = {"enhance_s": total_s, "validation": shipped.metrics.training.get("validation_psnr_db"),
                                  "training_noise": shipped.metrics.training.get("training_noise")}
            if args.oracle:
                projected, plain, train_s = oracle(volume, spacing, acquisition, case,
                                                   int(thickness * 100 + increment * 10), thick, args.iterations)
                rows.append(("oracle (supervised on the truth's pairs), as the shipped default",
                             measure(projected, truth, acquisition), train_s, 0.0))
                rows.append(("oracle, projection off", measure(plain, truth, acquisition), train_s, 0.0))
            title = (f"{label}, {case} slices, thickness {thickness:g} mm every {increment:g} mm "
                     f"({thick.shape[0]} slices); PSNR on [-1024, 3071] HU, soft tissue [-160, 240] HU")
            print(table(title, rows))
            baselines = [r for r in rows if r[0].split()[0] in ("cubic", "lanczos")
                         and f" + projection (lambda {CONSISTENCY_LAMBDA:g}" in r[0]]
            if baselines:
                best = max(baselines, key=lambda r: r[1]["psnr"])
                cubic = next(r for r in rows if r[0] == "cubic")
                print(f"\nstrongest learning-free baseline: {best[0]} {best[1]['psnr']:.2f} dB", end="")
                shipped_rows = {variant: next(r for r in rows if r[0].startswith(
                    "**SR4ZCT shipped" if variant == "default" else f"SR4ZCT {variant} ("))[1]
                    for variant in (args.variants.split(",") if args.train else ())}
                for variant, ours in shipped_rows.items():
                    print(f"; SR4ZCT {variant} {ours['psnr'] - best[1]['psnr']:+.2f} dB over it, "
                          f"{ours['psnr'] - cubic[1]['psnr']:+.2f} dB over cubic, SSIM (cor/sag) "
                          f"{ours['ssim_cor'] - best[1]['ssim_cor']:+.4f}/{ours['ssim_sag'] - best[1]['ssim_sag']:+.4f}"
                          " over it", end="")
                oracles = [r for r in rows if r[0].startswith("oracle")]
                if oracles:
                    ceiling = max(r[1]["psnr"] for r in oracles) - best[1]["psnr"]
                    print(f"; the oracle {ceiling:+.2f} dB over it", end="")
                    for variant, ours in shipped_rows.items():
                        print(f"; SR4ZCT {variant} {(ours['psnr'] - best[1]['psnr']) / ceiling:.0%} of the oracle's gain"
                              if ceiling > 0 else "", end="")
            print("\n", flush=True)
            results.append({"truth": label, "case": case, "thickness_mm": thickness, "increment_mm": increment,
                            **extra, "rows": [{"method": r[0], **r[1], "train_s": r[2], "infer_s": r[3]} for r in rows]})
            if args.json:
                write_results(args.json, results)


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
