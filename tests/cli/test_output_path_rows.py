"""Reliability table, every output path of a run checked before any work (rows 18, 19, 26).

Each case checks the exit code, one `error:` line without a traceback, that nothing was published
and that the input's bytes are unchanged."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

import pytest

from reliability import FAST, assert_refused, dicom, digest, run_cli, unprivileged  # noqa: F401 (fixtures among them)


# ---- rows 18, 19, 26: every output path checked before any work ---------------------------------------------------
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
    before, listing = digest(tmp_path), sorted(p.name for p in tmp_path.rglob("*"))
    with unprivileged(tmp_path) if case is _report_folder_unwritable else contextlib.nullcontext():  # root writes anywhere
        code, _, err = run_cli(["enhance", dicom, "-o", tmp_path / "o.nrrd", "--progress", "json", *FAST, *extra],
                               capsys)
    assert_refused(code, err, message)
    assert '"training"' not in err  # refused before training started
    assert digest(tmp_path) == before and sorted(p.name for p in tmp_path.rglob("*")) == listing
