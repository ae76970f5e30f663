"""The result as a derived DICOM CT series: one file per output slice, published as a whole folder.

Patient, study and FrameOfReferenceUID come from the source series (or, for a NRRD/NIfTI input,
patient and study from a template series and a new frame of reference). Every slice gets a new
SOPInstanceUID in a new series, the output grid's geometry, the source's contrast window and
references to the source slices it was made from. The files are written to a staging folder beside
the target (`.NAME.sr4zct-PID-N.partial`), read back and checked (geometry to 1e-3 mm, voxels equal), then
published with the run's other outputs, all or none (io/publish.py).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import numpy as np

from ..errors import InputError, check_cancelled
from ..core.volume import Volume
from .dicom import SourceSeries

GEOMETRY_TOLERANCE_MM = 1e-3
PATIENT_STUDY_TAGS = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "PatientAge", "StudyInstanceUID",
                      "StudyDate", "StudyTime", "StudyID", "AccessionNumber", "ReferringPhysicianName",
                      "StudyDescription", "SpecificCharacterSet")
TYPE2_DEFAULTS = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime", "StudyID",
                  "AccessionNumber", "ReferringPhysicianName")
SERIES_TAGS = ("BodyPartExamined", "Laterality", "PatientPosition")  # copied when the source has them
WINDOW_TAGS = ("WindowCenter", "WindowWidth", "WindowCenterWidthExplanation")
DEFAULT_WINDOW = (40.0, 400.0)  # soft tissue, when the source gives none
SERIES_NUMBER_OFFSET = 1000  # the derived series is numbered after the source's


def is_dicom_output(path: str | os.PathLike, fmt: Optional[str]) -> bool:
    """DICOM when asked for, or when the output is a folder (an existing one, or a name without any suffix) not named
    as a volume file (a folder called o.nrrd is refused as a volume output, never filled with a series)."""
    from .volumes import OUTPUT_SUFFIXES

    path = Path(path)
    if fmt is not None:
        return fmt == "dicom"
    return not path.name.lower().endswith(tuple(OUTPUT_SUFFIXES)) and (path.is_dir() or path.suffix == "")


def check_dicom_output(output: str | os.PathLike, inputs: list[str | os.PathLike], overwrite: bool = False) -> Path:
    """Refuse a series folder that is, holds or lies inside any input of the run (the input, --dicom-template,
    --model), is a link or the current folder, exists (without overwrite; with it, unless it holds exactly one DICOM
    series and nothing else), or cannot be made."""
    output = Path(output)
    _check_not_an_input(output, inputs)
    target = output.resolve()
    if output.is_symlink():
        raise InputError(f"output folder {output} is a symbolic link (to {os.readlink(output)}); give the folder "
                         "itself, a new series folder is created there")
    if target == Path.cwd().resolve() or target in Path.cwd().resolve().parents:
        raise InputError(f"output folder {output} is the current folder or holds it; give a new folder for the "
                         "series, e.g. -o ./enhanced")
    if output.exists() and not output.is_dir():
        raise InputError(f"output {output} is a file; a DICOM series is written as a folder: choose a folder name")
    if output.exists() and any(output.iterdir()):
        if not overwrite:
            raise InputError(f"output folder {output} exists; choose another folder or pass --overwrite")
        others = not_one_series(output)
        if others:
            raise InputError(f"--overwrite replaces only a folder holding one DICOM series, and {output} also holds "
                             f"{', '.join(others[:3])}{' and more' if len(others) > 3 else ''}; move those away or "
                             "choose another folder")
    parent = target.parent
    if not parent.is_dir():
        raise InputError(f"output folder's parent {parent} does not exist; create it first")
    if not os.access(parent, os.W_OK):
        raise InputError(f"output folder's parent {parent} is not writable; choose another output path")
    return output


def _check_not_an_input(output: Path, inputs: list[str | os.PathLike]) -> None:
    """Refuse an output folder that is an input, lies inside one or holds one."""
    from .publish import input_overlap

    for given in inputs:
        source = Path(given)
        source = source.parent if source.suffix.lower() == ".dcm" else source  # a slice stands for its series
        if input_overlap(output, source):
            raise InputError(f"output folder {output} would be written into or over the input {given}; choose a "
                             "folder that neither holds nor lies inside an input of the run")


def not_one_series(folder: Path) -> list[str]:
    """What a folder holds besides one DICOM series: other files, subfolders, links, a second series (none: [])."""
    import pydicom

    from .dicom import has_dicm_preamble

    others, series = [], set()
    for entry in sorted(folder.iterdir()):
        if entry.is_symlink() or not entry.is_file():
            others.append(f"{entry.name}/" if entry.is_dir() else entry.name)
        elif not has_dicm_preamble(entry):
            others.append(entry.name)
        else:
            try:
                series.add(str(pydicom.dcmread(str(entry), stop_before_pixels=True,
                                               specific_tags=["SeriesInstanceUID"]).get("SeriesInstanceUID", "")))
            except Exception:  # a damaged file with the DICOM marker is not part of a series to replace
                check_cancelled()
                others.append(entry.name)
    if len(series) > 1:
        others.append(f"{len(series)} DICOM series")
    return others


def dicom_layout(volume: Volume, axis: int) -> tuple[np.ndarray, np.ndarray, bool]:
    """(images (n, rows, cols), series IJK-to-world as a DICOM reader sees it, reversed) for slices along ijk axis.

    Columns run along the lower remaining ijk axis, rows along the higher; slices are ordered
    along the image normal (row cosine x column cosine), reversing the stack where needed.
    """
    columns_axis, rows_axis = [a for a in (0, 1, 2) if a != axis]
    directions, spacing = volume.directions, volume.spacing
    normal = np.cross(directions[:, columns_axis], directions[:, rows_axis])
    reversed_ = float(normal @ directions[:, axis]) < 0
    images = np.moveaxis(volume.array, 2 - axis, 0)
    first = volume.ijk_to_world[:3, axis] * (volume.array.shape[2 - axis] - 1) if reversed_ else np.zeros(3)
    if reversed_:
        images = images[::-1]
    matrix = Volume.matrix_from(volume.origin + first, (spacing[columns_axis], spacing[rows_axis], spacing[axis]),
                                np.stack([directions[:, columns_axis], directions[:, rows_axis], normal], axis=1))
    return images, matrix, reversed_


def rescale_for(array: np.ndarray) -> tuple[float, float]:
    """(slope, intercept) that store the voxels as int16: exact for integer voxels in range."""
    low, high = float(array.min()), float(array.max())
    if np.issubdtype(array.dtype, np.integer) and low >= -32768 and high <= 32767:
        return 1.0, 0.0
    slope = max((high - low) / 65000.0, 1e-6)
    return slope, (high + low) / 2.0


def derived_series(volume: Volume, axis: int, source: SourceSeries, input_name: str) -> list:
    """The derived CT datasets, one per output slice, in order along the normal (nothing written)."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.sequence import Sequence
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    from .. import __version__

    images, matrix, _ = dicom_layout(volume, axis)
    slope, intercept = rescale_for(images)
    spacing = float(volume.spacing[axis])
    header = source.header
    series_uid = generate_uid()
    frame_of_reference = generate_uid() if source.is_template else str(header.get("FrameOfReferenceUID") or generate_uid())
    row_cosine, column_cosine, normal = matrix[:3, 0] / np.linalg.norm(matrix[:3, 0]), \
        matrix[:3, 1] / np.linalg.norm(matrix[:3, 1]), matrix[:3, 2] / np.linalg.norm(matrix[:3, 2])
    source_description = "" if source.is_template else str(header.get("SeriesDescription", "") or "")
    description = f"SR4ZCT {spacing:g} mm" + (f" {source_description}" if source_description else "")
    derivation = (f"SR4ZCT {__version__}: self-supervised through-plane enhancement of "
                  + (f"series {header.SeriesInstanceUID}" if not source.is_template else input_name)
                  + f" to {spacing:g} mm slices")
    now = _now()
    datasets = []
    for index, image in enumerate(images):
        position = matrix[:3, 3] + index * matrix[:3, 2]
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset(f"{index:05d}.dcm", {}, file_meta=meta, preamble=b"\0" * 128)
        for tag in PATIENT_STUDY_TAGS:
            if tag in header:
                setattr(ds, tag, header[tag].value)
        for tag in TYPE2_DEFAULTS:
            if tag not in ds:
                setattr(ds, tag, "")
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.Modality, ds.SeriesInstanceUID = "CT", series_uid
        ds.SeriesNumber = int(header.get("SeriesNumber") or 0) + SERIES_NUMBER_OFFSET
        ds.SeriesDescription = description[:64]
        ds.FrameOfReferenceUID, ds.PositionReferenceIndicator = frame_of_reference, ""
        ds.Manufacturer, ds.SoftwareVersions = "SR4ZCT", __version__
        ds.SeriesDate = ds.ContentDate = now[0]
        ds.SeriesTime = ds.ContentTime = now[1]
        ds.ImageType = ["DERIVED", "SECONDARY", "AXIAL"]
        ds.DerivationDescription = derivation[:1024]
        if not derivation.isascii() and "SpecificCharacterSet" not in ds:
            ds.SpecificCharacterSet = "ISO_IR 192"  # the input's name is not ASCII: declare UTF-8
        ds.InstanceNumber = index + 1
        ds.ImagePositionPatient = [_ds(v) for v in position]
        ds.ImageOrientationPatient = [_ds(v) for v in (*row_cosine, *column_cosine)]
        ds.PixelSpacing = [_ds(np.linalg.norm(matrix[:3, 1])), _ds(np.linalg.norm(matrix[:3, 0]))]
        ds.SliceThickness = ds.SpacingBetweenSlices = _ds(spacing)
        ds.SliceLocation = _ds(float(position @ normal))
        ds.KVP = header.get("KVP", "") if not source.is_template else ""
        for tag in SERIES_TAGS if not source.is_template else ():
            if tag in header:
                setattr(ds, tag, header[tag].value)
        for tag in ("Laterality", "PatientPosition"):  # type 2C for CT: present, empty when unknown
            if tag not in ds:
                setattr(ds, tag, "")
        ds.AcquisitionNumber = ""
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.Rows, ds.Columns = image.shape
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = _ds(slope), _ds(intercept), "HU"
        _copy_window(ds, header)
        if not source.is_template:
            references = _contributing(source, float(position @ normal))
            ds.SourceImageSequence = Sequence([_reference(sop_class, uid) for sop_class, uid in references])
            series_item = _item(SeriesInstanceUID=str(header.SeriesInstanceUID))
            series_item.ReferencedInstanceSequence = Sequence([_reference(c, u) for c, u in references])
            ds.ReferencedSeriesSequence = Sequence([series_item])
        stored = np.round((np.asarray(image, dtype=np.float64) - intercept) / slope)
        ds.PixelData = np.clip(stored, -32768, 32767).astype("<i2").tobytes()
        datasets.append(ds)
    return datasets


