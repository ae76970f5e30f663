"""Reading and writing volumes with exact geometry: DICOM series (pydicom), NRRD/NIfTI/MHA (SimpleITK).

Files are in LPS. Outputs are written to a temporary file beside the target and renamed, so a
failed or cancelled run never leaves a partial file.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from .errors import InputError
from .volume import Volume, check_volume_shape

VOLUME_SUFFIXES = (".nrrd", ".nhdr", ".nii", ".nii.gz", ".mha", ".mhd")
OUTPUT_SUFFIXES = (".nrrd", ".nii", ".nii.gz", ".mha")
POSITION_TOLERANCE_MM = 0.01  # slice positions may deviate this much (plus 1 %) from a uniform grid
TILT_TOLERANCE_MM = 0.1  # the last slice may sit this far sideways of the first slice's normal, however many slices


def _suffix(path: Path) -> str:
    name = path.name.lower()
    for suffix in sorted(VOLUME_SUFFIXES, key=len, reverse=True):
        if name.endswith(suffix):
            return suffix
    return path.suffix.lower()


def read_volume(path: str | os.PathLike) -> Volume:
    """Read a DICOM series folder or a NRRD/NIfTI/MHA file into a Volume (LPS geometry)."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"input {path} does not exist; give a DICOM series folder or a .nrrd/.nii.gz/.mha file")
    if path.is_dir():
        return read_dicom_series(path)
    if _suffix(path) not in VOLUME_SUFFIXES and _suffix(path) != ".dcm":
        raise InputError(
            f"cannot read {path.name}: unknown file type; give a DICOM series folder or a "
            f"{', '.join(VOLUME_SUFFIXES)} file"
        )
    if _suffix(path) == ".dcm":
        return read_dicom_series(path.parent)
    import SimpleITK as sitk

    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as error:
        first_line = str(error).strip().splitlines()[-1] if str(error).strip() else "unreadable"
        raise InputError(f"cannot read {path.name}: {first_line}; check that the file is a complete volume") from None
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(
            f"{path.name} has {image.GetNumberOfComponentsPerPixel()} components per voxel (colour or vector image); "
            "SR4ZCT needs a scalar CT volume"
        )
    array = sitk.GetArrayFromImage(image)
    check_volume_shape(array)
    array = np.ascontiguousarray(array.astype(array.dtype.newbyteorder("=")))
    directions = np.array(image.GetDirection(), dtype=float).reshape(3, 3)
    matrix = Volume.matrix_from(image.GetOrigin(), image.GetSpacing(), directions)
    return Volume(array=array, ijk_to_world=matrix, source="file", extra={"path": str(path)})


def read_dicom_series(folder: str | os.PathLike) -> Volume:
    """Read one DICOM series: slices sorted along the slice normal, increment and SliceThickness checked.

    Refuses several series in one folder, non-uniform slice positions (missing or duplicated
    slices), mixed orientations and gantry tilt, naming the slices at fault.
    """
    import pydicom

    folder = Path(folder)
    headers = []
    for file in sorted(p for p in folder.iterdir() if p.is_file()):
        try:
            header = pydicom.dcmread(str(file), stop_before_pixels=True)
        except Exception:  # not DICOM: skip, as viewers do
            continue
        if "ImagePositionPatient" in header and "ImageOrientationPatient" in header:
            headers.append((file, header))
    if not headers:
        raise InputError(f"no DICOM images with position and orientation found in {folder}; give a CT series folder")
    series = {str(h.get("SeriesInstanceUID", "")) for _, h in headers}
    if len(series) > 1:
        raise InputError(
            f"{folder} holds {len(series)} DICOM series; put one series per folder (or load it in Slicer)"
        )
    orientation = np.array([float(v) for v in headers[0][1].ImageOrientationPatient])
    for file, header in headers:
        if not np.allclose([float(v) for v in header.ImageOrientationPatient], orientation, atol=1e-4):
            raise InputError(f"{file.name} has a different ImageOrientationPatient from the rest of the series; "
                             "the series mixes orientations (a localiser?); remove the odd images")
    row_cosine, column_cosine = orientation[:3], orientation[3:]
    normal = np.cross(row_cosine, column_cosine)
    positions = np.array([[float(v) for v in h.ImagePositionPatient] for _, h in headers])
    along = positions @ normal
    order = np.argsort(along, kind="stable")
    headers = [headers[i] for i in order]
    positions, along = positions[order], along[order]
    if len(headers) < 3:
        raise InputError(f"the series in {folder} has {len(headers)} slice(s); SR4ZCT needs at least 3 to learn from")
    steps = np.diff(along)
    increment = float(np.median(steps))
    bad = np.nonzero(np.abs(steps - increment) > POSITION_TOLERANCE_MM + 0.01 * abs(increment))[0]
    if increment <= POSITION_TOLERANCE_MM or len(bad):
        where = ", ".join(
            f"{along[i]:.2f} -> {along[i + 1]:.2f} mm ({headers[i][0].name} -> {headers[i + 1][0].name})"
            for i in (bad[:5] if len(bad) else [0])
        )
        raise InputError(
            f"slice positions are not uniform (usual step {increment:.3f} mm; irregular at {where}): a slice is "
            "missing or duplicated; re-export the complete series or resample it to a uniform grid first"
        )
    shift = positions[-1] - positions[0] - (along[-1] - along[0]) * normal
    if np.linalg.norm(shift) > TILT_TOLERANCE_MM:
        tilt = np.degrees(np.arctan2(np.linalg.norm(shift), along[-1] - along[0]))
        raise InputError(
            f"the slices are sheared by {tilt:.2f} degrees (gantry tilt); correct the tilt first "
            "(Slicer's DICOM module does it on loading with 'Acquisition geometry regularization')"
        )
    thickness = _slice_thickness(headers)
    pixel_spacing = [float(v) for v in headers[0][1].PixelSpacing]
    array = _read_pixels([file for file, _ in headers])
    directions = np.stack([row_cosine, column_cosine, normal], axis=1)
    spacing = (pixel_spacing[1], pixel_spacing[0], increment)
    matrix = Volume.matrix_from(positions[0], spacing, directions)
    return Volume(array=array, ijk_to_world=matrix, slice_thickness_mm=thickness, source="dicom", slice_axis=2,
                  extra={"path": str(folder)})


