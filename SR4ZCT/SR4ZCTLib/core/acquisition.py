"""Through-plane acquisition parameters: slice thickness, increment, overlap, slice profile."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

from ..errors import InputError
from ..options import PROFILES, RANGES


CONTIGUOUS_MM = 1e-3  # a gap or overlap this small is rounding (DICOM positions to 4 decimals), not a gap
GAUSSIAN_FWTM_RATIO = math.sqrt(math.log(10.0) / math.log(2.0))  # FWTM / FWHM of a Gaussian, 1.8226
BLURRED_BOX_FWTM_RATIO = 1.7  # FWTM / FWHM of "blurred-box" when not measured: published helical CT, 1.55-1.8


@dataclass(frozen=True)
class Acquisition:
    """How the thick slices were made along the through-plane axis.

    thickness_mm is the FWHM of the slice profile (r_z), increment_mm the distance between
    slice centres (d). overlap_mm = thickness - increment; negative means a gap. fwtm_mm, the full width
    at tenth maximum, sets the shape of a "blurred-box" profile (default 1.7 x thickness); a box has
    FWTM = FWHM, a Gaussian 1.82 x FWHM.
    """

    thickness_mm: float
    increment_mm: float
    profile: str = "box"
    fwtm_mm: Optional[float] = None

    def __post_init__(self) -> None:
        for name, value in (("thickness", self.thickness_mm), ("increment", self.increment_mm)):
            if value is None or not math.isfinite(float(value)):
                raise InputError(f"slice {name} is {value!r}; give a finite number of millimetres (--{name} MM)")
            if float(value) <= 0:
                raise InputError(
                    f"slice {name} must be positive, got {float(value):g} mm; "
                    f"check --{name} (an overlap at least as large as the thickness implies a zero or negative increment)"
                )
            low, high = RANGES[name]
            if not low <= float(value) <= high:
                raise InputError(f"slice {name} {float(value):g} mm is outside {low:g}..{high:g} mm; check the "
                                 f"DICOM header, the volume's slice spacing, or --{name}")
        if self.profile not in PROFILES:
            raise InputError(f"unknown slice profile {self.profile!r}; choose one of {', '.join(PROFILES)}")
        if self.fwtm_mm is not None:
            ratio = float(self.fwtm_mm) / float(self.thickness_mm)
            if self.profile != "blurred-box" or not math.isfinite(ratio) or not 1.0 <= ratio <= GAUSSIAN_FWTM_RATIO:
                raise InputError(f"a full width at tenth maximum of {self.fwtm_mm!r} mm does not fit a "
                                 f"{self.profile} profile of FWHM {float(self.thickness_mm):g} mm; a blurred box "
                                 f"has 1 to {GAUSSIAN_FWTM_RATIO:.4f} x its FWHM")

    @property
    def fwtm_ratio(self) -> float:
        """FWTM / FWHM: 1 for a box, 1.8226 for a Gaussian, the given or default shape of a blurred box."""
        if self.profile == "box":
            return 1.0
        if self.profile == "gaussian":
            return GAUSSIAN_FWTM_RATIO
        return BLURRED_BOX_FWTM_RATIO if self.fwtm_mm is None else float(self.fwtm_mm) / float(self.thickness_mm)

    def scaled(self, factor: float) -> "Acquisition":
        """The same profile shape and increment, its widths (FWHM, FWTM) times `factor`, kept within the thickness
        range (a training variation of a valid acquisition must not fail as if the header were wrong)."""
        low, high = RANGES["thickness"]
        factor = min(max(float(factor), low / self.thickness_mm), high / self.thickness_mm)
        return Acquisition(self.thickness_mm * factor, self.increment_mm, self.profile,
                           None if self.fwtm_mm is None else self.fwtm_mm * factor)

    @property
    def overlap_mm(self) -> float:
        """Thickness minus increment: positive overlap, negative gap."""
        return float(self.thickness_mm) - float(self.increment_mm)

    @classmethod
    def from_overlap(cls, thickness_mm: float, overlap_mm: float, profile: str = "box") -> "Acquisition":
        """Build from thickness and overlap (as a DICOM viewer reports them)."""
        if overlap_mm >= thickness_mm:
            raise InputError(
                f"overlap {overlap_mm:g} mm is not smaller than the thickness {thickness_mm:g} mm, "
                "which would make the slice increment zero or negative; check the overlap"
            )
        return cls(thickness_mm, thickness_mm - overlap_mm, profile)

    def warnings_for(self, in_plane_spacing_mm: float) -> list[str]:
        """Plain-language warnings about settings that work but deserve a second look."""
        notes = []
        if self.overlap_mm < -CONTIGUOUS_MM:
            notes.append(
                f"slices have a gap of {-self.overlap_mm:g} mm (increment {self.increment_mm:g} mm > thickness "
                f"{self.thickness_mm:g} mm): anatomy in the gaps was never measured and cannot be recovered"
            )
        if max(self.thickness_mm, self.increment_mm) <= in_plane_spacing_mm * 1.05:
            notes.append(
                f"through-plane resolution (thickness {self.thickness_mm:g} mm, increment {self.increment_mm:g} mm) "
                f"is not coarser than the in-plane spacing {in_plane_spacing_mm:g} mm: enhancement has little or "
                "nothing to recover; check the numbers"
            )
        return notes

    def describe(self) -> str:
        kind = "gap" if self.overlap_mm < -CONTIGUOUS_MM else "overlap"
        size = abs(self.overlap_mm) if abs(self.overlap_mm) > CONTIGUOUS_MM else 0.0
        return (
            f"thickness {self.thickness_mm:g} mm, increment {self.increment_mm:g} mm, "
            f"{kind} {size:g} mm, {self.profile} profile"
            + (f" (FWTM {self.fwtm_ratio * float(self.thickness_mm):.3g} mm)" if self.profile == "blurred-box" else "")
        )
