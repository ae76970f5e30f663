"""Reliability table, io/publish.py: disk full caught by verification, racing runs publish exactly once (rows 17, 20, 21).

Each case checks the exit code, one `error:` line without a traceback, that nothing was published
and that the input's bytes are unchanged."""

from __future__ import annotations

import re
import signal
import subprocess
import sys

import numpy as np
import pytest

from reliability import FAST, LIMITED_WRITE, InputError, MATRIX, SR4ZCTLib, Volume, assert_refused, cli, ct, digest, read_volume, subprocess_env  # noqa: F401 (fixtures among them)


# ---- row 17 (and 20): disk full while writing: verified, nothing published, an old output kept ----------------------


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
    target.write_bytes(b"previous output")  # --overwrite: this must survive the failed run (row 20)
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


# ---- row 21: two runs to the same output: exactly one publishes -------------------------------------------------------
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
