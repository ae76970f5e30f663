"""DICOM series in: one scan of a folder's headers, the series read with exact geometry, the source of a derived series.

pydicom reads the headers (pixels only for the volume). Files that are not DICOM are skipped, as viewers do;
a file with a DICOM preamble that cannot be read is refused, naming it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from ..core.volume import Volume
from ..errors import InputError, check_cancelled

POSITION_TOLERANCE_MM = 0.01  # slice positions may deviate this much (plus 1 %) from a uniform grid
TILT_TOLERANCE_MM = 0.1  # the last slice may sit this far sideways of the first slice's normal, however many slices


def is_dicom_input(path: Path) -> bool:
    """A DICOM series given as its folder or as one of its .dcm files."""
    return Path(path).is_dir() or Path(path).name.lower().endswith(".dcm")


def has_dicm_preamble(path: Path) -> bool:
    """True when the file carries the DICOM Part 10 marker ("DICM" after the 128-byte preamble)."""
    with open(path, "rb") as handle:
        return handle.read(132)[128:] == b"DICM"


def scan_folder(folder: Path, refuse_damaged: bool = False) -> list:
    """(file, header without pixels) of every DICOM file in folder, by name; with refuse_damaged, a file that has
    the DICOM marker but cannot be read is an `error:` naming it (else it is skipped like any non-DICOM file)."""
    import pydicom

    found = []
    for file in sorted(p for p in Path(folder).iterdir() if p.is_file()):
        try:
            found.append((file, pydicom.dcmread(str(file), stop_before_pixels=True)))
        except Exception as error:
            check_cancelled()  # pydicom turns a cancel inside a sequence into OSError: not a damaged file
            if refuse_damaged and has_dicm_preamble(file):
                raise InputError(f"{file.name} is a damaged DICOM file ({error.__class__.__name__}); "
                                 "remove it or export the series again") from None
    return found


def is_image(header) -> bool:
    """A DICOM image (it has rows or a position), not a presentation state, report or DICOMDIR."""
    return "Rows" in header or "ImagePositionPatient" in header


def _refuse_multi_frame(file: Path, header) -> None:
    """Multi-frame images (Enhanced CT, legacy multi-frame) are refused, saying so and what to do."""
    frames = header.get("NumberOfFrames", 1)
    try:
        frames = int(frames or 1)
    except (TypeError, ValueError):
        frames = 1
    kind = getattr(header.get("SOPClassUID", ""), "name", "")
    if frames > 1 or "Enhanced" in kind or "Multi-frame" in kind:
        raise InputError(f"{file.name} is a multi-frame image ({frames} frame{'s' if frames != 1 else ''}"
                         f"{', ' + kind if kind else ''}); multi-frame DICOM is not supported: export the series as "
                         "single-frame images (one file per slice), or convert it to NRRD")


def read_dicom_series(folder: str | os.PathLike) -> Volume:
    """Read one DICOM series: slices sorted along the slice normal, increment and SliceThickness checked.

    Refuses several series in one folder, non-uniform slice positions (missing or duplicated
    slices), mixed orientations, gantry tilt and header oddities (damaged files, missing or
    malformed position, orientation, spacing, size, colour, thickness or rescale), naming the files at fault.
    """
    folder = Path(folder)
    headers = _image_headers(folder)
    series = {str(h.get("SeriesInstanceUID", "")) for _, h in headers}
    if len(series) > 1:
        raise InputError(
            f"{folder} holds {len(series)} DICOM series; put one series per folder (or load it in Slicer)"
        )
    for file, header in headers:
        _refuse_multi_frame(file, header)
        if "ImagePositionPatient" not in header or "ImageOrientationPatient" not in header:
            raise InputError(f"{file.name} is an image without ImagePositionPatient/ImageOrientationPatient, so it "
                             "cannot be placed in the series; remove it from the folder or export the series again")
    orientation = _numbers(headers[0], "ImageOrientationPatient", 6)
    for file, header in headers:
        if not np.allclose(_numbers((file, header), "ImageOrientationPatient", 6), orientation, atol=1e-4):
            raise InputError(f"{file.name} has a different ImageOrientationPatient from the rest of the series; "
                             "the series mixes orientations (a localiser?); remove the odd images")
    row_cosine, column_cosine = orientation[:3], orientation[3:]
    if (abs(np.linalg.norm(row_cosine) - 1) > 1e-3 or abs(np.linalg.norm(column_cosine) - 1) > 1e-3
            or abs(float(row_cosine @ column_cosine)) > 1e-3):
        raise InputError(f"ImageOrientationPatient of {headers[0][0].name} ({', '.join(f'{v:g}' for v in orientation)}) "
                         "is not two perpendicular unit vectors; the header is damaged: export the series again")
    normal = np.cross(row_cosine, column_cosine)
    positions = np.array([_numbers(item, "ImagePositionPatient", 3) for item in headers])
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
    pixel_spacing = _check_image_format(headers)
    thickness = _slice_thickness(headers)
    array = _read_pixels(headers, _rescales(headers))
    directions = np.stack([row_cosine, column_cosine, normal], axis=1)
    spacing = (pixel_spacing[1], pixel_spacing[0], increment)
    matrix = Volume.matrix_from(positions[0], spacing, directions)
    return Volume(array=array, ijk_to_world=matrix, slice_thickness_mm=thickness, source="dicom", slice_axis=2,
                  extra={"path": str(folder)})


def _image_headers(folder: Path) -> list:
    """(file, header) of every DICOM image in folder; other files are skipped, damaged DICOM files refused."""
    headers = []
    for file, header in scan_folder(folder, refuse_damaged=True):
        if is_image(header):
            headers.append((file, header))
        elif "Image Storage" in getattr(header.get("SOPClassUID", getattr(header.get("file_meta", None), "MediaStorageSOPClassUID", None)), "name", ""):
            raise InputError(f"{file.name} is a damaged DICOM file (an image without rows or position: truncated?); "
                             "remove it or export the series again")
    if not headers:
        raise InputError(f"no DICOM images with position and orientation found in {folder}; give a CT series folder")
    return headers


def _numbers(item, keyword: str, count: int) -> np.ndarray:
    """A multi-valued numeric DICOM attribute as `count` finite floats, or an `error:` naming the file."""
    file, header = item
    raw = header.get(keyword)
    try:
        values = np.array([float(v) for v in (raw if raw is not None and not isinstance(raw, (str, bytes)) else [raw])])
    except (TypeError, ValueError):
        values = np.array([])
    if values.shape != (count,) or not np.all(np.isfinite(values)):
        raise InputError(f"{keyword} of {file.name} is {raw!r}, not {count} numbers; the header is damaged: "
                         "remove the file or export the series again")
    return values


def _check_image_format(headers) -> list[float]:
    """Same size, one sample per pixel and the same positive PixelSpacing on every slice; returns the spacing."""
    first_file, first = headers[0]
    size = (first.get("Rows"), first.get("Columns"))
    spacing = _numbers(headers[0], "PixelSpacing", 2)
    for file, header in headers:
        if int(header.get("SamplesPerPixel", 1) or 1) != 1:
            raise InputError(f"{file.name} is a colour image ({header.get('PhotometricInterpretation', 'RGB')}); "
                             "SR4ZCT needs a greyscale CT series: remove it from the folder")
        if (header.get("Rows"), header.get("Columns")) != size:
            raise InputError(f"{file.name} is {header.get('Rows')} x {header.get('Columns')} pixels but "
                             f"{first_file.name} is {size[0]} x {size[1]}; remove the odd image from the folder")
        if not np.allclose(_numbers((file, header), "PixelSpacing", 2), spacing, rtol=1e-4):
            raise InputError(f"PixelSpacing of {file.name} differs from {first_file.name}; the folder mixes series: "
                             "remove the odd images")
    if min(spacing) <= 0:
        raise InputError(f"PixelSpacing of {first_file.name} is {list(spacing)}; it must be positive: fix the header")
    return [float(v) for v in spacing]


def _slice_thickness(headers) -> Optional[float]:
    values = set()
    for file, header in headers:
        try:
            raw = header.get("SliceThickness")
            value = float("nan") if raw in (None, "") else float(raw)
        except (TypeError, ValueError):
            raw, value = header["SliceThickness"].value if "SliceThickness" in header else "?", float("nan")
        if raw in (None, ""):
            continue
        if not np.isfinite(value) or value < 0:
            raise InputError(f"SliceThickness of {file.name} is {str(raw)!r}, not a positive number of millimetres; "
                             "fix the DICOM header (or convert the series to NRRD and give --thickness)")
        values.add(round(value, 4))
    values.discard(0.0)
    if len(values) > 1:
        raise InputError(f"SliceThickness differs between slices ({sorted(values)} mm); split the series by thickness")
    return values.pop() if values else None


def _rescales(headers) -> list[tuple[float, float]]:
    """(slope, intercept) per slice: refused when missing on some slices, on a CT, or when the slope is 0."""
    present = ["RescaleSlope" in h and "RescaleIntercept" in h for _, h in headers]
    if not all(present):
        missing = [file.name for (file, _), ok in zip(headers, present) if not ok]
        if any(present) or str(headers[0][1].get("Modality", "")).upper() == "CT":
            raise InputError(f"RescaleSlope/RescaleIntercept missing in {len(missing)} file(s) ({', '.join(missing[:5])}"
                             f"{' ...' if len(missing) > 5 else ''}); without them those values are not in HU: "
                             "export the series again with its rescale tags")
        return [(1.0, 0.0)] * len(headers)
    result = []
    for file, header in headers:
        try:
            slope, intercept = float(header.RescaleSlope), float(header.RescaleIntercept)
        except (TypeError, ValueError):
            slope = intercept = float("nan")
        if not (np.isfinite(slope) and np.isfinite(intercept)) or slope == 0:
            raise InputError(f"{file.name} has RescaleSlope {header.RescaleSlope!r} and RescaleIntercept "
                             f"{header.RescaleIntercept!r}; the slope must be a non-zero number: fix the header")
        result.append((slope, intercept))
    return result


def _read_pixels(headers, rescales: list[tuple[float, float]]) -> np.ndarray:
    import pydicom
    from pydicom.uid import UncompressedTransferSyntaxes

    slices = []
    for (file, header), (slope, intercept) in zip(headers, rescales):
        dataset = pydicom.dcmread(str(file))
        try:
            pixels = dataset.pixel_array
        except Exception as error:
            syntax = getattr(getattr(dataset, "file_meta", None), "TransferSyntaxUID", None)
            if syntax is None or syntax in UncompressedTransferSyntaxes or "PixelData" not in dataset:
                raise InputError(f"the pixel data of {file.name} is missing or truncated ({error}); "
                                 "remove the file or export the series again") from None
            reason = (str(error).strip().splitlines() or [""])[0].rstrip(": ")  # one line, not the plugin list
            raise InputError(
                f"cannot decode the pixels of {file.name} ({error.__class__.__name__}: {reason}); "
                "install a decoder (pip install pylibjpeg pylibjpeg-libjpeg) or convert the series to NRRD"
            ) from None
        if pixels.shape != (header.Rows, header.Columns):
            raise InputError(f"{file.name} holds pixels of shape {pixels.shape}, not one {header.Rows} x "
                             f"{header.Columns} image; SR4ZCT reads single-frame greyscale CT slices")
        slices.append((pixels, slope, intercept))
    integral = all(s == 1.0 and i == int(i) for _, s, i in slices)
    dtype = np.int16 if integral else np.float32
    array = np.empty((len(slices),) + slices[0][0].shape, dtype=dtype)
    for index, (pixels, slope, intercept) in enumerate(slices):
        values = pixels.astype(np.float64) * slope + intercept
        if integral and array.dtype == np.int16 and (values.min() < -32768 or values.max() > 32767):
            array = array.astype(np.int32)
        array[index] = values
    return array


@dataclass
class SourceSeries:
    """What the derived series copies from its source (or template) series."""

    header: object  # pydicom Dataset of one source slice (no pixels)
    instances: list[tuple[str, str, float]] = field(default_factory=list)  # (SOP class, SOP instance, along normal)
    is_template: bool = False  # a template gives patient and study only: no frame of reference, no references
    folder: str = ""


def read_source_series(folder: str | os.PathLike, is_template: bool = False) -> SourceSeries:
    """Headers of one DICOM series folder (sorted along the slice normal); refuses anything else."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"DICOM series folder {folder} does not exist; give the folder of a DICOM series")
    headers = [header for _, header in scan_folder(folder)
               if is_image(header) and "SOPInstanceUID" in header and "StudyInstanceUID" in header]
    if not headers:
        raise InputError(f"no DICOM images with study and instance UIDs in {folder}; give a DICOM series folder")
    if len({str(h.get("SeriesInstanceUID", "")) for h in headers}) > 1:
        raise InputError(f"{folder} holds several DICOM series; give a folder with one series")
    return source_from_headers(headers, is_template, str(folder))


