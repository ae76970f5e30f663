"""Issue 10, reliability second pass: one table per row of the README's Troubleshooting rows 1-18.

Each case checks the exit code, one `error:` line without a traceback, that nothing was published
and that the input's bytes are unchanged; where the Slicer worker path applies, the job is run too.
"""

from __future__ import annotations

import json
import os
import re
import signal
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import SR4ZCTLib
import SR4ZCTLib.cli.common
from SR4ZCTLib import cli
from SR4ZCTLib.core.acquisition import Acquisition
from SR4ZCTLib.enhance import TrainedModel
from SR4ZCTLib.errors import InputError
from SR4ZCTLib.core.intensity import Normalisation
from SR4ZCTLib.core.networks import build_network
from SR4ZCTLib.core.volume import Volume
from SR4ZCTLib.io.volumes import read_volume, write_volume

from conftest import stacked_positions, write_dicom_series

LIBRARY = str(Path(SR4ZCTLib.__file__).resolve().parents[1])  # the folder holding the SR4ZCTLib under test
MATRIX = Volume.matrix_from((1.0, -2.0, 3.0), (0.7, 0.7, 2.5), np.eye(3))
FAST = ["--iterations", "2", "--device", "cpu", "--thickness", "2.5"]


def digest(path: Path) -> bytes:
    paths = sorted(path.rglob("*")) if path.is_dir() else [path]
    return b"".join(p.name.encode() + p.read_bytes() for p in paths if p.is_file())


def run_cli(args, capsys):
    code = cli.main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_refused(code, err, message):
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(errors) == 1, err
    assert re.search(message, errors[0]), errors[0]
    assert "Traceback" not in err


def subprocess_env(**extra) -> dict:
    environment = dict(os.environ, PYTHONPATH=LIBRARY + os.pathsep + os.environ.get("PYTHONPATH", ""))
    environment.update(extra)
    return environment


@pytest.fixture
def ct(tmp_path, small_ct) -> Path:
    return write_volume(Volume(small_ct, MATRIX), tmp_path / "ct.nrrd")


@pytest.fixture
def dicom(tmp_path, small_ct) -> Path:
    return write_dicom_series(tmp_path / "series", small_ct, stacked_positions(6, 2.5), thickness=2.5)


def small_model(path: Path, **changes) -> Path:
    """A real saved model (untrained CNN), then the bundle edited as a hostile or damaged file would be."""
    model = TrainedModel(build_network("cnn", {"depth": 3, "width": 4}), "cnn", {"depth": 3, "width": 4},
                         Acquisition(2.5, 2.5), 0.7, Normalisation(), {"validation_psnr_db": 41.0,
                                                                       "validation_linear_psnr_db": 40.0})
    model.save(path)
    if changes:
        bundle = torch.load(str(path), weights_only=True)
        for key, value in changes.items():
            target, _, name = key.partition(".") if "." in key else ("", "", key)
            holder = bundle[target] if target else bundle
            if value is KeyError:
                del holder[name]
            else:
                holder[name] = value
        torch.save(bundle, str(path))
    return path


# ---- row 1 (and 4): disk full while writing: verified, nothing published, an old output kept ----------------------
LIMITED_WRITE = """
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
limit = int(sys.argv[1])
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
from SR4ZCTLib.cli import main
sys.exit(main(sys.argv[2:]))
"""


@pytest.mark.skipif(not hasattr(__import__("resource"), "RLIMIT_FSIZE"), reason="needs RLIMIT_FSIZE (POSIX)")
@pytest.mark.parametrize("output,extra,limit,failing", [
    ("o.nii", [], 4000, "o.nii"),
    ("o.nii.gz", [], 2000, "o.nii.gz"),
    ("o.mha", [], 4000, "o.mha"),
    ("o.nrrd", [], 2000, "o.nrrd"),
    ("o.nrrd", ["--save-model", "m.pt"], 40000, "m.pt"),
    ("o.nrrd", ["--report", "report"], 16000, "report.png"),
])
def test_disk_full_is_caught_by_verification_and_old_output_kept(tmp_path, ct, output, extra, limit, failing):
    target = tmp_path / output
    target.write_bytes(b"previous output")  # --overwrite: this must survive the failed run (row 4)
    before = digest(ct)
    args = ["enhance", str(ct), "-o", str(target), "--overwrite", "--progress", "none", *FAST,
            *[str(tmp_path / a) if a in ("m.pt", "report") else a for a in extra]]
    run = subprocess.run([sys.executable, "-c", LIMITED_WRITE, str(limit), *args], capture_output=True, text=True,
                         env=subprocess_env(MPLCONFIGDIR=str(tmp_path / "mpl")), timeout=300)
    assert_refused(run.returncode, run.stderr, f"writing .*{re.escape(failing)} failed.*No output was published")
    assert target.read_bytes() == b"previous output"
    assert not (tmp_path / "m.pt").exists() and not (tmp_path / "report").exists()
    assert not [p for p in tmp_path.iterdir() if ".partial" in p.name]
    assert digest(ct) == before


