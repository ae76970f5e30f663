"""The data-consistency projection: a regularised least-norm correction that is stable, near-idempotent and honest at the ends."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from SR4ZCTLib import Acquisition
from SR4ZCTLib.cli import main
from SR4ZCTLib.core.forward import ConsistencyProjection, thick_sampling_matrix
from SR4ZCTLib.core.inference import interpolation_to_grid, project_onto_measurements
from SR4ZCTLib.core.intensity import psnr
from SR4ZCTLib.core.phantom import make_phantom

RATIOS = (0.75, 1.0, 1.5, 2.0, 2.5, 3.0, 4.0)  # thickness / increment


def _projection(thickness, increment, profile, regularisation=0.05, spacing=0.5, n_slices=24):
    n_fine = int(round((n_slices - 1) * increment / spacing)) + 1
    return ConsistencyProjection(n_fine, n_slices, spacing, Acquisition(thickness, increment, profile), regularisation)


def _worst_factor(projection: ConsistencyProjection) -> float:
    """Largest lambda mu / (s^2 + lambda mu) over the eigenvalues s^2 of S S^T: the bound on what a step leaves."""
    eigenvalues = np.linalg.eigvalsh(projection.sampling @ projection.sampling.T)
    return float(np.max(projection.shift / (eigenvalues + projection.shift)))


@pytest.mark.parametrize("profile", ["box", "gaussian"])
@pytest.mark.parametrize("ratio", RATIOS)
def test_projection_is_a_contraction_for_every_overlap(profile, ratio):
    """The map y -> y' (b = 0) has eigenvalues in [0, 1]: repeating it can never grow anything."""
    projection = _projection(2.0 * ratio, 2.0, profile)
    n_fine = projection.sampling.shape[1]
    step = projection(np.eye(n_fine), np.zeros((24, n_fine)))
    eigenvalues = np.linalg.eigvals(step)
    assert np.all(np.abs(eigenvalues) <= 1.0 + 1e-9), np.max(np.abs(eigenvalues))
    rng = np.random.default_rng(1)
    y, b = rng.normal(size=(n_fine, 3)), rng.normal(size=(24, 3)) * 100
    once = projection(y, b)
    many = once
    for _ in range(30):
        many = projection(many, b)
    assert np.linalg.norm(many - once) <= 30 * _worst_factor(projection) * np.linalg.norm(once - y) + 1e-9


@pytest.mark.parametrize("profile", ["box", "gaussian"])
@pytest.mark.parametrize("ratio", RATIOS)
def test_projection_fits_the_slices_and_is_idempotent_to_the_tolerance_lambda_implies(profile, ratio):
    projection = _projection(1.5 * ratio, 1.5, profile)
    factor = _worst_factor(projection)
    rng = np.random.default_rng(2)
    n_fine = projection.sampling.shape[1]
    y, b = rng.normal(size=(n_fine, 5)), rng.normal(size=(24, 5)) * 50
    used = projection.used
    once = projection(y, b)
    twice = projection(once, b)
    before = np.linalg.norm(projection.sampling @ y - b[used])
    assert np.linalg.norm(projection.sampling @ once - b[used]) <= factor * before * (1 + 1e-9)
    assert np.linalg.norm(twice - once) <= factor * np.linalg.norm(once - y) * (1 + 1e-9)
    exact = _projection(1.5 * ratio, 1.5, profile, regularisation=1e-4)
    fitted = exact(y, b)
    assert np.linalg.norm(exact(fitted, b) - fitted) <= _worst_factor(exact) * np.linalg.norm(fitted - y) * (1 + 1e-9)


def test_end_slices_that_saw_beyond_the_grid_are_not_used():
    """Slices whose profile reaches past the first or last centre's grid measured anatomy the grid lacks."""
    box = _projection(5.0, 1.25, "box")
    assert list(box.used) == list(range(2, 22))  # 2.5 mm half-width: slices 0, 1, 22, 23 reach past the grid
    np.testing.assert_allclose(box.sampling.sum(axis=1), 1.0)
    gaussian = _projection(5.0, 1.25, "gaussian")  # tails: 1e-3 of the weight lies 3.1 sigma = 6.6 mm out
    assert list(gaussian.used) == list(range(6, 18))


@pytest.mark.parametrize("thickness,increment", [(5.0, 2.5), (3.0, 2.0), (5.0, 2.0), (4.0, 1.0)])
def test_never_worse_than_its_input_when_anatomy_continues_past_the_ends(thickness, increment):
    """Thick slices from a phantom that extends beyond the first and last slice: projecting linear
    interpolation improves it overall and does not harm the end regions (the mirror assumption did)."""
    spacing = 0.5
    truth = make_phantom((120, 48, 48), spacing, seed=4, noise_hu=0.0)
    acquisition = Acquisition(thickness, increment)
    first, last = 16, truth.shape[0] - 17  # slices start and stop 8 mm inside the anatomy
    step = increment / spacing
    centres = first + np.arange(int((last - first) // step) + 1) * step
    thick = np.einsum("mk,kyx->myx", thick_sampling_matrix(truth.shape[0], centres, thickness / spacing), truth)
    upsample = interpolation_to_grid(len(centres), increment, spacing)
    estimate = torch.einsum("fs,syx->fyx", upsample, torch.from_numpy(thick).float())
    reference = truth[first:first + estimate.shape[0]]
    projected = estimate.clone()
    project_onto_measurements(projected, torch.from_numpy(thick).float(), acquisition, spacing, 0.05)
    end = int(np.ceil(thickness / spacing))
    for region in (slice(None), slice(0, end), slice(-end, None)):
        before, after = psnr(estimate.numpy()[region], reference[region]), psnr(projected.numpy()[region], reference[region])
        assert after >= before - 0.05, (region, before, after)
    assert psnr(projected.numpy(), reference) > psnr(estimate.numpy(), reference) + 0.3


@pytest.mark.parametrize("value", ["3", "maybe"])
def test_consistency_takes_on_or_off_not_a_step_count(tmp_path, capsys, value):
    code = main(["enhance", str(tmp_path / "in.nrrd"), "-o", str(tmp_path / "out.nrrd"), "--consistency", value])
    assert code == 2
    assert capsys.readouterr().err.startswith("error:")
    assert not (tmp_path / "out.nrrd").exists()


@pytest.mark.parametrize("value", ["0", "-1", "nan", "100"])
def test_consistency_lambda_outside_its_documented_range_is_refused(tmp_path, capsys, value):
    code = main(["enhance", str(tmp_path / "in.nrrd"), "-o", str(tmp_path / "out.nrrd"), "--consistency-lambda", value])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "outside" in err or "not a number" in err


def test_the_slicer_job_passes_the_projection_settings_the_cli_accepts():
    from SR4ZCTLib.cli import build_parser
    from SR4ZCTLib.mrml.job import EnhanceRequest

    arguments = EnhanceRequest(3.0, 1.5, consistency=False, consistency_lambda=0.2).argv()
    parsed = build_parser().parse_args(["enhance", "in.nrrd", "-o", "out.nrrd", *arguments])
    assert parsed.consistency == "off" and parsed.consistency_lambda == 0.2
    assert EnhanceRequest.from_values(vars(parsed)) == EnhanceRequest(3.0, 1.5, consistency=False, consistency_lambda=0.2)
    default = build_parser().parse_args(["enhance", "in.nrrd", "-o", "out.nrrd", *EnhanceRequest(3.0, 1.5).argv()])
    assert default.consistency is None  # the preset's choice
