"""`sr4zct info --estimate-profile`: the slice profile and noise the voxels show, as strict JSON (issue 16, item 1)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from SR4ZCTLib.core.acquisition import Acquisition
from SR4ZCTLib.core.forward import simulate_thick_slices
from SR4ZCTLib.core.phantom import make_phantom
from SR4ZCTLib.core.volume import Volume
from SR4ZCTLib.io.volumes import write_volume

from conftest import run_cli


def thick_volume(tmp_path, profile: str, slices_mm: float = 96.0):
    truth = make_phantom((int(slices_mm / 0.8), 96, 96), 0.8, seed=3)
    thick = simulate_thick_slices(truth, 0, 0.8, Acquisition(3.0, 2.0, profile)).numpy()
    return write_volume(Volume(thick.astype(np.float32), Volume.matrix_from((0, 0, 0), (0.8, 0.8, 2.0), np.eye(3))),
                        tmp_path / f"{profile}.nrrd")


def test_info_reports_the_estimated_profile_as_json(tmp_path, capsys):
    code, out, err = run_cli(["info", thick_volume(tmp_path, "gaussian"), "--thickness", "3", "--estimate-profile",
                              "--json"], capsys)
    assert code == 0, err
    profile = json.loads(out)["slice_profile"]
    assert set(profile) >= {"family", "fwhm_mm", "fwtm_mm", "fwhm_std_mm", "fwtm_std_mm", "confidence", "notes"}
    assert profile["family"] in ("box", "blurred box", "gaussian") and profile["confidence"] != "fallback"
    assert 0.75 * 3.0 <= profile["fwhm_mm"] <= 1.25 * 3.0 and profile["fwtm_mm"] >= profile["fwhm_mm"]


def test_too_few_slices_fall_back_to_the_nominal_box_with_a_warning(tmp_path, capsys):
    code, out, err = run_cli(["info", thick_volume(tmp_path, "box", slices_mm=10.0), "--thickness", "3",
                              "--estimate-profile", "--json"], capsys)
    assert code == 0, err
    profile = json.loads(out)["slice_profile"]
    assert profile["confidence"] == "fallback" and profile["family"] == "box" and profile["fwhm_mm"] == pytest.approx(3.0)
    assert "warning:" in err and "slices" in err