# ---- rows 2, 3, 11: every output path checked before any work ---------------------------------------------------
def _in_dicom(tmp_path, dicom):
    return ["--save-model", dicom / "img003.dcm", "--overwrite"], "would overwrite the input"


def _new_file_in_dicom(tmp_path, dicom):
    return ["--save-model", dicom / "model.pt"], "inside the input DICOM folder"


def _report_in_dicom(tmp_path, dicom):
    return ["--report", dicom / "report"], "inside the input DICOM folder"


def _model_is_output(tmp_path, dicom):
    return ["--save-model", tmp_path / "o.nrrd"], "also the -o output"


def _model_exists(tmp_path, dicom):
    (tmp_path / "m.pt").write_bytes(b"keep")
    return ["--save-model", tmp_path / "m.pt"], "exists; choose another path or pass --overwrite"


def _report_exists(tmp_path, dicom):
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "metrics.json").write_text("{}")
    return ["--report", tmp_path / "r"], "metrics.json exists"


def _report_is_a_file(tmp_path, dicom):
    (tmp_path / "r.txt").write_text("keep")
    return ["--report", tmp_path / "r.txt", "--overwrite"], "is a file; give a folder"


def _model_folder_missing(tmp_path, dicom):
    return ["--save-model", tmp_path / "nowhere" / "m.pt"], "does not exist"


def _name_too_long(tmp_path, dicom):
    return ["--save-model", tmp_path / ("m" * 240 + ".pt")], "name is too long"


def _output_is_a_folder(tmp_path, dicom):
    (tmp_path / "o.nrrd").mkdir()
    return ["--overwrite"], "is a folder"


def _report_folder_unwritable(tmp_path, dicom):
    (tmp_path / "locked").mkdir()
    os.chmod(tmp_path / "locked", 0o500)
    return ["--report", tmp_path / "locked" / "r"], "not writable"


OUTPUT_PATHS = [_in_dicom, _new_file_in_dicom, _report_in_dicom, _model_is_output, _model_exists, _report_exists,
                _report_is_a_file, _model_folder_missing, _name_too_long, _output_is_a_folder, _report_folder_unwritable]


@pytest.mark.parametrize("case", OUTPUT_PATHS, ids=[c.__name__.strip("_") for c in OUTPUT_PATHS])
def test_output_paths_are_refused_before_any_work(tmp_path, dicom, capsys, monkeypatch, case):
    extra, message = case(tmp_path, dicom)
    if case is _report_folder_unwritable and os.geteuid() == 0:  # root writes anywhere: ask as a user would
        real_access = os.access
        monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p) == (tmp_path / "locked").resolve()
                            else real_access(p, mode))
    before, listing = digest(tmp_path), sorted(p.name for p in tmp_path.rglob("*"))
    code, _, err = run_cli(["enhance", dicom, "-o", tmp_path / "o.nrrd", "--progress", "json", *FAST, *extra], capsys)
    assert_refused(code, err, message)
    assert '"training"' not in err  # refused before training started
    assert digest(tmp_path) == before and sorted(p.name for p in tmp_path.rglob("*")) == listing


# ---- row 5: two runs to the same output: exactly one publishes -------------------------------------------------------
def test_racing_runs_publish_exactly_once(tmp_path, small_ct):
    from SR4ZCTLib.io.publish import OutputPlan, Publication
    from SR4ZCTLib.io.volumes import stage_volume

    target = tmp_path / "o.nrrd"
    plans = [OutputPlan(None), OutputPlan(None)]
    for plan in plans:
        plan.add("-o", target)  # both checks pass: the file does not exist yet
    first, second = Publication(plans[0]), Publication(plans[1])
    stage_volume(first, Volume(small_ct, MATRIX), target)
    stage_volume(second, Volume(small_ct + 1, MATRIX), target)
    first.publish()
    with pytest.raises(InputError, match="appeared while this run worked"):
        second.publish()
    np.testing.assert_array_equal(read_volume(target).array, small_ct)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.nrrd"]


