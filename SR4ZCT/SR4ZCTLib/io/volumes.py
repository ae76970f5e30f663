"""One reader/writer dispatch for volumes with exact geometry: DICOM series (dicom.py), NRRD/NIfTI/MHA (itk.py).

Files are in LPS. Files are checked for truncation before ITK reads them; outputs are staged, verified by
reading them back and published by publish.py, so a failed run leaves no partial file.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..core.volume import Volume, check_volume_shape
from ..errors import InputError

VOLUME_SUFFIXES = (".nrrd", ".nhdr", ".nii", ".nii.gz", ".mha", ".mhd")
OUTPUT_SUFFIXES = (".nrrd", ".nii", ".nii.gz", ".mha")


def volume_suffix(path: Path) -> str:
    """The file type of path: the longest volume suffix its name ends with (.nii.gz), else its last suffix."""
    name = Path(path).name.lower()
    for suffix in sorted(VOLUME_SUFFIXES, key=len, reverse=True):
        if name.endswith(suffix):
            return suffix
    return Path(path).suffix.lower()


def read_volume(path: str | os.PathLike, allow_external_data: bool = False) -> Volume:
    """Read a DICOM series folder or a NRRD/NIfTI/MHA file into a Volume (LPS geometry), refusing truncated files.

    Warnings about the file (NIfTI qform/sform disagreement) are in `volume.extra["notes"]`.
    """
    from .dicom import read_dicom_series
    from .itk import read_image_file

    path = Path(path)
    if not path.exists():
        raise InputError(f"input {path} does not exist; give a DICOM series folder or a .nrrd/.nii.gz/.mha file")
    if path.is_dir():
        return read_dicom_series(path)
    if volume_suffix(path) not in VOLUME_SUFFIXES and volume_suffix(path) != ".dcm":
        raise InputError(
            f"cannot read {path.name}: unknown file type; give a DICOM series folder or a "
            f"{', '.join(VOLUME_SUFFIXES)} file"
        )
    if volume_suffix(path) == ".dcm":
        return read_dicom_series(path.parent)
    volume = read_image_file(path, allow_external_data)
    check_volume_shape(volume.array)
    return volume


def stage_volume(publication, volume: Volume, path: Path) -> None:
    """Write volume to path's temporary file with its exact LPS geometry and verify it by reading it back."""
    from .itk import stage_image_file

    stage_image_file(publication, volume, path)


def write_volume(volume: Volume, path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Write, verify and publish one volume (no clobber unless overwrite)."""
    from .publish import write_alone

    return write_alone(path, overwrite, lambda publication, target: stage_volume(publication, volume, target))[0]
