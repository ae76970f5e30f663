"""Noise matched in training: the degraded axis carries the noise that z carries at inference.

A thick slice b_m = s_m . f + n_m holds noise n_m of std sigma (the axial images' own noise, measured
in uniform regions: core/slice_profile.estimate_noise), correlated in-plane with the images' 1-D noise
power spectrum N and, between slices, as white noise integrated by overlapping profiles:
corr(n_m, n_m') = s_m . s_m' / (|s_m| |s_m'|). At inference z carries U n (interpolated back by U).

In training the degraded axis is an in-plane axis. S applied to an axial image averages its noise
down to a residual of variance sigma^2 mean_m(s_m^T R s_m), R the in-plane correlation along that
axis; the other axis keeps its correlation N. So the degraded input W x gets

    U (S w / |s|) * sigma_add,   sigma_add^2 = sigma^2 (1 - mean_m s_m^T R s_m),

w white along the degraded axis and coloured by N along the other one (unit variance): in total each
thick sample carries sigma, correlated between samples as overlapping slices are, and along the
image's other axis as in-plane noise is. Units: network units (HU / Normalisation.scale).
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

    @classmethod
    def from_estimate(cls, estimate, scale_hu: float) -> Optional["TrainingNoise"]:
        """From a slice_profile.NoiseEstimate (HU); None when no noise was found."""
        if estimate.std_hu <= 0 or not np.isfinite(estimate.std_hu) or estimate.autocovariance[0] <= 0:
            return None
        acf = np.asarray(estimate.autocovariance, dtype=np.float64)
        return cls(float(estimate.std_hu) / float(scale_hu), acf / acf[0], float(estimate.std_hu))

    def residual_fraction(self, sampling: np.ndarray) -> float:
        """mean_m s_m^T R s_m: the share of the noise variance that S leaves of the image's own noise."""
        lags = len(self.autocorrelation) - 1
        total = np.einsum("mk,mk->m", sampling, sampling)
        for lag in range(1, lags + 1):
            total = total + 2.0 * self.autocorrelation[lag] * np.einsum("mk,mk->m", sampling[:, lag:],
                                                                        sampling[:, :-lag])
        return float(np.clip(np.mean(total), 0.0, 1.0))

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
                "in_plane_autocorrelation": [round(float(v), 4) for v in self.autocorrelation]}


def _spectrum(autocorrelation: np.ndarray, length: int) -> np.ndarray:
    """The periodic spectrum (mean 1) of an autocorrelation at lags 0..K on a length-point grid, fft order."""
    lags = np.arange(len(autocorrelation))
    nu = np.fft.fftfreq(length)
    spectrum = autocorrelation[0] + 2.0 * np.sum(autocorrelation[None, 1:] * np.cos(2 * math.pi * nu[:, None]
                                                                                   * lags[None, 1:]), axis=1)
    spectrum = np.maximum(spectrum, 1e-6)
    return spectrum / spectrum.mean()


def thick_noise(sampling_rows: torch.Tensor, back_rows: torch.Tensor, white: torch.Tensor) -> torch.Tensor:
    """U (S w / |s|) for a batch: sampling_rows (count, n_thick, rows) with unit-norm rows, back_rows (count, h, n_thick),
    white (count, rows, width) -> (count, h, width)."""
    return torch.bmm(back_rows, torch.bmm(sampling_rows, white))