# ---- row 6: truncated inputs of every format are refused --------------------------------------------------------------
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


# ---- row 7: integer values above 32767 keep a type that holds them ------------------------------------------------
@pytest.mark.parametrize("dtype,command", [(np.uint16, "enhance"), (np.int32, "enhance"), (np.uint16, "simulate"),
                                           (np.int32, "simulate")])
def test_large_integer_values_are_not_clipped(tmp_path, small_ct, capsys, dtype, command):
    array = (small_ct.astype(np.int64) + 1024) * 30  # up to about 52000
    source = write_volume(Volume(array.astype(dtype), MATRIX), tmp_path / "big.nrrd")
    if command == "enhance":
        args = ["enhance", source, "-o", tmp_path / "o.nrrd", "--allow-non-hu", "--progress", "none", *FAST]
    else:
        args = ["simulate", source, "-o", tmp_path / "o.nrrd", "--thickness", "5", "--increment", "5"]
    code, _, err = run_cli(args, capsys)
    assert code == 0, err
    result = read_volume(tmp_path / "o.nrrd").array
    assert result.max() > 45000, (result.dtype, result.max())


# ---- rows 8 and 13: DICOM header oddities, each an error naming the file -----------------------------------------------
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


# ---- row 9: detached data files outside the header's folder -------------------------------------------------------
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


# ---- row 10: model files validated; a reused model reports no validation of this scan --------------------------------
MODEL_DAMAGE = [
    ("missing-key", {"grid_spacing_mm": KeyError}),
    ("extra-key", {"surprise": 1}),
    ("unknown-architecture", {"architecture": "transformer"}),
    ("huge-depth", {"network_options.depth": 100000}),
    ("huge-width", {"network_options.width": 4096}),
    ("scale-zero", {"normalisation.scale": 0.0}),
    ("offset-nan", {"normalisation.offset": float("nan")}),
    ("weight-nan", {"state_dict.body.0.bias": torch.full((4,), float("nan"))}),
    ("weight-shape", {"state_dict.body.0.bias": torch.zeros(7)}),
    ("thickness-absurd", {"acquisition.thickness_mm": 1e308}),
]


@pytest.mark.parametrize("changes", [c for _, c in MODEL_DAMAGE], ids=[n for n, _ in MODEL_DAMAGE])
def test_bad_model_files_are_refused(tmp_path, ct, capsys, changes):
    model = small_model(tmp_path / "m.pt", **changes)
    code, _, err = run_cli(["enhance", ct, "-o", tmp_path / "o.nrrd", "--model", model, *FAST], capsys)
    assert_refused(code, err, "not a valid SR4ZCT model")
    assert not (tmp_path / "o.nrrd").exists()


def test_reused_model_does_not_claim_this_scans_validation(tmp_path, ct, capsys):
    model = small_model(tmp_path / "m.pt")
    code, out, err = run_cli(["enhance", ct, "-o", tmp_path / "o.nrrd", "--model", model, "--report", tmp_path / "r",
                              "--progress", "none", *FAST], capsys)
    assert code == 0, err
    assert "validation PSNR" not in out and "no validation on this scan" in out
    training = json.loads((tmp_path / "r" / "metrics.json").read_text())["training"]
    assert "validation_psnr_db" not in training and training["training_scan"]["validation_psnr_db"] == 41.0


# ---- row 12: absurd numbers refused with their range -----------------------------------------------------------------
ABSURD = [
    (["--thickness", "1e308"], "--thickness.*outside"), (["--thickness", "1e-320"], "--thickness"),
    (["--increment", "1e308"], "--increment.*outside"), (["--increment", "1e-320"], "--increment"),
    (["--target-spacing", "1e-320"], "--target-spacing"), (["--target-spacing", "1e308"], "--target-spacing.*outside"),
    (["--target-spacing", "0.0001"], "--target-spacing.*outside"), (["--target-spacing", "100"], "--target-spacing"),
    (["--target-spacing", "5"], "coarser than the slice increment"), (["--seed", str(2**70)], "--seed.*outside"),
    (["--seed", "-1"], "--seed.*outside"), (["--iterations", str(10**12)], "--iterations.*outside"),
]