def _ds(value: float) -> str:
    """A decimal string (DS, at most 16 characters) close to value."""
    text = f"{float(value):.10g}"
    return text if len(text) <= 16 else f"{float(value):.8g}"


def _now() -> tuple[str, str]:
    import datetime

    now = datetime.datetime.now()
    return now.strftime("%Y%m%d"), now.strftime("%H%M%S")


def _item(**values):
    from pydicom.dataset import Dataset

    item = Dataset()
    for key, value in values.items():
        setattr(item, key, value)
    return item


def _reference(sop_class: str, uid: str):
    return _item(ReferencedSOPClassUID=sop_class, ReferencedSOPInstanceUID=uid)


def _contributing(source: SourceSeries, along: float) -> list[tuple[str, str]]:
    """The source slices an output slice at `along` was interpolated from (the nearest one or two)."""
    positions = np.array([p for _, _, p in source.instances])
    order = np.argsort(np.abs(positions - along), kind="stable")[:2]
    if len(order) == 2 and abs(positions[order[0]] - along) < 1e-3:
        order = order[:1]
    return [source.instances[i][:2] for i in sorted(order)]


def _copy_window(ds, header) -> None:
    if "WindowCenter" in header and "WindowWidth" in header:
        for tag in WINDOW_TAGS:
            if tag in header:
                setattr(ds, tag, header[tag].value)
    else:
        ds.WindowCenter, ds.WindowWidth = _ds(DEFAULT_WINDOW[0]), _ds(DEFAULT_WINDOW[1])


