"""Intensity checks and the fixed mapping from Hounsfield units to network values.

The network sees HU / 1000 (air -1, water 0, dense bone 1..3): fixed, so one metal voxel cannot
rescale the whole volume as a min-max normalisation would. Inputs that are not CT in HU are
refused unless the user says otherwise; then a robust percentile mapping is used and recorded.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from ..errors import InputError

HU_SCALE = 1000.0
CT_RANGE_HU = (-4096.0, 32767.0)  # what a CT volume in HU can hold, outside-FOV padding and metal included
PSNR_WINDOW_HU = (-1024.0, 3071.0)  # fixed window mapped to [0, 1] for every PSNR we report
LABEL_MAP_MAX_VALUES = 64


@dataclass(frozen=True)
class Normalisation:
    """network value = (voxel - offset) / scale."""

    offset: float = 0.0
    scale: float = HU_SCALE
    kind: str = "hu"

    def forward(self, values):
        return (values - self.offset) / self.scale

    def inverse(self, values):
        return values * self.scale + self.offset

    def as_dict(self) -> dict:
        return asdict(self)


def _sample(array: np.ndarray, limit: int = 2_000_000) -> np.ndarray:
    flat = array.reshape(-1)
    step = max(1, flat.size // limit)
    return flat[::step]


def check_intensities(array: np.ndarray, allow_non_hu: bool = False) -> Normalisation:
    """Refuse NaN/Inf, label maps and values that are not CT in HU; return the mapping to use."""
    if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise InputError(f"voxel type {array.dtype} is not a number type; SR4ZCT needs a scalar CT volume")
    if np.issubdtype(array.dtype, np.floating):
        bad = int(np.count_nonzero(~np.isfinite(array)))
        if bad:
            raise InputError(
                f"{bad} voxel(s) are NaN or infinite; replace them (e.g. with -1024 HU) before enhancing"
            )
    low, high = float(array.min()), float(array.max())
    if allow_non_hu:
        sample = _sample(array).astype(np.float64)
        p_low, p_high = np.percentile(sample, [0.5, 99.5])
        scale = max(float(p_high - p_low) / 2.0, 1e-6)
        return Normalisation(offset=float(p_low + p_high) / 2.0, scale=scale, kind="percentile")
    sample = _sample(array)
    if np.issubdtype(array.dtype, np.integer) and low >= 0 and len(np.unique(sample)) <= LABEL_MAP_MAX_VALUES:
        raise InputError(
            f"the volume holds only {len(np.unique(sample))} distinct values from {low:g} to {high:g}: it looks like a "
            "label map or mask, not a CT image; select the CT volume"
        )
    if low < CT_RANGE_HU[0] or high > CT_RANGE_HU[1]:
        raise InputError(
            f"values range from {low:g} to {high:g}, outside CT Hounsfield units ({CT_RANGE_HU[0]:g}..{CT_RANGE_HU[1]:g}); "
            "this does not look like CT in HU. Pass --allow-non-hu to enhance it anyway with a percentile mapping"
        )
    if low >= 0:
        raise InputError(
            f"no voxel is below 0 (range {low:g}..{high:g}), so there is no air at about -1000 HU: this looks like CT "
            "stored without its rescale intercept, or not CT at all (MR?). Convert to HU first, or pass --allow-non-hu"
        )
    return Normalisation()


def psnr(estimate: np.ndarray, truth: np.ndarray, window_hu: tuple[float, float] = PSNR_WINDOW_HU) -> float:
    """PSNR in dB of HU images after mapping the window to [0, 1] (values outside are clipped)."""
    lo, hi = window_hu
    a = np.clip((np.asarray(estimate, dtype=np.float64) - lo) / (hi - lo), 0.0, 1.0)
    b = np.clip((np.asarray(truth, dtype=np.float64) - lo) / (hi - lo), 0.0, 1.0)
    mse = float(np.mean((a - b) ** 2))
    return float("inf") if mse == 0 else 10.0 * np.log10(1.0 / mse)