@pytest.mark.parametrize("extra,message", ABSURD, ids=[" ".join(a) for a, _ in ABSURD])
def test_absurd_numbers_are_refused_before_work(tmp_path, ct, capsys, extra, message):
    iterations = [] if "--iterations" in extra else ["--iterations", "2"]  # a short run if one ever started
    code, _, err = run_cli(["enhance", ct, "-o", tmp_path / "o.nrrd", "--device", "cpu", "--progress", "json",
                            *iterations, *extra], capsys)
    assert_refused(code, err, message)
    assert '"training"' not in err and not (tmp_path / "o.nrrd").exists()


def test_output_larger_than_free_disk_space_is_refused(tmp_path, ct, capsys, monkeypatch):
    import shutil

    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda p: real(p)._replace(free=4 * 2**20))  # a nearly full disk
    code, _, err = run_cli(["enhance", ct, "-o", tmp_path / "o.nrrd", "--progress", "json", *FAST], capsys)
    assert_refused(code, err, "MiB free; free disk space")
    assert '"training"' not in err and not (tmp_path / "o.nrrd").exists()


# ---- row 14: SIGHUP cancels; stale partial files of dead runs are removed ----------------------------------------------
def test_sighup_cancels_like_sigterm_and_leaves_nothing(tmp_path, ct):
    process = subprocess.Popen([sys.executable, "-m", "SR4ZCTLib.cli", "enhance", str(ct), "-o", str(tmp_path / "o.nrrd"),
                                "--iterations", "1000000", "--device", "cpu", "--progress", "json"],
                               stderr=subprocess.PIPE, text=True, env=subprocess_env())
    for line in process.stderr:
        if '"stage": "training"' in line:
            break
    process.send_signal(signal.SIGHUP)
    _, err = process.communicate(timeout=30)
    assert process.returncode == 130 and "cancelled" in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ct.nrrd"]


def test_stale_partial_files_of_dead_runs_are_removed(tmp_path, ct, capsys):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".o.nrrd.sr4zct-{dead.pid}-0.partial.nrrd"
    stale.write_bytes(b"half a volume")
    code, _, err = run_cli(["enhance", ct, "-o", tmp_path / "o.nrrd", "--progress", "none", *FAST], capsys)
    assert code == 0, err
    assert not stale.exists() and f"removed {stale}" in err
    from SR4ZCTLib.io.publish import partial_name

    assert re.fullmatch(rf"\.o\.nii\.gz\.sr4zct-{os.getpid()}-\d+\.partial\.nii\.gz", partial_name(tmp_path / "o.nii.gz").name)