def stage_dicom_series(publication, volume: Volume, axis: int, folder: Path, source: SourceSeries,
                       input_name: str) -> None:
    """Write the derived series into the publication's staging folder for `folder` and verify it by reading it back;
    it is published with every other output of the run, all or none (io/publish.py)."""
    def write(staging: str) -> None:
        for index, ds in enumerate(derived_series(volume, axis, source, input_name)):
            check_cancelled()
            ds.save_as(str(Path(staging) / f"{index + 1:05d}.dcm"), enforce_file_format=True)

    count = volume.array.shape[2 - axis]
    publication.stage_folder(Path(folder), write, lambda staging: verify_dicom_series(Path(staging), volume, axis, count))


def write_dicom_series(volume: Volume, axis: int, folder: str | os.PathLike, source: SourceSeries, input_name: str,
                       overwrite: bool = False) -> Path:
    """Check, stage, verify and publish the derived series on its own (outside a run)."""
    from .publish import OutputPlan, write_planned

    plan = OutputPlan(None, overwrite)
    plan.protect_folder("-o", check_dicom_output(folder, [], overwrite))
    write_planned(plan, lambda publication: stage_dicom_series(publication, volume, axis, Path(folder), source,
                                                               input_name))
    return Path(folder)


def voxel_tolerance(images: np.ndarray) -> float:
    """How far a voxel read back may lie from the result: half a stored step, plus float32 rounding on both sides
    (the result and the reader's rescaled values are float32)."""
    slope, _ = rescale_for(images)
    largest = float(np.abs(images).max()) + slope
    return slope / 2 + 4 * float(np.finfo(np.float32).eps) * largest + 1e-6


def verify_dicom_series(folder: Path, volume: Volume, axis: int, count: int) -> None:
    """Read the written series back: file count, geometry within 1e-3 mm and voxels equal, or raise."""
    from .dicom import read_dicom_series

    files = [p for p in folder.iterdir() if p.suffix == ".dcm"]
    if len(files) != count:
        raise OSError(f"wrote {count} DICOM files but found {len(files)} in {folder}; check free disk space")
    images, matrix, _ = dicom_layout(volume, axis)
    back = read_dicom_series(folder)
    if back.array.shape != images.shape or np.abs(back.ijk_to_world - matrix).max() > GEOMETRY_TOLERANCE_MM:
        raise OSError(f"the DICOM series read back from {folder} does not match the result's geometry")
    if np.abs(back.array.astype(np.float64) - images).max() > voxel_tolerance(images):
        raise OSError(f"the DICOM series read back from {folder} does not match the result's voxels")
