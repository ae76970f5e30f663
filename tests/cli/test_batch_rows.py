"""Reliability table, batch (issue 17): outputs never inputs or foreign files, resume fingerprints every input file,
the enhance ranges before the cluster, readable manifests, one batch per --out (rows 1, 4, 6, 8, 16, 18-21).

Each refusal checks the exit code, one `error:` line without a traceback, that nothing was written and that the
inputs' bytes are unchanged."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from reliability import FAST, MATRIX, Volume, assert_refused, dicom, run_cli, subprocess_env, unprivileged, write_volume  # noqa: F401

pytest.importorskip("distributed")
RUN = ["--progress", "none", *FAST]


@pytest.fixture
def cohort(tmp_path, small_ct) -> Path:
    """data/a.nrrd and data/b.nhdr (detached data file) with a manifest naming both."""
    import SimpleITK as sitk

    data = tmp_path / "data"
    data.mkdir()
    write_volume(Volume(small_ct, MATRIX), data / "a.nrrd")
    image = sitk.GetImageFromArray(small_ct)
    image.SetSpacing((0.7, 0.7, 2.5))
    sitk.WriteImage(image, str(data / "b.nhdr"))
    manifest = tmp_path / "cohort.csv"
    manifest.write_text("input,output\ndata/a.nrrd,a\ndata/b.nhdr,b\n")
    return manifest


def _unchanged(tmp_path: Path):
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    return lambda: {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before


# ---- row 1: an output that is another row's input, or the manifest, is refused before any work ------------------------
OVERLAPS = [
    ("row-input", "input,output\ndata/a.nrrd,a_sr\ndata/b.nhdr,a\n", "data", r"data/a\.nrrd would overwrite the input"),
    ("dicom-folder", "input,output\nseries,s\n", "series", r"series/s\.nrrd would overwrite the input .*series"),
]


@pytest.mark.parametrize("text,out,message", [c[1:] for c in OVERLAPS], ids=[c[0] for c in OVERLAPS])
def test_an_output_that_is_an_input_of_the_batch_is_refused(tmp_path, cohort, dicom, capsys, text, out, message):
    cohort.write_text(text)
    unchanged = _unchanged(tmp_path)
    code, _, err = run_cli(["batch", cohort, "--out", tmp_path / out, *RUN], capsys)
    assert_refused(code, err, message)
    assert unchanged()


def test_the_manifest_itself_is_never_an_output(tmp_path, cohort, capsys):
    manifest = tmp_path / "a.metrics.json"  # a manifest named like row a's metrics file
    manifest.write_text(cohort.read_text())
    unchanged = _unchanged(tmp_path)
    code, _, err = run_cli(["batch", manifest, "--out", tmp_path, *RUN], capsys)
    assert_refused(code, err, r"a\.metrics\.json would overwrite the input")
    assert unchanged()


# ---- row 4: an existing NAME.nrrd the batch did not write is refused unless --overwrite ------------------------------
def test_a_foreign_output_is_refused_unless_overwrite(tmp_path, cohort, capsys):
    cohort.write_text("input,output\ndata/a.nrrd,a\n")
    out = tmp_path / "out"
    out.mkdir()
    (out / "a.nrrd").write_bytes(b"someone's own volume")
    unchanged = _unchanged(tmp_path)
    code, _, err = run_cli(["batch", cohort, "--out", out, *RUN], capsys)
    assert_refused(code, err, r"line 2: .*a\.nrrd exists and was not written by sr4zct batch.*--overwrite")
    assert unchanged() and sorted(p.name for p in out.iterdir()) == ["a.nrrd"]
    code, stdout, err = run_cli(["batch", cohort, "--out", out, "--overwrite", *RUN], capsys)
    assert code == 0 and "1 enhanced" in stdout, err
    assert (out / "a.nrrd").read_bytes() != b"someone's own volume"
    code, stdout, err = run_cli(["batch", cohort, "--out", out, *RUN[:-1], "3.0"], capsys)  # its own: redone
    assert code == 0 and "1 enhanced" in stdout, err


# ---- row 6: resume fingerprints every file of the input (a .nhdr's data file too) -----------------------------------
def test_a_changed_detached_data_file_is_not_already_done(tmp_path, cohort, small_ct):
    from SR4ZCTLib.batch import read_manifest, task_key
    from SR4ZCTLib.options import RunOptions

    series = read_manifest(cohort)[1]
    before = task_key(series, RunOptions())
    raw = next(p for p in (tmp_path / "data").iterdir() if p.name.startswith("b.") and p.suffix != ".nhdr")
    data = bytearray(raw.read_bytes())
    data[:2] = bytes([data[0] ^ 1, data[1]])
    raw.write_bytes(bytes(data) + b"")  # same size, new bytes and time: the header is untouched
    import os

    os.utime(raw, ns=(raw.stat().st_atime_ns, raw.stat().st_mtime_ns + 10**9))
    assert task_key(series, RunOptions()) != before


# ---- row 8: batch options are enhance's, range-checked before the cluster starts --------------------------------------
@pytest.mark.parametrize("value", ["0", "-1", "nan", "1e308"])
def test_batch_target_spacing_out_of_range_is_refused_first(tmp_path, cohort, capsys, value):
    code, _, err = run_cli(["batch", cohort, "--out", tmp_path / "out", f"--target-spacing={value}", *RUN], capsys)
    assert_refused(code, err, "--target-spacing")
    assert not (tmp_path / "out").exists()


def test_the_batch_engine_checks_ranges_before_the_cluster(tmp_path, cohort):
    from SR4ZCTLib.batch import read_manifest, run_batch
    from SR4ZCTLib.errors import InputError
    from SR4ZCTLib.options import RunOptions

    with pytest.raises(InputError, match="--target-spacing 0.0 is outside"):
        run_batch(read_manifest(cohort), tmp_path, RunOptions(target_spacing_mm=0.0), scheduler="tcp://127.0.0.1:9")


# ---- row 16: a Latin-1 manifest, an --out under a read-only folder ----------------------------------------------------
def test_a_latin1_manifest_is_refused_with_the_fix(tmp_path, cohort, capsys):
    cohort.write_bytes("input,output\ndata/a.nrrd,a\ndata/b.nhdr,caf\xe9\n".encode("latin-1"))
    code, _, err = run_cli(["batch", cohort, "--out", tmp_path / "out", *RUN], capsys)
    assert_refused(code, err, "line 3: not UTF-8.*CSV UTF-8")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("where", ["parent", "out"])
def test_an_out_in_a_read_only_folder_is_refused_first(tmp_path, cohort, capsys, where):
    locked = tmp_path / "locked"
    locked.mkdir()
    out = locked / "out" if where == "parent" else locked
    locked.chmod(0o555)
    try:
        with unprivileged(tmp_path):  # as root, as `nobody`: root writes into read-only folders
            code, _, err = run_cli(["batch", cohort, "--out", out, *RUN], capsys)
    finally:
        locked.chmod(0o755)
    assert_refused(code, err, "is not writable; choose another --out")
    assert list(locked.iterdir()) == []


# ---- row 18: --workers bounded; warnings as JSON objects -------------------------------------------------------------
@pytest.mark.parametrize("workers", ["0", "100000"])
def test_workers_out_of_range_are_refused(tmp_path, cohort, capsys, workers):
    code, _, err = run_cli(["batch", cohort, "--out", tmp_path / "out", "--workers", workers, *RUN], capsys)
    assert_refused(code, err, "--workers .* outside its range 1..256")


def test_batch_progress_json_is_strict_with_the_workers_warnings(tmp_path, cohort, small_ct):
    noise = np.random.default_rng(0).normal(-550, 200, small_ct.shape).astype(np.float32)  # nothing to learn: a warning
    write_volume(Volume(noise, MATRIX), tmp_path / "data" / "noise.nrrd")
    cohort.write_text("input,output\ndata/noise.nrrd,a\n")
    run = subprocess.run([sys.executable, "-m", "SR4ZCTLib.cli", "batch", str(cohort), "--out", str(tmp_path / "out"),
                          "--workers", "8", "--progress", "json", *FAST], capture_output=True, text=True,
                         env=subprocess_env(), timeout=300)  # 8 workers asked, 1 series: capped to 1
    assert run.returncode == 0, run.stderr
    events = [json.loads(line) for line in run.stderr.splitlines()]  # every line a JSON object, workers' too
    assert {"stage": "batch", "series": "a", "status": "done"} in events
    assert any(e.get("warning", "").startswith("a: training learned nothing") for e in events), events


# ---- row 20: line numbers after blank lines; names with spaces or accents; extra cells --------------------------------
def test_manifest_details(tmp_path, cohort):
    from SR4ZCTLib.batch import read_manifest
    from SR4ZCTLib.errors import InputError

    cohort.write_text("input,output\n\ndata/a.nrrd,a\n\n,\n")
    with pytest.raises(InputError, match="line 5: empty input"):
        read_manifest(cohort)
    cohort.write_text("input,output\ndata/a.nrrd,a,extra\n")
    with pytest.raises(InputError, match="line 2 has more cells than the header"):
        read_manifest(cohort)
    (tmp_path / "data" / "Müller scan.nrrd").write_bytes((tmp_path / "data" / "a.nrrd").read_bytes())
    cohort.write_text("input\ndata/Müller scan.nrrd\n")
    assert read_manifest(cohort)[0].name == "Müller scan"


# ---- row 21: two batches on one --out: a lock, a dead holder's taken over --------------------------------------------
def test_a_second_batch_on_the_same_out_is_refused(tmp_path, cohort, capsys):
    out = tmp_path / "out"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (out / ".sr4zct-batch.lock").write_text(f"{holder.pid}\n")
        code, _, err = run_cli(["batch", cohort, "--out", out, *RUN], capsys)
    finally:
        holder.kill()
        holder.wait()
    assert_refused(code, err, rf"another sr4zct batch \(process {holder.pid}\) is writing to .*out")
    assert sorted(p.name for p in out.iterdir()) == [".sr4zct-batch.lock"]


def test_a_dead_batchs_lock_is_taken_over(tmp_path, cohort, capsys):
    cohort.write_text("input,output\ndata/a.nrrd,a\n")
    out = tmp_path / "out"
    out.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (out / ".sr4zct-batch.lock").write_text(f"{dead.pid}\n")
    code, stdout, err = run_cli(["batch", cohort, "--out", out, *RUN], capsys)
    assert code == 0 and "1 enhanced" in stdout, err
    assert f"removed the lock {out / '.sr4zct-batch.lock'} of an interrupted run (process {dead.pid})" in err
    assert not (out / ".sr4zct-batch.lock").exists()


# ---- row 19: SIGTERM during a batch says which finished series were kept ---------------------------------------------
def test_sigterm_during_batch_says_what_was_kept(tmp_path, cohort, small_ct, capsys):
    big = np.tile(small_ct, (8, 16, 16))  # 48 x 384 x 320: long enough to be cancelled while it runs
    write_volume(Volume(big, MATRIX), tmp_path / "data" / "big.nrrd")
    cohort.write_text("input,output\ndata/a.nrrd,a\n")
    assert run_cli(["batch", cohort, "--out", tmp_path / "out", *RUN], capsys)[0] == 0
    cohort.write_text("input,output\ndata/a.nrrd,a\ndata/big.nrrd,big\n")
    process = subprocess.Popen([sys.executable, "-m", "SR4ZCTLib.cli", "batch", str(cohort), "--out",
                                str(tmp_path / "out"), *RUN], stderr=subprocess.PIPE, text=True, env=subprocess_env())
    import time

    time.sleep(10)  # the cluster is up and `big` is being enhanced
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    assert "cancelled: 1 finished series kept in" in err and "(a)" in err and "resume" in err, err
    assert not (tmp_path / "out" / "big.nrrd").exists() and not (tmp_path / "out" / ".sr4zct-batch.lock").exists()
