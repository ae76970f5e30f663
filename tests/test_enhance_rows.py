"""Reliability table, enhance.py: integer outputs keep a type that holds them; seeded CPU runs identical whatever OMP_NUM_THREADS (rows 11, 33).

Each case checks the exit code, one `error:` line without a traceback, that nothing was published
and that the input's bytes are unchanged."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from reliability import FAST, MATRIX, SR4ZCTLib, Volume, cli, ct, read_volume, run_cli, subprocess_env, write_volume  # noqa: F401 (fixtures among them)


# ---- row 11: integer values above 32767 keep a type that holds them ------------------------------------------------
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


# ---- row 33: same input, same seed, CPU: identical output whatever OMP_NUM_THREADS says ------------------------------
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


# ---- issue 17 row 11: a target spacing a hair above the increment is the increment: the last slice kept -------------
@pytest.mark.parametrize("target", ["2.5", "2.500002"])
def test_a_target_spacing_within_rounding_of_the_increment_keeps_every_slice(tmp_path, ct, capsys, target):
    code, _, err = run_cli(["enhance", ct, "-o", tmp_path / "o.nrrd", "--target-spacing", target, "--progress", "none",
                            *FAST], capsys)
    assert code == 0, err
    result = read_volume(tmp_path / "o.nrrd")
    assert result.array.shape[0] == read_volume(ct).array.shape[0] and abs(result.spacing[2] - 2.5) < 1e-9
