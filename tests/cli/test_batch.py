"""`sr4zct batch` on a real Dask LocalCluster: 3 tiny series (one bad), then a resumed run that does nothing."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from SR4ZCTLib.batch import read_manifest
from SR4ZCTLib.errors import InputError
from SR4ZCTLib.core.volume import Volume
from SR4ZCTLib.io.volumes import read_volume, write_volume

from conftest import run_cli

pytest.importorskip("distributed")
MATRIX = Volume.matrix_from((1.0, -2.0, 3.0), (0.8, 0.8, 2.5), np.eye(3))
RUN = ["--iterations", "2", "--device", "cpu", "--progress", "none", "--thickness", "2.5"]


@pytest.fixture
def cohort(tmp_path, small_ct) -> Path:
    """Two good series (one with its own thickness) and one bad one (a 2D image), with a manifest."""
    import SimpleITK as sitk

    data = tmp_path / "data"
    data.mkdir()
    write_volume(Volume(small_ct, MATRIX), data / "a.nrrd")
    write_volume(Volume(np.flip(small_ct, axis=2).copy(), MATRIX), data / "b.nii.gz")
    sitk.WriteImage(sitk.GetImageFromArray(small_ct[0]), str(data / "flat.nrrd"))
    manifest = tmp_path / "cohort.csv"
    manifest.write_text("input,thickness,increment,output\n"
                        "data/a.nrrd,,,\n"
                        "data/b.nii.gz,3.0,2.5,second\n"
                        "data/flat.nrrd,,,\n")
    return manifest


def test_batch_on_two_workers_then_resume_does_nothing(tmp_path, cohort, capsys):
    out = tmp_path / "out"
    code, stdout, err = run_cli(["batch", cohort, "--out", out, "--workers", "2", *RUN], capsys)
    assert code == 2 and err.strip().splitlines()[-1].startswith("error: 1 of 3 series failed (first: flat"), err
    assert "2 enhanced, 0 already done, 1 failed" in stdout
    rows = {row["name"]: row for row in csv.DictReader(open(out / "summary.csv"))}
    assert [rows[name]["status"] for name in ("a", "second", "flat")] == ["done", "done", "failed"]
    assert "not a 3D volume" in rows["flat"]["error"]
    assert float(rows["a"]["validation_psnr_db"]) > 0 and float(rows["a"]["seconds"]) > 0
    summary = json.loads((out / "summary.json").read_text())
    assert [row["name"] for row in summary] == ["a", "second", "flat"]
    first = read_volume(out / "a.nrrd")
    assert first.array.shape[1:] == (24, 20) and np.allclose(first.origin, MATRIX[:3, 3])
    metrics = json.loads((out / "second.metrics.json").read_text())
    assert metrics["acquisition"]["thickness_mm"] == 3.0  # the row's own thickness
    stamps = {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.name.startswith(("a.", "second."))}

    from distributed import LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as cluster:
        code, stdout, err = run_cli(["batch", cohort, "--out", out, "--scheduler", cluster.scheduler_address, *RUN],
                                    capsys)  # an existing cluster: only the bad series goes to it, and fails again
    assert "0 enhanced, 2 already done, 1 failed" in stdout, stdout + err
    rows = {row["name"]: row for row in csv.DictReader(open(out / "summary.csv"))}
    assert [rows[name]["status"] for name in ("a", "second", "flat")] == ["skipped", "skipped", "failed"]
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.name.startswith(("a.", "second."))} == stamps


def test_changed_settings_are_not_skipped(tmp_path, cohort, capsys):
    cohort.write_text("input\ndata/a.nrrd\n")
    out = tmp_path / "out"
    assert run_cli(["batch", cohort, "--out", out, *RUN], capsys)[0] == 0
    code, stdout, err = run_cli(["batch", cohort, "--out", out, *RUN[:-1], "2.0"], capsys)  # another thickness
    assert code == 0 and "1 enhanced, 0 already done" in stdout, stdout + err


@pytest.mark.parametrize("text,message", [
    ("path,thickness\nx.nrrd,1\n", "no `input` column"),
    ("input,colour\nx.nrrd,red\n", "unknown column"),
    ("input,thickness\nx.nrrd,-1\n", "line 2: thickness '-1' must be a positive"),
    ("input,output\nx.nrrd,same\ny.nrrd,same\n", "lines 2 and 3 both write same"),
    ("input,output\nx.nrrd,../escape\n", "must be a plain file name"),
    ("input\n", "lists no series"),
])
def test_bad_manifests_are_refused_before_any_work(tmp_path, text, message):
    manifest = tmp_path / "m.csv"
    manifest.write_text(text)
    with pytest.raises(InputError, match=message):
        read_manifest(manifest)


def test_bad_manifest_from_the_cli_writes_nothing(tmp_path, capsys):
    manifest = tmp_path / "m.csv"
    manifest.write_text("file\nx.nrrd\n")
    code, _, err = run_cli(["batch", manifest, "--out", tmp_path / "out"], capsys)
    assert code == 2 and err.startswith("error:") and not (tmp_path / "out").exists()