def source_from_headers(headers: list, is_template: bool = False, folder: str = "") -> SourceSeries:
    """The source series of these slice headers (one series), sorted along the slice normal."""
    instances = [(str(h.SOPClassUID), str(h.SOPInstanceUID), _along_normal(h)) for h in headers]
    instances.sort(key=lambda item: item[2])
    return SourceSeries(headers[0], instances, is_template, folder)


def _along_normal(header) -> float:
    if "ImagePositionPatient" not in header or "ImageOrientationPatient" not in header:
        return 0.0
    orientation = np.array([float(v) for v in header.ImageOrientationPatient])
    return float(np.array([float(v) for v in header.ImagePositionPatient]) @ np.cross(orientation[:3], orientation[3:]))


def source_for(input_path: str | os.PathLike, template: Optional[str]) -> SourceSeries:
    """The series the output copies from: the DICOM input itself, else the template; refuses neither."""
    path = Path(input_path)
    if not path.exists():
        raise InputError(f"input {path} does not exist; give a DICOM series folder or a .nrrd/.nii.gz/.mha file")
    if is_dicom_input(path):
        return read_source_series(path if path.is_dir() else path.parent)
    if template is not None and Path(template).is_file():
        raise InputError(f"--dicom-template {template} is a file; give the folder of a DICOM series (e.g. "
                         f"{Path(template).parent})")
    if template is None:
        raise InputError(f"{path.name} is not DICOM, so it has no patient or study to put the DICOM series in; "
                         "give --dicom-template DIR (a DICOM series of the same patient and study)")
    return read_source_series(template, is_template=True)