def _slice_thickness(headers) -> Optional[float]:
    values = {round(float(h.SliceThickness), 4) for _, h in headers if h.get("SliceThickness") not in (None, "")}
    values.discard(0.0)
    if len(values) > 1:
        raise InputError(f"SliceThickness differs between slices ({sorted(values)} mm); split the series by thickness")
    return values.pop() if values else None


def _read_pixels(files: list[Path]) -> np.ndarray:
    import pydicom

    slices = []
    for file in files:
        dataset = pydicom.dcmread(str(file))
        try:
            pixels = dataset.pixel_array
        except Exception as error:  # compressed transfer syntax without a decoder, etc.
            raise InputError(
                f"cannot decode the pixels of {file.name} ({error.__class__.__name__}: {error}); "
                "install a decoder (pip install pylibjpeg pylibjpeg-libjpeg) or convert the series to NRRD"
            ) from None
        slope = float(dataset.get("RescaleSlope", 1) or 1)
        intercept = float(dataset.get("RescaleIntercept", 0) or 0)
        slices.append((pixels, slope, intercept))
    integral = all(s == 1.0 and i == int(i) for _, s, i in slices)
    dtype = np.int16 if integral else np.float32
    array = np.empty((len(slices),) + slices[0][0].shape, dtype=dtype)
    for index, (pixels, slope, intercept) in enumerate(slices):
        values = pixels.astype(np.float64) * slope + intercept
        if integral and (values.min() < -32768 or values.max() > 32767):
            array = array.astype(np.int32)
        array[index] = values
    return array


def check_output_path(output: str | os.PathLike, inputs: list[str | os.PathLike], overwrite: bool = False) -> Path:
    """Refuse an output that is the input, exists (without overwrite), has an unknown type, or cannot be written."""
    output = Path(output)
    if _suffix(output) not in OUTPUT_SUFFIXES:
        raise InputError(f"output {output.name}: unknown type; end the name with one of {', '.join(OUTPUT_SUFFIXES)}")
    for source in inputs:
        source = Path(source)
        inside = source.is_dir() and output.resolve().parent == source.resolve()
        if output.resolve() == source.resolve() or inside or (output.exists() and os.path.samefile(output, source)):
            raise InputError(f"output {output} would overwrite the input; choose another output path")
    if output.exists() and not overwrite:
        raise InputError(f"output {output} exists; choose another path or pass --overwrite")
    parent = output.resolve().parent
    if not parent.is_dir():
        raise InputError(f"output folder {parent} does not exist; create it first")
    if not os.access(parent, os.W_OK):
        raise InputError(f"output folder {parent} is not writable; choose another output path")
    return output


def write_volume(volume: Volume, path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Write atomically (temporary file, then rename) with the volume's exact LPS geometry."""
    import SimpleITK as sitk

    path = Path(path)
    if path.exists() and not overwrite:
        raise InputError(f"output {path} exists; choose another path or pass --overwrite")
    image = sitk.GetImageFromArray(np.ascontiguousarray(volume.array))
    image.SetSpacing([float(s) for s in volume.spacing])
    image.SetOrigin([float(v) for v in volume.origin])
    image.SetDirection([float(v) for v in volume.directions.ravel()])
    return write_atomically(path, lambda name: sitk.WriteImage(image, name, useCompression=True))


def write_atomically(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """Call write(temporary name) beside path, then rename into place; on any failure remove the temporary."""
    path = Path(path)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".partial{_suffix(path)}",
                                         dir=path.resolve().parent)
    os.close(handle)
    try:
        write(temporary)
        publish(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise
    return path


def publish(temporary: str | os.PathLike, path: str | os.PathLike) -> None:
    """Give a finished temporary file the usual permissions (mkstemp makes it 0600) and rename it into place."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(temporary, 0o666 & ~mask)
    os.replace(temporary, path)
