"""DICOM output: a derived CT series with the right tags, checked by dciodvfy, read back by pydicom and SimpleITK.

The geometry of the series read back equals the NRRD output of the same run to 1e-3 mm and the voxels are equal.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest

from SR4ZCTLib.io.dicom import read_source_series
from SR4ZCTLib.io.dicom_write import write_dicom_series
from SR4ZCTLib.core.volume import Volume
from SR4ZCTLib.io.volumes import read_volume, write_volume

from conftest import CHEST_DICOM, needs_shared, oblique_matrix, run_cli, stacked_positions, write_dicom_series as write_source

DCIODVFY = shutil.which("dciodvfy")
needs_dciodvfy = pytest.mark.skipif(DCIODVFY is None, reason="dciodvfy not installed (Debian package dicom3tools; "
                                    ".ci/run installs it with apt-get where it can)")
RUN = ["--iterations", "2", "--device", "cpu", "--progress", "none", "--seed", "3"]
ORIENTATION = (0.8, 0.6, 0.0, -0.6, 0.8, 0.0)  # rotated in-plane: rows and columns not along x and y


@pytest.fixture
def source(tmp_path, small_ct) -> Path:
    """A 6-slice CT series, 2.5 mm apart, rotated in-plane, with a contrast window and patient/study tags."""
    normal = np.cross(ORIENTATION[:3], ORIENTATION[3:])
    folder = write_source(tmp_path / "source", small_ct, stacked_positions(6, 2.5, normal=normal),
                          orientation=ORIENTATION, thickness=2.5)
    for path in folder.iterdir():
        ds = pydicom.dcmread(str(path))
        ds.PatientName, ds.PatientID, ds.StudyDate, ds.StudyTime, ds.StudyID = "Test^Patient", "P42", "20240102", "101500", "7"
        ds.FrameOfReferenceUID, ds.SeriesNumber, ds.SeriesDescription = "1.2.3.4.5", 3, "Thorax 2.5"
        ds.WindowCenter, ds.WindowWidth = [-600, 40], [1500, 400]
        ds.save_as(str(path))
    return folder


def sitk_series(folder: Path):
    import SimpleITK as sitk

    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    return reader.Execute()


def datasets(folder: Path) -> list:
    return [pydicom.dcmread(str(p)) for p in sorted(folder.iterdir())]


def dciodvfy_errors(folder: Path) -> list[str]:
    errors = []
    for path in sorted(folder.iterdir()):
        result = subprocess.run([DCIODVFY, str(path)], capture_output=True, text=True, timeout=60)
        errors += [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("Error")]
    return errors


def test_dicom_round_trip_equals_the_nrrd_output(tmp_path, source, capsys):
    import SimpleITK as sitk

    code, _, err = run_cli(["enhance", source, "-o", tmp_path / "enhanced.nrrd", *RUN], capsys)
    assert code == 0, err
    code, out, err = run_cli(["enhance", source, "-o", tmp_path / "series", *RUN], capsys)  # no suffix: a folder
    assert code == 0, err
    nrrd = sitk.ReadImage(str(tmp_path / "enhanced.nrrd"))
    series = sitk_series(tmp_path / "series")
    assert series.GetSize() == nrrd.GetSize()
    assert np.allclose(series.GetOrigin(), nrrd.GetOrigin(), atol=1e-3)
    assert np.allclose(series.GetSpacing(), nrrd.GetSpacing(), atol=1e-3)
    assert np.allclose(series.GetDirection(), nrrd.GetDirection(), atol=1e-6)
    assert np.array_equal(sitk.GetArrayFromImage(series), sitk.GetArrayFromImage(nrrd))
    ours = read_volume(tmp_path / "series")  # pydicom reader of the project
    assert np.abs(ours.ijk_to_world - read_volume(tmp_path / "enhanced.nrrd").ijk_to_world).max() < 1e-3


def test_derived_series_tags(tmp_path, source, capsys):
    code, _, err = run_cli(["enhance", source, "-o", tmp_path / "series", "--format", "dicom", *RUN], capsys)
    assert code == 0, err
    written, originals = datasets(tmp_path / "series"), datasets(source)
    first, original = written[0], originals[0]
    spacing = 0.8  # the in-plane spacing: the default output grid
    assert len(written) == 16  # (6 - 1) * 2.5 / 0.8 + 1 slices
    assert {ds.SeriesInstanceUID for ds in written} == {first.SeriesInstanceUID} != {original.SeriesInstanceUID}
    assert len({ds.SOPInstanceUID for ds in written}) == 16
    assert not {ds.SOPInstanceUID for ds in written} & {ds.SOPInstanceUID for ds in originals}
    for tag in ("PatientName", "PatientID", "StudyInstanceUID", "StudyDate", "StudyID", "FrameOfReferenceUID"):
        assert first[tag].value == original[tag].value, tag
    assert list(first.ImageType)[:2] == ["DERIVED", "SECONDARY"] and first.Modality == "CT"
    assert "SR4ZCT" in first.SeriesDescription and "0.8 mm" in first.SeriesDescription
    assert float(first.SliceThickness) == pytest.approx(spacing) and float(first.SpacingBetweenSlices) == pytest.approx(spacing)
    assert [float(v) for v in first.WindowCenter] == [-600, 40] and [float(v) for v in first.WindowWidth] == [1500, 400]
    assert first.BitsAllocated == 16 and first.PixelRepresentation == 1 and "RescaleSlope" in first
    assert "SR4ZCT" in first.DerivationDescription and original.SeriesInstanceUID in first.DerivationDescription
    assert np.allclose([float(v) for v in first.ImageOrientationPatient], ORIENTATION, atol=1e-6)
    normal = np.cross(ORIENTATION[:3], ORIENTATION[3:])
    along = [np.array([float(v) for v in ds.ImagePositionPatient]) @ normal for ds in written]
    assert [ds.InstanceNumber for ds in written] == list(range(1, 17))
    assert np.allclose(np.diff(along), spacing, atol=1e-3)  # instance order follows the slice normal
    source_uids = {ds.SOPInstanceUID for ds in originals}
    for ds in written:
        references = {item.ReferencedSOPInstanceUID for item in ds.SourceImageSequence}
        assert references and references <= source_uids
        assert [item.SeriesInstanceUID for item in ds.ReferencedSeriesSequence] == [original.SeriesInstanceUID]
    # the first output slice lies on the first source slice: it is made from that slice alone
    assert [item.ReferencedSOPInstanceUID for item in first.SourceImageSequence] == [originals[0].SOPInstanceUID]


@needs_dciodvfy
def test_dciodvfy_finds_no_errors(tmp_path, source, capsys):
    code, _, err = run_cli(["enhance", source, "-o", tmp_path / "series", *RUN], capsys)
    assert code == 0, err
    assert dciodvfy_errors(tmp_path / "series") == []


@needs_dciodvfy
@needs_shared(CHEST_DICOM)
def test_series_derived_from_the_real_chest_ct_is_valid_and_exact(tmp_path):
    """The writer on real scanner tags (a crop of the chest series stands in for a result)."""
    volume = read_volume(CHEST_DICOM)
    crop = Volume(np.ascontiguousarray(volume.array[10:16, 200:260, 150:230]), volume.ijk_to_world.copy())
    crop.ijk_to_world[:3, 3] = volume.ijk_to_world[:3, :3] @ [150, 200, 10] + volume.origin
    write_dicom_series(crop, 2, tmp_path / "series", read_source_series(CHEST_DICOM), "chest")
    assert dciodvfy_errors(tmp_path / "series") == []
    back = read_volume(tmp_path / "series")
    assert np.array_equal(back.array, crop.array)
    assert np.abs(back.ijk_to_world - crop.ijk_to_world).max() < 1e-3
    assert datasets(tmp_path / "series")[0].PatientID == pydicom.dcmread(str(CHEST_DICOM / "1-01.dcm")).PatientID


def test_left_handed_grid_keeps_every_voxel_in_place(tmp_path, source):
    """A volume whose slice axis points against the image normal: slices are reversed, world positions kept."""
    rng = np.random.default_rng(0)
    array = rng.integers(-1000, 1500, (5, 7, 6)).astype(np.int16)
    volume = Volume(array, oblique_matrix())
    write_dicom_series(volume, 2, tmp_path / "series", read_source_series(source), "x")
    back = sitk_series(tmp_path / "series")
    import SimpleITK as sitk

    values = sitk.GetArrayFromImage(back)
    for k, j, i in [(0, 0, 0), (4, 6, 5), (2, 3, 1), (1, 5, 4)]:
        world = volume.ijk_to_world @ [i, j, k, 1]
        index = back.TransformPhysicalPointToIndex([float(v) for v in world[:3]])
        assert np.allclose(back.TransformIndexToPhysicalPoint(index), world[:3], atol=1e-3)
        assert values[index[2], index[1], index[0]] == array[k, j, i]


def test_float_result_is_stored_as_int16_with_a_rescale(tmp_path, source):
    array = np.linspace(-1000.5, 2000.25, 4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6)
    volume = Volume(array, Volume.matrix_from((0, 0, 0), (0.5, 0.5, 1.0), np.eye(3)))
    write_dicom_series(volume, 2, tmp_path / "series", read_source_series(source), "x")
    first = datasets(tmp_path / "series")[0]
    assert first.BitsAllocated == 16 and float(first.RescaleSlope) < 0.05
    assert np.abs(read_volume(tmp_path / "series").array - array).max() <= float(first.RescaleSlope)


def test_non_dicom_input_needs_a_template(tmp_path, small_ct, source, capsys):
    nrrd = write_volume(Volume(small_ct, Volume.matrix_from((0, 0, 0), (0.8, 0.8, 2.5), np.eye(3))), tmp_path / "ct.nrrd")
    out = tmp_path / "out"
    out.mkdir()
    code, _, err = run_cli(["enhance", nrrd, "-o", out / "series", *RUN], capsys)
    assert code == 2 and err.startswith("error:") and "--dicom-template" in err and list(out.iterdir()) == []
    code, _, err = run_cli(["enhance", nrrd, "-o", out / "series", "--dicom-template", source, "--thickness", "2.5",
                            *RUN], capsys)
    assert code == 0, err
    first, template = datasets(out / "series")[0], datasets(source)[0]
    assert (first.PatientID, first.StudyInstanceUID) == (template.PatientID, template.StudyInstanceUID)
    assert first.FrameOfReferenceUID != template.FrameOfReferenceUID  # a file's frame is not the template's
    assert "ct.nrrd" in first.DerivationDescription and "SourceImageSequence" not in first


@pytest.mark.parametrize("case", ["inside-input", "exists", "is-a-file", "template-with-volume-output"])
def test_bad_dicom_outputs_are_refused_before_any_work(tmp_path, source, capsys, case):
    before = sorted(p.name for p in source.iterdir())
    output, extra = tmp_path / "series", []
    if case == "inside-input":
        output = source / "enhanced"
    elif case == "exists":
        output.mkdir()
        (output / "keep.txt").write_text("keep")
    elif case == "is-a-file":
        output = tmp_path / "file"
        output.write_text("keep")
        extra = ["--format", "dicom"]
    else:
        output, extra = tmp_path / "o.nrrd", ["--dicom-template", str(source)]
    code, _, err = run_cli(["enhance", source, "-o", output, *extra, *RUN], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and err.startswith("error:"), err
    assert sorted(p.name for p in source.iterdir()) == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging folder left
    if case == "exists":
        assert [p.name for p in output.iterdir()] == ["keep.txt"]


def test_overwrite_replaces_a_series_folder_whole(tmp_path, source, small_ct, capsys):
    output = write_source(tmp_path / "series", small_ct[:3], stacked_positions(3, 2.5), thickness=2.5)
    (output / "old.dcm").write_bytes(next(output.iterdir()).read_bytes())  # one series (holding only it)
    code, _, err = run_cli(["enhance", source, "-o", output, "--overwrite", *RUN], capsys)
    assert code == 0, err
    assert "old.dcm" not in {p.name for p in output.iterdir()} and len(list(output.iterdir())) == 16
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


# ---- issue 17 row 10: a non-ASCII input name is declared (UTF-8), never undeclared Latin-1 --------------------------
@needs_dciodvfy
def test_a_non_ascii_input_name_is_declared(tmp_path, small_ct, capsys):
    source = write_volume(Volume(small_ct, oblique_matrix()), tmp_path / "Müller_ç.nrrd")
    template = write_source(tmp_path / "t", small_ct[:2], stacked_positions(2, 2.5))
    code, _, err = run_cli(["enhance", source, "-o", tmp_path / "series", "--dicom-template", template, "--thickness",
                            "2.5", *RUN], capsys)
    assert code == 0, err
    first = pydicom.dcmread(str(sorted((tmp_path / "series").iterdir())[0]))
    assert "Müller_ç.nrrd" in first.DerivationDescription and first.SpecificCharacterSet == "ISO_IR 192"
    assert dciodvfy_errors(tmp_path / "series") == []
