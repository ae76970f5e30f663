"""Reliability table, io/: truncated inputs, DICOM header oddities, detached data files, NIfTI qform/sform (rows 22, 23, 24, 28, 32).

Each case checks the exit code, one `error:` line without a traceback, that nothing was published
and that the input's bytes are unchanged."""

from __future__ import annotations

import re
import struct
from pathlib import Path

import pytest

from reliability import FAST, InputError, MATRIX, Volume, assert_refused, dicom, digest, read_volume, run_cli, write_volume  # noqa: F401 (fixtures among them)


# ---- row 22: truncated inputs of every format are refused --------------------------------------------------------------
def _cut(path: Path, keep: float) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * keep)])
    return path


def _detached(tmp_path, array, extension):
    import SimpleITK as sitk

    path = tmp_path / f"v{extension}"
    sitk.WriteImage(sitk.GetImageFromArray(array), str(path), useCompression=False)
    data = next(p for p in tmp_path.iterdir() if p != path and p.name.startswith("v."))
    _cut(data, 0.6)
    return path


TRUNCATED = [
    ("nii", lambda tmp, a: _cut(write_volume(Volume(a, MATRIX), tmp / "v.nii"), 0.6)),
    ("nii.gz", lambda tmp, a: _cut(write_volume(Volume(a, MATRIX), tmp / "v.nii.gz"), 0.6)),
    ("nrrd-gzip", lambda tmp, a: _cut(write_volume(Volume(a, MATRIX), tmp / "v.nrrd"), 0.6)),
    ("mha-zlib", lambda tmp, a: _cut(write_volume(Volume(a, MATRIX), tmp / "v.mha"), 0.6)),
    ("mha-raw", lambda tmp, a: _cut(_uncompressed(tmp / "v.mha", a), 0.6)),
    ("nrrd-raw", lambda tmp, a: _cut(_uncompressed(tmp / "v.nrrd", a), 0.6)),
    ("nhdr", lambda tmp, a: _detached(tmp, a, ".nhdr")),
    ("mhd", lambda tmp, a: _detached(tmp, a, ".mhd")),
]


def _uncompressed(path: Path, array) -> Path:
    import SimpleITK as sitk

    sitk.WriteImage(sitk.GetImageFromArray(array), str(path), useCompression=False)
    return path


@pytest.mark.parametrize("make", [m for _, m in TRUNCATED], ids=[n for n, _ in TRUNCATED])
def test_truncated_inputs_are_refused(tmp_path, small_ct, capsys, make):
    source = make(tmp_path, small_ct)
    with pytest.raises(InputError, match="truncated|damaged"):
        read_volume(source)
    code, _, err = run_cli(["enhance", source, "-o", tmp_path / "out.nrrd", *FAST], capsys)
    assert_refused(code, err, "truncated|damaged")
    assert not (tmp_path / "out.nrrd").exists()


# ---- rows 23 and 28: DICOM header oddities, each an error naming the file -----------------------------------------------
def _edit(folder: Path, name: str, change) -> Path:
    import pydicom

    dataset = pydicom.dcmread(str(folder / name))
    change(dataset)
    dataset.save_as(str(folder / name))
    return folder


def _delete(keyword):
    return lambda d: delattr(d, keyword)


def _set(keyword, value):
    return lambda d: setattr(d, keyword, value)


def _rgb(dataset):
    dataset.SamplesPerPixel, dataset.PhotometricInterpretation, dataset.PlanarConfiguration = 3, "RGB", 0
    dataset.BitsAllocated, dataset.BitsStored, dataset.HighBit, dataset.PixelRepresentation = 8, 8, 7, 0
    dataset.PixelData = b"\0" * (dataset.Rows * dataset.Columns * 3)


def _other_size(dataset):
    dataset.Rows = dataset.Rows - 2
    dataset.PixelData = dataset.PixelData[: dataset.Rows * dataset.Columns * 2]


def _damaged(folder):
    path = folder / "img002.dcm"
    path.write_bytes(path.read_bytes()[:420])
    return folder


