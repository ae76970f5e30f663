"""`--profile auto|blurred-box` and `--training-noise auto` through the engine and the command line (issue 16):
what was estimated is what training used, it is recorded, and an estimate that cannot be trusted falls back."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

from SR4ZCTLib.cli import main
from SR4ZCTLib.options import DEFAULT_PROFILE
from SR4ZCTLib.core.phantom import make_ball_phantom
from SR4ZCTLib.core.slice_profile import GAUSSIAN_FWTM_RATIO, member_from_widths, simulate_stack
from SR4ZCTLib.core.volume import Volume, read_through_plane_geometry
from SR4ZCTLib.enhance import enhance
from SR4ZCTLib.io.volumes import write_volume
from SR4ZCTLib.options import RunOptions

QUICK = dict(device="cpu", threads=1, iterations=2, force=True)


@pytest.fixture(scope="module")
def gaussian_scan() -> Volume:
    """A ball phantom (0.8 mm) acquired with a Gaussian profile of FWHM 5 mm every 2.5 mm, 10 HU noise."""
    truth = make_ball_phantom((200, 128, 128), 0.8, 500, seed=5)
    w, sigma = member_from_widths(5.0, GAUSSIAN_FWTM_RATIO)
    stack = simulate_stack(truth, 0.8, 2.5, w, sigma, noise_hu=10.0)
    return Volume(np.round(stack).astype(np.int16), Volume.matrix_from((0, 0, 0), (0.8, 0.8, 2.5), np.eye(3)))


def test_profile_auto_trains_with_what_it_estimated_and_records_it(gaussian_scan):
    geometry, _ = read_through_plane_geometry(gaussian_scan, 5.0, None, "auto")
    assert geometry.acquisition.profile == DEFAULT_PROFILE  # resolved when the run starts, from the voxels
    result = enhance(gaussian_scan, geometry, RunOptions(profile="auto", **QUICK))
    used = result.geometry.acquisition
    note = result.metrics.extra["slice_profile"]
    assert note["source"] == "estimated" and note["trusted"]
    assert used.profile in ("blurred-box", "gaussian") and used.thickness_mm == pytest.approx(5.0, rel=0.05)
    assert used.fwtm_ratio * used.thickness_mm == pytest.approx(GAUSSIAN_FWTM_RATIO * 5.0, rel=0.10)
    assert result.metrics.acquisition["profile"] == used.profile  # metrics.json says what training used
    assert result.metrics.acquisition["thickness_mm"] == pytest.approx(used.thickness_mm)
    assert result.model.acquisition == used  # and a saved model carries it


def test_profile_auto_on_too_few_slices_falls_back_to_the_default_profile_with_a_warning(gaussian_scan):
    few = Volume(np.ascontiguousarray(gaussian_scan.array[:6]), gaussian_scan.ijk_to_world)  # the estimator needs 8
    geometry, _ = read_through_plane_geometry(few, 5.0, None, "auto")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = enhance(few, geometry, RunOptions(profile="auto", **QUICK))
    assert any("not trusted" in str(w.message) and "default blurred-box of the nominal 5 mm" in str(w.message)
               for w in caught)
    assert result.geometry.acquisition.profile == DEFAULT_PROFILE and result.geometry.acquisition.thickness_mm == 5.0
    assert result.metrics.extra["slice_profile"]["trusted"] is False


def test_training_noise_auto_measures_the_noise_and_records_it(gaussian_scan):
    geometry, _ = read_through_plane_geometry(gaussian_scan, 5.0, None, "blurred-box")
    result = enhance(gaussian_scan, geometry, RunOptions(training_noise="auto", **QUICK))
    noise = result.metrics.training["training_noise"]
    assert noise["std_hu"] == pytest.approx(10.0, rel=0.15)
    assert 0 < noise["added_std_hu"] < noise["std_hu"]  # part of it the degradation left of the images' own noise
    off = enhance(gaussian_scan, geometry, RunOptions(training_noise="off", **QUICK))
    assert "training_noise" not in off.metrics.training


def test_the_cli_runs_auto_and_blurred_box_and_writes_them_to_metrics(tmp_path, gaussian_scan, capsys):
    source = write_volume(gaussian_scan, tmp_path / "scan.nrrd")
    code = main(["enhance", str(source), "-o", str(tmp_path / "sr.nrrd"), "--thickness", "5", "--profile", "auto",
                 "--training-noise", "auto", "--iterations", "2", "--device", "cpu", "--progress", "none",
                 "--report", str(tmp_path / "report")])
    assert code == 0, capsys.readouterr().err
    metrics = json.loads((tmp_path / "report" / "metrics.json").read_text())
    assert metrics["acquisition"]["profile"] in ("blurred-box", "gaussian")
    assert metrics["slice_profile"]["source"] == "estimated"
    assert metrics["training"]["training_noise"]["std_hu"] > 0
    code = main(["simulate", str(source), "-o", str(tmp_path / "bad.nrrd"), "--thickness", "5", "--increment", "5",
                 "--profile", "auto"])
    assert code == 2 and "invalid choice: 'auto'" in capsys.readouterr().err  # a simulation needs a real profile


def test_the_default_on_a_noise_free_scan_trains_without_noise_and_says_so_without_a_warning():
    """Training noise is on by default: a simulation without noise is no fault, so no warning, and metrics.json says
    that nothing was added."""
    truth = make_ball_phantom((120, 64, 64), 0.8, 150, seed=2)
    w, sigma = member_from_widths(5.0, 1.7)
    stack = simulate_stack(truth, 0.8, 2.5, w, sigma, noise_hu=0.0)
    scan = Volume(stack.astype(np.float32), Volume.matrix_from((0, 0, 0), (0.8, 0.8, 2.5), np.eye(3)))
    geometry, _ = read_through_plane_geometry(scan, 5.0, None, None)
    assert geometry.acquisition.profile == DEFAULT_PROFILE == "blurred-box"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = enhance(scan, geometry, RunOptions(**QUICK))
    assert not [w for w in caught if "noise" in str(w.message)]
    assert result.metrics.training["training_noise"]["added_std_hu"] == 0.0
    assert "no noise" in result.metrics.training["training_noise"]["note"]
