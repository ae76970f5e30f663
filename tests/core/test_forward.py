"""The forward model against brute-force integration, and its basic invariants."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from SR4ZCTLib import Acquisition, InputError
from SR4ZCTLib.core.forward import (
    apply_along_axis,
    degradation_matrix,
    degradation_operators,
    degrade,
    linear_interpolation_matrix,
    simulate_thick_slices,
    slice_centres,
    thick_sampling_matrix,
)


def brute_force_thick_samples(signal: np.ndarray, centres: np.ndarray, width: float, profile: str,
                              oversampling: int = 4000) -> np.ndarray:
    """Integrate profile x (mirror-extended linear interpolant) on a very fine grid, in sample units."""
    n = len(signal)
    x = np.linspace(-3 * n, 4 * n, 7 * n * oversampling + 1)
    period = 2 * (n - 1)
    folded = np.mod(x, period)
    folded = np.where(folded > n - 1, period - folded, folded)
    values = np.interp(folded, np.arange(n), signal)
    result = []
    for centre in centres:
        if profile == "box":
            weight = (np.abs(x - centre) <= width / 2).astype(float)
        elif profile == "blurred-box":  # box(w) convolved with N(0, sigma^2), FWHM = width, FWTM = 1.7 width
            from scipy.special import ndtr

            w, s = BLURRED[width]
            weight = ndtr((x - centre + w / 2) / s) - ndtr((x - centre - w / 2) / s)
        else:
            sigma = width / (2 * np.sqrt(2 * np.log(2)))
            weight = np.exp(-0.5 * ((x - centre) / sigma) ** 2)
        result.append(np.sum(weight * values) / np.sum(weight))
    return np.array(result)


def _blurred_box_by_bisection(width: float, ratio: float = 1.7) -> tuple[float, float]:
    """(w, sigma) with FWHM width and FWTM ratio x width, found by brute force on a fine grid (not the library's)."""
    from scipy.special import ndtr

    x = np.linspace(0, 3 * width, 120001)

    def widths(alpha):
        sigma = alpha * width * 0.4246609
        lo, hi = 0.0, width
        for _ in range(60):  # the box part that gives FWHM = width for this sigma
            w = 0.5 * (lo + hi)
            p = ndtr((x + w / 2) / sigma) - ndtr((x - w / 2) / sigma)
            half = 2 * x[np.argmax(p < 0.5 * p[0])]
            lo, hi = (w, hi) if half < width else (lo, w)
        return w, sigma, 2 * x[np.argmax(p < 0.1 * p[0])]

    lo, hi = 0.05, 0.999
    for _ in range(40):
        alpha = 0.5 * (lo + hi)
        w, sigma, tenth = widths(alpha)
        lo, hi = (alpha, hi) if tenth < ratio * width else (lo, alpha)
    return w, sigma


WIDTHS = [0.4, 1.0, 2.5, 3.7, 7.25]
_UNIT = _blurred_box_by_bisection(1.0)  # the family scales with the FWHM
BLURRED = {width: (_UNIT[0] * width, _UNIT[1] * width) for width in WIDTHS}


@pytest.mark.parametrize("profile", ["box", "gaussian", "blurred-box"])
@pytest.mark.parametrize("width", WIDTHS)
def test_thick_samples_match_brute_force_integration(profile, width):
    rng = np.random.default_rng(3)
    signal = rng.normal(size=30)
    centres = np.array([0.0, 0.3, 4.5, 11.11, 17.0, 28.6, 29.0])
    exact = thick_sampling_matrix(len(signal), centres, width, profile, 1.7 if profile == "blurred-box" else None) @ signal
    brute = brute_force_thick_samples(signal, centres, width, profile)
    tolerance = {"box": 2e-3, "gaussian": 1e-6, "blurred-box": 1e-4}[profile]  # edge discretisation; the bisection
    np.testing.assert_allclose(exact, brute, atol=tolerance)


@pytest.mark.parametrize("profile", ["box", "gaussian", "blurred-box"])
def test_rows_sum_to_one_and_constants_are_kept(profile):
    acquisition = Acquisition(3.0, 2.0, profile)
    matrix = degradation_matrix(57, 0.74, acquisition, phase_mm=0.37)
    np.testing.assert_allclose(matrix.sum(axis=1), 1.0, atol=1e-12)
    np.testing.assert_allclose(matrix @ np.full(57, -123.0), -123.0, atol=1e-9)


@pytest.mark.parametrize("thickness,increment", [(5.0, 2.5), (3.0, 3.0), (3.0, 4.0), (2.5, 1.25), (3.75, 1.875), (5.0, 3.3)])
def test_linear_signal_kept_away_from_the_edges(thickness, increment):
    """A symmetric profile and linear interpolation reproduce a linear ramp exactly in the interior."""
    spacing = 0.7
    n = 200
    acquisition = Acquisition(thickness, increment)
    ramp = 3.0 * np.arange(n) - 50.0
    degraded = degradation_matrix(n, spacing, acquisition, phase_mm=0.4) @ ramp
    margin = int(np.ceil((thickness + 2 * increment) / spacing)) + 2
    np.testing.assert_allclose(degraded[margin:-margin], ramp[margin:-margin], atol=1e-9)


def test_overlap_gap_and_thickness_change_the_blur():
    """Thicker slices blur more and, with overlap, neighbouring slices see the same point; a gap misses it."""
    n, spacing = 120, 0.5
    spike = np.zeros(n)
    spike[64] = 1.0  # at 32 mm, the centre of slice 8 when slices are every 4 mm
    thin_gap = degradation_operators(n, spacing, Acquisition(1.0, 4.0), phase_mm=0.0)[0] @ spike
    thick_overlap = degradation_operators(n, spacing, Acquisition(9.0, 4.0), phase_mm=0.0)[0] @ spike
    assert thin_gap[8] == pytest.approx(0.5)  # 1 mm box over a 0.5 mm hat
    assert thick_overlap[8] == pytest.approx(1.0 / 18.0)  # 9 mm box
    assert thin_gap[7] == 0 and thin_gap[9] == 0  # the gap: 28 and 36 mm slices miss 32 mm
    assert thick_overlap[7] > 0 and thick_overlap[9] > 0  # 9 mm slices overlap 5 mm and both see it


def test_grid_is_exact_for_non_integer_ratios():
    centres = slice_centres(n_fine=101, spacing_mm=0.74, increment_mm=2.3, phase_mm=0.5)
    steps = np.diff(centres) * 0.74
    np.testing.assert_allclose(steps, 2.3, atol=1e-12)
    assert centres[0] * 0.74 == pytest.approx(0.5)
    assert centres[-1] <= 100 and (centres[-1] * 0.74 + 2.3) > 100 * 0.74


def test_linear_interpolation_reflects_instead_of_extrapolating():
    matrix = linear_interpolation_matrix(np.array([-0.5, 0.0, 0.25, 2.0, 2.5]), 3)
    samples = np.array([10.0, 20.0, 40.0])
    np.testing.assert_allclose(matrix @ samples, [15.0, 10.0, 12.5, 40.0, 30.0])


def test_torch_application_matches_numpy_on_every_axis():
    rng = np.random.default_rng(0)
    volume = rng.normal(size=(9, 11, 13))
    acquisition = Acquisition(2.0, 1.5, "gaussian")
    for axis in range(3):
        matrix = degradation_matrix(volume.shape[axis], 0.6, acquisition, 0.2)
        expected = np.moveaxis(np.tensordot(matrix, np.moveaxis(volume, axis, 0), axes=1), 0, axis)
        result = degrade(volume, axis, 0.6, acquisition, 0.2).numpy()
        np.testing.assert_allclose(result, expected, atol=1e-10)


def test_simulated_thick_slices_have_the_increment_and_the_mean():
    volume = np.ones((41, 5, 6)) * 7.0
    thick = simulate_thick_slices(volume, 0, 0.5, Acquisition(3.0, 2.0))
    assert thick.shape == (11, 5, 6)  # 20 mm of extent, a slice every 2 mm
    np.testing.assert_allclose(thick.numpy(), 7.0)


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_apply_along_axis_matches_numpy_and_keeps_dtype_and_device(device, dtype):
    """A non-square float64 matrix applied on every axis of a float32/64 tensor on the device: the numbers, the
    dtype and the device are the data's."""
    rng = np.random.default_rng(5)
    volume = rng.normal(size=(6, 7, 8))
    for axis in range(3):
        matrix = rng.normal(size=(volume.shape[axis] + 3, volume.shape[axis]))
        expected = np.moveaxis(np.tensordot(matrix, np.moveaxis(volume, axis, 0), axes=1), 0, axis)
        result = apply_along_axis(torch.from_numpy(volume).to(device=device, dtype=dtype), torch.from_numpy(matrix), axis)
        assert result.dtype == dtype and result.device.type == device
        assert result.shape[axis] == volume.shape[axis] + 3
        np.testing.assert_allclose(result.cpu().double().numpy(), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("thickness,increment", [(0.0, 1.0), (-1.0, 1.0), (1.0, 0.0), (float("nan"), 1.0)])
def test_bad_acquisition_is_refused_with_its_name(thickness, increment):
    with pytest.raises(InputError, match="thickness|increment"):
        Acquisition(thickness, increment)


def test_overlap_not_below_thickness_is_refused():
    with pytest.raises(InputError, match="overlap"):
        Acquisition.from_overlap(3.0, 3.0)
    assert Acquisition.from_overlap(3.0, 1.0).increment_mm == 2.0


def test_a_blurred_box_has_its_fwtm_and_refuses_shapes_it_cannot_have():
    from SR4ZCTLib.core.slice_profile import fwhm, fwtm, member_from_widths

    default, measured = Acquisition(5.0, 2.5, "blurred-box"), Acquisition(5.0, 2.5, "blurred-box", fwtm_mm=8.0)
    assert default.fwtm_ratio == pytest.approx(1.7) and measured.fwtm_ratio == pytest.approx(1.6)
    w, sigma = member_from_widths(5.0, measured.fwtm_ratio)
    assert fwhm(w, sigma) == pytest.approx(5.0, rel=1e-6) and fwtm(w, sigma) == pytest.approx(8.0, rel=1e-4)
    assert "blurred-box profile (FWTM 8 mm)" in measured.describe()
    for profile, fwtm_mm in (("box", 6.0), ("blurred-box", 4.0), ("blurred-box", 9.2), ("blurred-box", float("nan"))):
        with pytest.raises(InputError, match="does not fit"):
            Acquisition(5.0, 2.5, profile, fwtm_mm=fwtm_mm)


def test_the_projection_and_the_end_slices_follow_a_blurred_box():
    from SR4ZCTLib.core.forward import ConsistencyProjection, _mass_outside

    box, blurred = (ConsistencyProjection(200, 40, 0.5, Acquisition(5.0, 2.5, p)) for p in ("box", "blurred-box"))
    assert len(blurred.used) < len(box.used)  # its tails reach beyond the grid from further in
    rng = np.random.default_rng(0)
    truth = np.cumsum(rng.normal(size=(200, 3)), axis=0)
    measured = np.zeros((40, 3))
    measured[blurred.used] = blurred.sampling @ truth
    projected = blurred(np.zeros_like(truth), measured)
    np.testing.assert_allclose(blurred.sampling @ projected, measured[blurred.used], rtol=0, atol=0.05 * np.abs(truth).max())
    outside = _mass_outside(np.array([0.0, 5.0, 100.0]), 201, 10.0, "blurred-box", 1.7)
    assert outside[0] == pytest.approx(0.5, abs=1e-9) and 0.05 < outside[1] < 0.2 and outside[2] < 1e-12
