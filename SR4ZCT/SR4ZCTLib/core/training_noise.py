"""Noise matched in training: the degraded axis carries the noise that z carries at inference.

A thick slice b_m = s_m . f + n_m holds noise n_m of std sigma (the axial images' own noise, measured
in uniform regions: core/slice_profile.estimate_noise), correlated in-plane with the images' 1-D noise
power spectrum N, and correlated between neighbouring slices by rho_z, measured too (slice_correlation:
in-plane high-pass residuals of neighbouring slices in uniform regions). Slices reconstructed from shared
projections correlate about as white noise integrated by overlapping profiles, c = s_m . s_m+1 /
(|s_m| |s_m+1|); a simulation that adds noise per slice has rho_z = 0. At inference z carries U n.

In training the degraded axis is an in-plane axis. S applied to an axial image averages its noise
down to a residual of variance sigma^2 mean_m(s_m^T R s_m), R the in-plane correlation along that
axis; the other axis keeps its correlation N. So the degraded input W x gets

    U (a S w / |s| + b e) * sigma_add,   sigma_add^2 = sigma^2 (1 - mean_m s_m^T R s_m),
    a^2 = clip((rho_z - r1) / ((1 - r0) c), 0, 1), b^2 = 1 - a^2,

r0, r1 = mean_m s_m^T R s_m+shift at shifts 0 and 1 (residual_fraction): what S leaves of the image's own noise;

w white along the degraded axis, e white per thick sample, both coloured by N along the other axis
(unit variance): in total each thick sample carries sigma, neighbouring samples correlate by rho_z, and
the image's other axis as in-plane noise does. Units: network units (HU / Normalisation.scale).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch


@dataclass(frozen=True, eq=False)
class TrainingNoise:
    """Thick-slice noise to add to degraded training inputs: std and in-plane autocovariance, in network units."""

    std: float  # per thick sample (network units)
    autocorrelation: np.ndarray = field(repr=False)  # normalised, lags 0..K pixels along an in-plane line (1 at 0)
    std_hu: float = 0.0  # the same std in HU, for the record
    slice_correlation: Optional[float] = None  # rho_z between neighbouring slices; None: as overlapping profiles

    @classmethod
    def from_estimate(cls, estimate, scale_hu: float, slice_correlation: Optional[float] = None
                      ) -> Optional["TrainingNoise"]:
        """From a slice_profile.NoiseEstimate (HU) and the measured rho_z; None when no noise was found."""
        if estimate.std_hu <= 0 or not np.isfinite(estimate.std_hu) or estimate.autocovariance[0] <= 0:
            return None
        acf = np.asarray(estimate.autocovariance, dtype=np.float64)
        return cls(float(estimate.std_hu) / float(scale_hu), acf / acf[0], float(estimate.std_hu), slice_correlation)

    def overlap_share(self, sampling: np.ndarray) -> float:
        """a^2: the share of the added noise integrated by the profiles (the rest white per slice), such that
        neighbouring thick samples correlate by rho_z in all: r1 + (1 - r0) a^2 c = rho_z (r0, r1: what S leaves of
        the image's own noise at shifts 0 and 1; c: the profiles' overlap)."""
        if self.slice_correlation is None or len(sampling) < 2:
            return 1.0
        unit = sampling / np.linalg.norm(sampling, axis=1, keepdims=True)
        overlap = float(np.mean(np.einsum("mk,mk->m", unit[:-1], unit[1:])))
        added = 1.0 - self.residual_fraction(sampling)
        if overlap <= 1e-6 or added <= 1e-6:
            return 0.0
        return float(np.clip((self.slice_correlation - self.residual_fraction(sampling, 1)) / (added * overlap), 0, 1))

    def residual_fraction(self, sampling: np.ndarray, shift: int = 0) -> float:
        """mean_m s_m^T R s_m+shift: the share of the noise (co)variance that S leaves of the image's own noise."""
        first, second = (sampling, sampling) if shift == 0 else (sampling[:-shift], sampling[shift:])
        total = np.einsum("mk,mk->m", first, second)
        for lag in range(1, len(self.autocorrelation)):
            total = total + self.autocorrelation[lag] * (np.einsum("mk,mk->m", first[:, lag:], second[:, :-lag])
                                                         + np.einsum("mk,mk->m", first[:, :-lag], second[:, lag:]))
        return float(np.clip(np.mean(total), 0.0, 1.0)) if len(total) else 0.0

    def added_std(self, sampling: np.ndarray) -> float:
        """sigma_add: what to add so that each thick sample carries std sigma in all."""
        return self.std * math.sqrt(max(0.0, 1.0 - self.residual_fraction(sampling)))

    def coloured(self, shape: tuple[int, int, int], generator: torch.Generator, device: torch.device,
                 dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Unit-variance noise (count, rows, width): white along rows, the in-plane spectrum along width."""
        count, rows, width = shape
        length = 1 << max(4, math.ceil(math.log2(width + 2 * len(self.autocorrelation))))  # no wrap-around in view
        white = torch.randn((count, rows, length), generator=generator, dtype=torch.float32)
        amplitude = torch.from_numpy(np.sqrt(_spectrum(self.autocorrelation, length)[: length // 2 + 1]))
        coloured = torch.fft.irfft(torch.fft.rfft(white, dim=-1) * amplitude.to(torch.float32), n=length, dim=-1)
        return coloured[..., :width].to(device=device, dtype=dtype)

    def describe(self, added_std: float, scale_hu: float) -> dict:
        """What training added, for metrics.json."""
        return {"std_hu": round(self.std_hu, 3), "added_std_hu": round(added_std * scale_hu, 3),
                "slice_correlation": None if self.slice_correlation is None else round(self.slice_correlation, 3),
                "in_plane_autocorrelation": [round(float(v), 4) for v in self.autocorrelation]}


def _spectrum(autocorrelation: np.ndarray, length: int) -> np.ndarray:
    """The periodic spectrum (mean 1) of an autocorrelation at lags 0..K on a length-point grid, fft order."""
    lags = np.arange(len(autocorrelation))
    nu = np.fft.fftfreq(length)
    spectrum = autocorrelation[0] + 2.0 * np.sum(autocorrelation[None, 1:] * np.cos(2 * math.pi * nu[:, None]
                                                                                   * lags[None, 1:]), axis=1)
    spectrum = np.maximum(spectrum, 1e-6)
    return spectrum / spectrum.mean()


def thick_noise(sampling_rows: torch.Tensor, back_rows: torch.Tensor, white: torch.Tensor,
                per_slice: Optional[torch.Tensor] = None, share: float = 1.0) -> torch.Tensor:
    """U (a S w / |s| + b e) for a batch: sampling_rows (count, n_thick, rows) with unit-norm rows, back_rows
    (count, h, n_thick), white (count, rows, width), per_slice e (count, n_thick, width), share a^2 -> (count, h, width)."""
    thick = torch.bmm(sampling_rows, white)
    if per_slice is not None and share < 1.0:
        thick = math.sqrt(share) * thick + math.sqrt(1.0 - share) * per_slice
    return torch.bmm(back_rows, thick)


def slice_correlation(stack: np.ndarray, max_pairs: int = 8) -> Optional[float]:
    """rho_z: correlation of neighbouring slices' noise, from in-plane high-pass residuals (image minus a Gaussian
    blur of 2 pixels) where the smoothed gradient is lowest (a fifth of each image); None below 4 slices."""
    from scipy import ndimage

    stack = np.asarray(stack)
    if stack.ndim != 3 or stack.shape[0] < 4:
        return None
    firsts = np.unique(np.linspace(1, stack.shape[0] - 3, min(max_pairs, stack.shape[0] - 3)).round().astype(int))
    products, first_power, second_power = 0.0, 0.0, 0.0
    for index in firsts:
        a, b = (np.asarray(stack[i], dtype=np.float64) for i in (index, index + 1))
        smooth = ndimage.gaussian_filter(0.5 * (a + b), 2.0)
        gradient = np.hypot(ndimage.sobel(smooth, 0), ndimage.sobel(smooth, 1))
        quiet = gradient <= np.percentile(gradient, 20)
        quiet &= (a > a.min() + 1e-6) & (b > b.min() + 1e-6)  # not clipped (air at the scanner's floor)
        if quiet.sum() < 64:
            continue
        ra, rb = a - ndimage.gaussian_filter(a, 2.0), b - ndimage.gaussian_filter(b, 2.0)
        products += float(np.sum(ra[quiet] * rb[quiet]))
        first_power += float(np.sum(ra[quiet] ** 2))
        second_power += float(np.sum(rb[quiet] ** 2))
    if first_power <= 0 or second_power <= 0:
        return None
    return float(np.clip(products / math.sqrt(first_power * second_power), 0.0, 1.0))