DICOM_ODDITIES = [
    ("rescale-intercept-missing", lambda f: _edit(f, "img002.dcm", _delete("RescaleIntercept")), "img002.dcm.*Rescale|Rescale.*img002.dcm"),
    ("rescale-slope-zero", lambda f: _edit(f, "img004.dcm", _set("RescaleSlope", 0)), "img004.dcm.*slope"),
    ("no-pixel-spacing", lambda f: _edit(f, "img001.dcm", _delete("PixelSpacing")), "PixelSpacing of img001.dcm"),
    ("other-size", lambda f: _edit(f, "img003.dcm", _other_size), "img003.dcm is 22 x 20 pixels"),
    ("rgb", lambda f: _edit(f, "img002.dcm", _rgb), "img002.dcm is a colour image"),
    ("thickness-abc", lambda f: _edit(f, "img001.dcm", lambda d: d.add_new(0x00180050, "LO", "abc")),
     "SliceThickness of img001.dcm"),
    ("thickness-negative", lambda f: _edit(f, "img001.dcm", _set("SliceThickness", -5)),
     r"SliceThickness of img001.dcm is '-5(\.0)?'.*fix the DICOM header"),
    ("position-2-values", lambda f: _edit(f, "img003.dcm", _set("ImagePositionPatient", [1.0, 2.0])),
     "ImagePositionPatient of img003.dcm"),
    ("truncated-pixels", lambda f: _edit(f, "img003.dcm", lambda d: setattr(d, "PixelData", d.PixelData[:100])),
     "pixel data of img003.dcm is missing or truncated"),
    ("damaged-file", _damaged, "img002.dcm is a damaged DICOM file"),
    ("no-position", lambda f: _edit(f, "img002.dcm", _delete("ImagePositionPatient")),
     "img002.dcm is an image without ImagePositionPatient"),
    ("orientation-zeros", lambda f: _edit(f, "img000.dcm", _set("ImageOrientationPatient", [0] * 6)),
     "ImageOrientationPatient of img000.dcm"),
]


@pytest.mark.parametrize("damage,message", [(d, m) for _, d, m in DICOM_ODDITIES], ids=[n for n, _, _ in DICOM_ODDITIES])
def test_dicom_header_oddities_name_the_file(tmp_path, dicom, capsys, damage, message):
    if "ImageOrientation" in message:  # every slice, so the series is consistent but impossible
        for name in sorted(p.name for p in dicom.iterdir()):
            damage = _edit(dicom, name, _set("ImageOrientationPatient", [0] * 6))
    else:
        damage(dicom)
    before = digest(dicom)
    code, _, err = run_cli(["enhance", dicom, "-o", tmp_path / "o.nrrd", *FAST], capsys)
    assert_refused(code, err, message)
    assert not re.search(r"pylibjpeg|usual step 0\.000|check --thickness|missing or duplicated", err)
    assert digest(dicom) == before and not (tmp_path / "o.nrrd").exists()


def test_truncated_mha_does_not_say_no_such_file(tmp_path, small_ct, capsys):
    source = _cut(_uncompressed(tmp_path / "v.mha", small_ct), 0.5)
    code, _, err = run_cli(["info", source], capsys)
    assert_refused(code, err, "v.mha is truncated")
    assert "No such file" not in err


# ---- row 24: detached data files outside the header's folder -------------------------------------------------------
@pytest.mark.parametrize("extension,field", [(".nhdr", "data file: "), (".mhd", "ElementDataFile = ")])
def test_detached_data_outside_the_header_folder_is_refused(tmp_path, small_ct, capsys, extension, field):
    inner = tmp_path / "inner"
    inner.mkdir()
    header = _uncompressed(inner / f"v{extension}", small_ct)
    data = next(p for p in inner.iterdir() if p != header)
    data.rename(tmp_path / data.name)  # the "secret" lies one folder up
    text = header.read_text(encoding="latin-1")
    header.write_text(re.sub(re.escape(field) + r".*", field + f"../{data.name}", text), encoding="latin-1")
    code, _, err = run_cli(["info", header], capsys)
    assert_refused(code, err, "outside the header's folder.*--allow-external-data")
    code, _, err = run_cli(["info", header, "--allow-external-data"], capsys)
    assert code == 0, err


# ---- row 32: NIfTI qform and sform disagree -----------------------------------------------------------------------------
def test_nifti_qform_sform_disagreement_warns_naming_the_one_used(tmp_path, small_ct, capsys):
    path = write_volume(Volume(small_ct, MATRIX), tmp_path / "v.nii")
    data = bytearray(path.read_bytes())
    struct.pack_into("<2h", data, 252, 1, 1)  # both codes set
    srow_x = list(struct.unpack_from("<4f", data, 280))
    srow_x[3] += 10.0  # the sform moved 10 mm
    struct.pack_into("<4f", data, 280, *srow_x)
    path.write_bytes(bytes(data))
    code, _, err = run_cli(["info", path], capsys)
    assert code == 0, err
    assert re.search(r"warning: v.nii: the NIfTI qform and sform disagree .*10.0 mm.*the (qform|sform) was used", err)