# ---- row 15: closed pipe, demo onto a file --------------------------------------------------------------------------
def test_closed_pipe_ends_quietly(ct):
    process = subprocess.Popen([sys.executable, "-m", "SR4ZCTLib.cli", "info", "--json", str(ct)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=subprocess_env())
    process.stdout.close()  # like `| head -1` having exited
    err = process.stderr.read().decode()
    process.wait(timeout=60)
    assert "Traceback" not in err and "BrokenPipe" not in err, err


def test_demo_out_onto_a_file_is_refused(tmp_path, capsys):
    target = tmp_path / "file.txt"
    target.write_text("keep")
    code, _, err = run_cli(["demo", "--out", target], capsys)
    assert_refused(code, err, "is a file; give a folder")
    assert target.read_text() == "keep"


# ---- row 16: --progress json is strict JSON, warnings included ---------------------------------------------------------
def _no_constants(name):
    raise ValueError(f"non-standard JSON constant {name}")


def test_progress_json_is_strict_with_warnings_as_objects(tmp_path, ct, capsys):
    code, _, err = run_cli(["enhance", ct, "-o", tmp_path / "o.nrrd", "--iterations", "2", "--device", "cpu",
                            "--progress", "json"], capsys)
    assert code == 0, err
    events = [json.loads(line, parse_constant=_no_constants) for line in err.splitlines()]
    assert any("thickness unknown" in e.get("warning", "") for e in events)
    assert events[-1]["stage"] == "done"
    from SR4ZCTLib.progress import Progress

    SR4ZCTLib.cli.common.Console("json")(Progress("training", 0.5, "x", {"loss": float("nan"), "psnr": float("inf")}))
    event = json.loads(capsys.readouterr().err, parse_constant=_no_constants)
    assert event["metrics"] == {"loss": None, "psnr": None}


def test_worker_json_warnings_reach_the_slicer_log():
    pytest.importorskip("slicer")
    from SR4ZCTLib.mrml.job import EnhanceJob, EnhanceRequest

    class Node:
        def GetName(self):
            return "CT"

    logged = []
    job = EnhanceJob(Node(), EnhanceRequest(), sys.executable, on_log=logged.append)
    job._handle_line(json.dumps({"warning": "slices have a gap"}))
    assert logged == ["warning: slices have a gap"] and job.last_progress is None


# ---- row 17: NIfTI qform and sform disagree -----------------------------------------------------------------------------
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


# ---- row 18: same input, same seed, CPU: identical output whatever OMP_NUM_THREADS says ------------------------------
def test_seeded_cpu_run_is_identical_across_omp_thread_counts(tmp_path):
    rng = np.random.default_rng(2)
    z, y, x = np.mgrid[0:8, 0:80, 0:80]
    array = np.where((y - 40) ** 2 + (x - 40) ** 2 < 35 ** 2, 40, -1000) + 600 * (
        (y - 30) ** 2 + (x - 45) ** 2 + ((z - 4) * 3) ** 2 < 100)
    source = write_volume(Volume((array + rng.normal(0, 20, array.shape)).astype(np.int16),
                                 Volume.matrix_from((0, 0, 0), (0.7, 0.7, 3.0), np.eye(3))), tmp_path / "ct.nrrd")
    results = []
    for threads in ("1", "2"):
        output = tmp_path / f"o{threads}.nrrd"
        run = subprocess.run([sys.executable, "-m", "SR4ZCTLib.cli", "enhance", str(source), "-o", str(output),
                              "--iterations", "30", "--device", "cpu", "--seed", "3", "--thickness", "3",
                              "--progress", "none"], capture_output=True, text=True, timeout=600,
                             env=subprocess_env(OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads))
        assert run.returncode == 0, run.stderr
        results.append(read_volume(output).array)
    np.testing.assert_array_equal(*results)


# ---- the Slicer worker path: rows 3, 10, 12 ----------------------------------------------------------------------------
@pytest.fixture
def node(small_ct):
    slicer = pytest.importorskip("slicer")
    import slicer.util

    from SR4ZCTLib.mrml.nodes import set_ijk_to_ras

    slicer.mrmlScene = slicer.vtkMRMLScene()
    volume_node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "CT")
    slicer.util.updateVolumeFromArray(volume_node, small_ct)
    set_ijk_to_ras(volume_node, MATRIX)
    yield volume_node
    slicer.mrmlScene.Clear(1)


def _job_existing_model(tmp_path):
    (tmp_path / "m.pt").write_bytes(b"keep")
    return {"save_model_path": str(tmp_path / "m.pt")}, "exists"


def _job_bad_model(tmp_path):
    return {"model_path": str(small_model(tmp_path / "bad.pt", **{"normalisation.scale": 0.0}))}, "not a valid SR4ZCT model"


def _job_absurd_target(tmp_path):
    return {"target_spacing_mm": 100.0}, "--target-spacing"


def _job_absurd_thickness(tmp_path):
    return {"thickness_mm": 1e308}, "thickness.*outside"


JOB_CASES = [_job_existing_model, _job_bad_model, _job_absurd_target, _job_absurd_thickness]


@pytest.mark.parametrize("case", JOB_CASES, ids=[c.__name__ for c in JOB_CASES])
def test_worker_path_refuses_with_the_same_message(tmp_path, node, case):
    from SR4ZCTLib.mrml.job import EnhanceJob, EnhanceRequest

    options, message = case(tmp_path)
    scene = node.GetScene()
    count = scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode")
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(InputError, match=message):
        job = EnhanceJob(node, EnhanceRequest(iterations=2, device="cpu", **options), sys.executable)
        job.start().wait(timeout=120)
    assert scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode") == count
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    if (tmp_path / "m.pt").exists():
        assert (tmp_path / "m.pt").read_bytes() == b"keep"
