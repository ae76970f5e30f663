"""Shared fixtures: paths to the shared real data, synthetic DICOM series, small volumes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from SR4ZCTLib.core.volume import Volume

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
CHEST_DICOM = SHARED / "chest_ct_5mm"
VHM_HEAD = SHARED / "vhm_head_1mm.nrrd"


def needs_shared(path: Path):
    return pytest.mark.skipif(not path.exists(), reason=f"{path} (shared data) not present")


def write_dicom_series(folder: Path, array: np.ndarray, positions, orientation=(1, 0, 0, 0, 1, 0),
                       pixel_spacing=(0.8, 0.8), thickness=None, series_uid=None, intercept=-1024.0) -> Path:
    """Write array (slices, rows, cols) of HU as a CT DICOM series with the given ImagePositionPatient per slice."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    series_uid = series_uid or generate_uid()
    for index, (image, position) in enumerate(zip(array, positions)):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        dataset = FileDataset(str(folder / f"img{index:03d}.dcm"), {}, file_meta=meta, preamble=b"\0" * 128)
        dataset.SOPClassUID = CTImageStorage
        dataset.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        dataset.SeriesInstanceUID = series_uid
        dataset.StudyInstanceUID = "1.2.3.4"
        dataset.Modality = "CT"
        dataset.InstanceNumber = index + 1
        dataset.ImagePositionPatient = [float(v) for v in position]
        dataset.ImageOrientationPatient = [float(v) for v in orientation]
        dataset.PixelSpacing = [float(v) for v in pixel_spacing]
        if thickness is not None:
            dataset.SliceThickness = float(thickness)
        dataset.Rows, dataset.Columns = image.shape
        dataset.SamplesPerPixel = 1
        dataset.PhotometricInterpretation = "MONOCHROME2"
        dataset.BitsAllocated, dataset.BitsStored, dataset.HighBit = 16, 16, 15
        dataset.PixelRepresentation = 1
        dataset.RescaleSlope, dataset.RescaleIntercept = 1.0, intercept
        dataset.PixelData = (np.asarray(image) - intercept).astype("<i2").tobytes()
        dataset.save_as(str(folder / f"img{index:03d}.dcm"), enforce_file_format=True)
    return folder


def stacked_positions(count: int, step: float, normal=(0, 0, 1), start=(-10.0, -20.0, 30.0)):
    return [np.asarray(start) + i * step * np.asarray(normal, dtype=float) for i in range(count)]


@pytest.fixture
def small_ct() -> np.ndarray:
    """(6, 24, 20) HU with air, tissue and a bright structure."""
    rng = np.random.default_rng(1)
    array = np.full((6, 24, 20), -1000, dtype=np.int16)
    array[:, 4:20, 3:17] = 40
    array[:, 10:14, 8:12] = 700
    return (array + rng.integers(-5, 5, array.shape)).astype(np.int16)


def oblique_matrix(spacing=(0.7, 0.8, 2.5), origin=(12.5, -40.25, 101.0)) -> np.ndarray:
    """An IJK-to-world matrix with a rotated, flipped (left-handed) set of axes."""
    angle = np.radians(23.0)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    rotation = rotation @ np.diag([1.0, -1.0, 1.0])
    return Volume.matrix_from(origin, spacing, rotation)


def run_cli(args, capsys):
    """`sr4zct ARGS` in this process: (exit code, stdout, stderr)."""
    from SR4ZCTLib import cli

    code = cli.main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture
def scene():
    """A fresh real MRML scene as slicer.mrmlScene (slicer-core), cleared afterwards."""
    slicer = pytest.importorskip("slicer")
    slicer.mrmlScene = slicer.vtkMRMLScene()
    yield slicer.mrmlScene
    slicer.mrmlScene.Clear(1)
