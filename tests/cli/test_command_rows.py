"""Reliability table, cli/: absurd numbers and full disks refused first, SIGHUP, stale partial files, closed pipes, strict --progress json (rows 15, 27, 29, 30, 31).

Each case checks the exit code, one `error:` line without a traceback, that nothing was published
and that the input's bytes are unchanged."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys

import pytest

from reliability import FAST, SR4ZCTLib, assert_refused, cli, ct, run_cli, subprocess_env  # noqa: F401 (fixtures among them)


# ---- row 27: absurd numbers refused with their range -----------------------------------------------------------------
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


# ---- rows 15 and 29: SIGHUP cancels; stale partial files of dead runs are removed -----------------------------------
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


# ---- row 30: closed pipe, demo onto a file --------------------------------------------------------------------------
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


# ---- row 31: --progress json is strict JSON, warnings included ---------------------------------------------------------
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
