"""A CT volume with its exact geometry, and the acquisition read off that geometry.

Arrays are (k, j, i) = (slice, row, column), as in Slicer and SimpleITK. Geometry is one 4x4
IJK-to-world matrix (world = LPS for files, RAS inside Slicer): spacing, directions and origin
all derive from it, so nothing can drift apart.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from .acquisition import Acquisition
from ..errors import InputError
from ..options import DEFAULT_PROFILE

AXIS_NAMES = ("i", "j", "k")
ORTHOGONALITY_TOLERANCE = 1e-3  # cosine between axes above which a grid counts as sheared


@dataclass
class Volume:
    """Voxels (k, j, i) plus their IJK-to-world matrix and what the source file said about them."""

    array: np.ndarray
    ijk_to_world: np.ndarray
    slice_thickness_mm: Optional[float] = None  # DICOM SliceThickness, or the thickness a `simulate` header recorded
    source: str = "file"  # "dicom", "file" or "mrml"
    slice_axis: Optional[int] = None  # ijk axis the slices were stacked along, when the source says so
    extra: dict = field(default_factory=dict)
    recorded_acquisition: Optional[Acquisition] = None  # what `sr4zct simulate` made, as its file's header says

    @property
    def spacing(self) -> np.ndarray:
        """Spacing along (i, j, k) in mm."""
        return np.linalg.norm(self.ijk_to_world[:3, :3], axis=0)

    @property
    def directions(self) -> np.ndarray:
        """Unit column vectors of the i, j, k axes in world coordinates (3 x 3)."""
        return self.ijk_to_world[:3, :3] / self.spacing

    @property
    def origin(self) -> np.ndarray:
        return self.ijk_to_world[:3, 3].copy()

    @staticmethod
    def matrix_from(origin, spacing, directions) -> np.ndarray:
        """IJK-to-world from origin, spacing (i, j, k) and direction columns."""
        matrix = np.eye(4)
        matrix[:3, :3] = np.asarray(directions, dtype=float) * np.asarray(spacing, dtype=float)
        matrix[:3, 3] = origin
        return matrix


@dataclass(frozen=True)
class ThroughPlaneGeometry:
    """Where the thick slices are and how they were made, with the source of each number."""

    axis: int  # ijk axis index (0 = i, 1 = j, 2 = k)
    axis_source: str  # "dicom", "geometry" (coarsest spacing) or "default"
    in_plane_spacing_mm: tuple[float, float]
    acquisition: Acquisition
    increment_source: str  # "geometry", "user" or "simulate header"
    thickness_source: str  # "dicom", "user", "simulate header" or "assumed"

    @property
    def array_axis(self) -> int:
        """The numpy axis of the (k, j, i) array that runs through-plane."""
        return 2 - self.axis

    def as_dict(self, volume: Volume) -> dict:
        return {
            "shape": [int(n) for n in volume.array.shape],
            "spacing_mm": [float(s) for s in volume.spacing],
            "through_plane_axis": AXIS_NAMES[self.axis],
            "through_plane_axis_source": self.axis_source,
            "slice_normal": [float(v) for v in volume.directions[:, self.axis]],
            "increment_mm": float(self.acquisition.increment_mm),
            "increment_source": self.increment_source,
            "thickness_mm": float(self.acquisition.thickness_mm),
            "thickness_source": self.thickness_source,
            "overlap_mm": float(self.acquisition.overlap_mm),
            "profile": self.acquisition.profile,
        }


def check_volume_shape(array: np.ndarray) -> None:
    """Refuse 2D images and stacks too thin to learn from."""
    if array.ndim != 3:
        raise InputError(
            f"input is not a 3D volume (it has {array.ndim} dimension(s), shape {tuple(array.shape)}); "
            "load the whole CT series, not a single image"
        )
    if min(array.shape) < 3:
        raise InputError(
            f"input has too few slices to learn from (shape {tuple(array.shape)}); "
            "SR4ZCT needs a volume with at least 3 samples along every axis"
        )


def check_orthogonal(volume: Volume) -> None:
    """Refuse sheared grids (e.g. gantry tilt kept in the geometry): the slice model assumes orthogonal axes."""
    directions = volume.directions
    for a, b in ((0, 1), (0, 2), (1, 2)):
        cosine = abs(float(directions[:, a] @ directions[:, b]))
        if cosine > ORTHOGONALITY_TOLERANCE:
            angle = 90.0 - math.degrees(math.acos(min(cosine, 1.0)))
            raise InputError(
                f"the voxel grid is sheared by {angle:.2f} degrees between axes {AXIS_NAMES[a]} and {AXIS_NAMES[b]} "
                "(gantry tilt?); resample the series onto an orthogonal grid first "
                "(e.g. Slicer's DICOM gantry-tilt correction or Resample Scalar Volume)"
            )


def through_plane_axis(volume: Volume) -> tuple[int, str]:
    """The ijk axis along which the slices were acquired, and how we know.

    DICOM series: the stacking axis (the slice normal). Other files carry no such tag, so take the
    axis with clearly the coarsest spacing, else k (the stacking axis of nearly every CT file).
    """
    if volume.slice_axis is not None:
        return volume.slice_axis, "dicom"
    spacing = volume.spacing
    coarsest = int(np.argmax(spacing))
    others = np.delete(spacing, coarsest)
    if spacing[coarsest] > 1.01 * others.max():
        return coarsest, "geometry"
    return 2, "default"


def read_through_plane_geometry(
    volume: Volume,
    thickness_mm: Optional[float] = None,
    increment_mm: Optional[float] = None,
    profile: Optional[str] = None,
) -> tuple[ThroughPlaneGeometry, list[str]]:
    """Through-plane axis, increment and thickness from the volume and the user's overrides, plus warnings.

    A file `sr4zct simulate` wrote records its thickness, increment and profile: they count as given
    ("simulate header"); the user's numbers still win. Profile None: the recorded one, else DEFAULT_PROFILE.
    """
    check_volume_shape(volume.array)
    check_orthogonal(volume)
    axis, axis_source = through_plane_axis(volume)
    spacing = volume.spacing
    in_plane = tuple(float(s) for a, s in enumerate(spacing) if a != axis)
    notes: list[str] = []
    recorded = volume.recorded_acquisition
    if increment_mm is not None:
        increment, increment_source = float(increment_mm), "user"
    elif recorded is not None and abs(recorded.increment_mm - spacing[axis]) <= 1e-3 * spacing[axis]:
        increment, increment_source = float(recorded.increment_mm), "simulate header"
    else:
        increment, increment_source = float(spacing[axis]), "geometry"
        if recorded is not None:
            notes.append(f"the header records an increment of {recorded.increment_mm:g} mm but the slices are "
                         f"{spacing[axis]:g} mm apart (resampled since?); using {spacing[axis]:g} mm")
    known_thickness = "simulate header" if recorded is not None else "dicom"
    if thickness_mm is not None:
        thickness, thickness_source = float(thickness_mm), "user"
        if volume.slice_thickness_mm and _far_apart(thickness, volume.slice_thickness_mm):
            notes.append(
                f"thickness {thickness:g} mm is far from the {_THICKNESS_LABEL[known_thickness]} "
                f"{volume.slice_thickness_mm:g} mm; "
                "a wrong thickness costs image quality: check the number"
            )
    elif volume.slice_thickness_mm:
        thickness, thickness_source = float(volume.slice_thickness_mm), known_thickness
    else:
        thickness, thickness_source = increment, "assumed"
        notes.append(
            f"slice thickness unknown (no DICOM SliceThickness); assuming it equals the increment, {increment:g} mm. "
            "Give --thickness for the best result"
        )
    if profile == "auto":  # estimated from the voxels when the run starts (enhance.estimated_profile)
        profile = None
    from_header = recorded is not None and not profile and thickness_source == "simulate header"
    acquisition = Acquisition(thickness, increment, profile or (recorded.profile if recorded else DEFAULT_PROFILE),
                              recorded.fwtm_mm if from_header else None)
    if abs(in_plane[0] - in_plane[1]) > 0.02 * min(in_plane):
        notes.append(
            f"in-plane spacing is anisotropic ({in_plane[0]:g} x {in_plane[1]:g} mm); training resamples the coarser "
            f"axis to {min(in_plane):g} mm, the output's through-plane grid, and learns from the resampled images"
        )
    notes.extend(acquisition.warnings_for(min(in_plane)))
    geometry = ThroughPlaneGeometry(axis, axis_source, in_plane, acquisition, increment_source, thickness_source)
    return geometry, notes


_THICKNESS_LABEL = {"dicom": "DICOM SliceThickness", "simulate header": "thickness the simulate header records"}


def _far_apart(a: float, b: float) -> bool:
    return abs(a - b) > max(0.25, 0.2 * b)


def enhanced_matrix(volume: Volume, axis: int, target_spacing_mm: float) -> np.ndarray:
    """IJK-to-world of the output: same origin, directions and in-plane grid; new through-plane spacing."""
    matrix = volume.ijk_to_world.copy()
    matrix[:3, axis] = volume.directions[:, axis] * target_spacing_mm
    return matrix
