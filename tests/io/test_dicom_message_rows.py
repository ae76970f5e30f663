"""Reliability table, DICOM input messages (issue 17 row 20, rows 56 and 59 of the README): multi-frame images said
to be unsupported, a missing decoder as one line, a presentation state beside the images accepted for DICOM output.

Each refusal checks the exit code, exactly one line on stderr (`error:`), no traceback, and the input unchanged."""

from __future__ import annotations

import numpy as np
import pydicom
from pydicom.encaps import encapsulate
from pydicom.uid import (EnhancedCTImageStorage, ExplicitVRLittleEndian, GrayscaleSoftcopyPresentationStateStorage,
                         JPEGLSLossless, generate_uid)

from reliability import FAST, assert_refused, dicom, digest, run_cli  # noqa: F401 (fixtures among them)


def only_error_line(err: str) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), err


def _first(folder):
    return sorted(folder.iterdir())[0]


def test_an_enhanced_multi_frame_image_is_said_to_be_unsupported(tmp_path, dicom, capsys):
    path = _first(dicom)
    dataset = pydicom.dcmread(str(path))
    dataset.SOPClassUID = dataset.file_meta.MediaStorageSOPClassUID = EnhancedCTImageStorage
    del dataset.ImagePositionPatient, dataset.ImageOrientationPatient  # per frame, in functional groups
    pixels = dataset.pixel_array
    dataset.NumberOfFrames = 2
    dataset.PixelData = np.concatenate([pixels[None]] * 2).tobytes()
    dataset.save_as(str(path))
    before = digest(dicom)
    code, _, err = run_cli(["info", dicom], capsys)
    assert_refused(code, err, "multi-frame.*not supported.*single-frame")
    only_error_line(err)
    assert digest(dicom) == before


def test_a_legacy_multi_frame_image_is_said_to_be_unsupported(tmp_path, dicom, capsys):
    path = _first(dicom)
    dataset = pydicom.dcmread(str(path))
    pixels = dataset.pixel_array
    dataset.NumberOfFrames = 3
    dataset.PixelData = np.concatenate([pixels[None]] * 3).tobytes()
    dataset.save_as(str(path))
    code, _, err = run_cli(["info", dicom], capsys)
    assert_refused(code, err, "multi-frame.*not supported.*single-frame")
    only_error_line(err)


def test_a_missing_decoder_is_one_line(tmp_path, dicom, capsys):
    path = _first(dicom)
    dataset = pydicom.dcmread(str(path))
    dataset.file_meta.TransferSyntaxUID = JPEGLSLossless
    dataset.PixelData = encapsulate([b"\xff\xd8\xff\xf7" + b"\x00" * 64])  # JPEG-LS start, no decodable data
    dataset["PixelData"].VR = "OB"
    dataset.save_as(str(path), enforce_file_format=True)
    code, _, err = run_cli(["info", dicom], capsys)
    assert_refused(code, err, "cannot decode the pixels of .*(install a decoder|convert the series)")
    only_error_line(err)


def test_a_presentation_state_beside_the_images_is_accepted_for_dicom_output(tmp_path, dicom, capsys):
    state = pydicom.Dataset()
    state.file_meta = pydicom.dataset.FileMetaDataset()
    state.file_meta.MediaStorageSOPClassUID = GrayscaleSoftcopyPresentationStateStorage
    state.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    state.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    state.SOPClassUID = GrayscaleSoftcopyPresentationStateStorage
    state.SOPInstanceUID = state.file_meta.MediaStorageSOPInstanceUID
    state.StudyInstanceUID = pydicom.dcmread(str(_first(dicom)), stop_before_pixels=True).StudyInstanceUID
    state.SeriesInstanceUID = generate_uid()
    state.Modality = "PR"
    state.preamble = b"\0" * 128
    state.save_as(str(dicom / "zz-state.dcm"), enforce_file_format=True)
    code, _, err = run_cli(["info", dicom], capsys)
    assert code == 0, err  # accepted as input (not an image)
    code, out, err = run_cli(["enhance", dicom, "-o", tmp_path / "out", "--format", "dicom", "--progress", "none",
                              *FAST], capsys)
    assert code == 0, err
    written = sorted((tmp_path / "out").iterdir())
    assert written and all(pydicom.dcmread(str(p), stop_before_pixels=True).Modality == "CT" for p in written)
