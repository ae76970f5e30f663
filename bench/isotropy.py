"""Truth isotropy: how much finer detail a benchmark truth has along z than in-plane (issue 16, item 6).

Self-supervision learns only what the in-plane images show, so a truth sharper along z than in-plane caps every
self-supervised method. For each truth this prints the power ratio P_z(f) / P_x(f) of its 1-D power spectra
(Hann-windowed lines through the central region, mean removed, averaged over all lines) at 0.1-0.45 cycles/mm.
A headline truth must lie within 0.8-1.25 at all of them.

Regions: the benchmarks' own (bench/realistic.py): the phantom whole, the VHM head's 245 slices x central 256 x 256.
`vhm-zblur` is that VHM region with z blurred by an exact Gaussian (in the Fourier domain, mirrored ends) whose
sigma (0.05 mm steps) brings the ratios at 0.3-0.45 cycles/mm, where resolution shows, closest to 1 (least
worst |log ratio|): its z resolution matched to its in-plane resolution, as far as one Gaussian can. Below 0.3 cycles/mm the ratio is the
anatomy's shape (a head is not a cube), which no blur changes; the table shows it as it is.

    python bench/isotropy.py                       # phantom, balls, vhm, vhm-zblur
"""

from __future__ import annotations

import argparse

import numpy as np

from common import VHM
from SR4ZCTLib.core.phantom import make_ball_phantom, make_phantom
from SR4ZCTLib.io.volumes import read_volume

BALLS = lambda: make_ball_phantom((240, 192, 192), 0.8, 1000, seed=3)  # noqa: E731  as bench/realistic.py's
FREQUENCIES = (0.1, 0.2, 0.3, 0.4, 0.45)  # cycles/mm
ISOTROPIC = (0.8, 1.25)


def line_power(volume: np.ndarray, axis: int, spacing_mm: float) -> tuple[np.ndarray, np.ndarray]:
    """(frequencies in cycles/mm, mean power) of the Hann-windowed, mean-removed lines of volume along axis."""
    lines = np.moveaxis(volume.astype(np.float64), axis, -1)
    lines = lines.reshape(-1, lines.shape[-1])
    lines = lines - lines.mean(axis=1, keepdims=True)
    power = np.abs(np.fft.rfft(lines * np.hanning(lines.shape[1]), axis=1)) ** 2
    return np.fft.rfftfreq(lines.shape[1], d=spacing_mm), power.mean(axis=0)


def power_ratios(volume: np.ndarray, spacing_mm: float) -> dict[float, float]:
    """P_z / P_x at FREQUENCIES for a (z, y, x) volume of isotropic spacing (x: the mean of both in-plane axes)."""
    fz, pz = line_power(volume, 0, spacing_mm)
    fy, py = line_power(volume, 1, spacing_mm)
    fx, px = line_power(volume, 2, spacing_mm)
    return {f: float(np.interp(f, fz, pz) / (0.5 * (np.interp(f, fy, py) + np.interp(f, fx, px)))) for f in FREQUENCIES}


RESOLUTION_FREQUENCIES = (0.3, 0.4, 0.45)  # where the z blur is fitted


def benchmark_region(volume: np.ndarray) -> np.ndarray:
    """All slices, the central 256 x 256 (as bench/realistic.py crops the VHM head)."""
    y0, x0 = max(0, (volume.shape[1] - 256) // 2), max(0, (volume.shape[2] - 256) // 2)
    return volume[:, y0:y0 + 256, x0:x0 + 256]


def z_blur(volume: np.ndarray, sigma_mm: float, spacing_mm: float) -> np.ndarray:
    """volume blurred along z by an exact Gaussian of sigma_mm (Fourier domain, ends mirrored)."""
    extended = np.concatenate([volume, volume[::-1]], axis=0).astype(np.float64)
    frequencies = np.fft.rfftfreq(extended.shape[0], d=spacing_mm)
    gain = np.exp(-2 * np.pi ** 2 * sigma_mm ** 2 * frequencies ** 2)[:, None, None]
    return np.fft.irfft(np.fft.rfft(extended, axis=0) * gain, n=extended.shape[0], axis=0)[: volume.shape[0]]


def isotropic_z_blur(ratios: dict[float, float]) -> float:
    """The z blur (mm, 0.05 mm steps) that best matches z to in-plane at RESOLUTION_FREQUENCIES (least worst
    |log ratio|), predicting each ratio after a blur of sigma as ratio x exp(-4 pi^2 sigma^2 f^2)."""
    def worst(sigma: float) -> float:
        return max(abs(np.log(ratios[f]) - 4 * np.pi ** 2 * sigma ** 2 * f ** 2) for f in RESOLUTION_FREQUENCIES)

    return float(min(np.arange(0.0, 3.0, 0.05), key=worst))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--truths", default="phantom,balls,vhm,vhm-zblur")
    args = parser.parse_args()
    rows = []
    vhm = None
    for name in args.truths.split(","):
        if name == "phantom":
            volume, spacing, label = make_phantom((200, 192, 192), 0.5, seed=11, noise_hu=8.0), 0.5, "phantom 0.5 mm"
        elif name == "balls":
            volume, spacing, label = BALLS(), 0.8, "ball phantom 0.8 mm (statistically isotropic)"
        else:
            vhm = benchmark_region(read_volume(VHM).array.astype(np.float32)) if vhm is None else vhm
            volume, spacing, label = vhm, 1.0, "VHM head 1 mm (245 x 256 x 256)"
            if name == "vhm-zblur":
                sigma = isotropic_z_blur(power_ratios(volume, spacing))
                volume = z_blur(volume, sigma, spacing)
                label = f"VHM head 1 mm, z blurred (Gaussian sigma {sigma:.2f} mm)"
        ratios = power_ratios(volume, spacing)
        inside = all(ISOTROPIC[0] <= r <= ISOTROPIC[1] for r in ratios.values())
        rows.append((label, ratios, inside))
    print("| truth | " + " | ".join(f"{f:g} c/mm" for f in FREQUENCIES) + " | within 0.8-1.25 |")
    print("|---|" + "---:|" * len(FREQUENCIES) + "---|")
    for label, ratios, inside in rows:
        print(f"| {label} | " + " | ".join(f"{ratios[f]:.2f}" for f in FREQUENCIES) + f" | {'yes' if inside else 'no'} |")


if __name__ == "__main__":
    main()
