"""Tests of slice_profile: closed forms, widths, sampling matrix, spectral model, estimators, fallbacks."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from scipy import integrate, ndimage
from scipy.special import ndtr

import SR4ZCTLib.core.slice_profile as sp
from SR4ZCTLib.core.phantom import make_ball_phantom as make_phantom
from SR4ZCTLib.core.slice_profile import simulate_stack as simulate

FWHM_TO_SIGMA = 1.0 / (2.0 * math.sqrt(2.0 * math.log(2.0)))


def _gaussian_ramp(v: float, sigma: float) -> float:
    """E[(G + v)^+], G ~ N(0, sigma^2) (the forward model's Gaussian expected ramp)."""
    z = v / sigma
    return v * ndtr(z) + sigma * math.exp(-0.5 * z * z) / math.sqrt(2.0 * math.pi)


def _quadrature_ramp(v: float, w: float, sigma: float) -> float:
    """(1/w) int_{-w/2}^{w/2} E[(G + v + u)^+] du by adaptive quadrature, split at the kink region."""
    lo, hi = -0.5 * w, 0.5 * w
    points = [p for p in (-v - 6 * sigma, -v, -v + 6 * sigma) if lo < p < hi]
    value, _ = integrate.quad(lambda u: _gaussian_ramp(v + u, sigma), lo, hi, points=points or None,
                              limit=400, epsabs=1e-13, epsrel=1e-13)
    return value / w


@pytest.mark.parametrize("w,sigma", [(3.0, 0.5), (5.0, 0.05), (2.0, 2.0), (0.5, 1.2), (0.01, 1.0), (4.0, 1e-3)])
def test_expected_ramp_matches_quadrature(w: float, sigma: float) -> None:
    offsets = np.linspace(-w / 2 - 7 * sigma - 1, w / 2 + 7 * sigma + 1, 41)
    closed = sp.expected_ramp(offsets, w, sigma)
    numeric = np.array([_quadrature_ramp(float(v), w, sigma) for v in offsets])
    assert np.max(np.abs(closed - numeric)) < 1e-9


def test_expected_ramp_limits_match_forward_model() -> None:
    v = np.linspace(-6, 6, 101)
    width = 3.3
    half = 0.5 * width
    box = (np.maximum(v + half, 0) ** 2 - np.maximum(v - half, 0) ** 2) / (2 * width)  # forward.py, box
    assert np.max(np.abs(sp.expected_ramp(v, width, 0.0) - box)) < 1e-14
    sigma = width * FWHM_TO_SIGMA
    gauss = np.array([_gaussian_ramp(float(x), sigma) for x in v])  # forward.py, gaussian of FWHM width
    assert np.max(np.abs(sp.expected_ramp(v, 0.0, sigma) - gauss)) < 1e-14
    assert np.max(np.abs(sp.expected_ramp(v, 1e-7, sigma) - gauss)) < 1e-12  # Taylor branch, tiny box


def test_widths_of_box_and_gaussian() -> None:
    assert sp.fwhm(3.0, 0.0) == pytest.approx(3.0, abs=1e-12)
    assert sp.fwtm(3.0, 0.0) == pytest.approx(3.0, abs=1e-12)
    sigma = 1.3
    assert sp.fwhm(0.0, sigma) == pytest.approx(2 * math.sqrt(2 * math.log(2)) * sigma, rel=1e-12)
    assert sp.fwtm(0.0, sigma) == pytest.approx(2 * math.sqrt(2 * math.log(10)) * sigma, rel=1e-12)
    # nearly-degenerate members approach the limits continuously
    assert sp.fwhm(3.0, 1e-9) == pytest.approx(3.0, abs=1e-6)
    assert sp.fwhm(1e-8, sigma) == pytest.approx(2 * math.sqrt(2 * math.log(2)) * sigma, rel=1e-8)


def test_widths_are_where_the_density_crosses() -> None:
    w, sigma = 2.5, 0.8
    peak = float(sp.profile_density(0.0, w, sigma))
    assert float(sp.profile_density(0.5 * sp.fwhm(w, sigma), w, sigma)) == pytest.approx(0.5 * peak, rel=1e-10)
    assert float(sp.profile_density(0.5 * sp.fwtm(w, sigma), w, sigma)) == pytest.approx(0.1 * peak, rel=1e-9)


@pytest.mark.parametrize("ratio", [1.0, 1.2, 1.55, 1.77, sp.GAUSSIAN_FWTM_RATIO])
def test_member_from_widths(ratio: float) -> None:
    w, sigma = sp.member_from_widths(4.0, ratio)
    assert sp.fwhm(w, sigma) == pytest.approx(4.0, rel=1e-9)
    assert sp.fwtm(w, sigma) / sp.fwhm(w, sigma) == pytest.approx(ratio, abs=2e-4)


def test_family_names() -> None:
    assert sp.family_name(*sp.member_from_widths(3.0, 1.0)) == "box"
    assert sp.family_name(*sp.member_from_widths(3.0, 1.6)) == "blurred box"
    assert sp.family_name(*sp.member_from_widths(3.0, sp.GAUSSIAN_FWTM_RATIO)) == "gaussian"


def test_sampling_matrix_conventions() -> None:
    centres = np.array([0.0, 2.5, 7.3, 19.0])
    for w, sigma in [(4.0, 0.0), (0.0, 1.5), (3.0, 0.7)]:
        matrix = sp.thick_sampling_matrix(20, centres, w, sigma)
        assert np.allclose(matrix.sum(axis=1), 1.0, atol=1e-12)
        assert np.all(matrix >= 0.0)
    # the interior row equals the weights of the linear interpolant against the profile, by quadrature
    w, sigma, c = 3.0, 0.7, 7.3
    row = sp.thick_sampling_matrix(20, np.array([c]), w, sigma)[0]
    for k in (5, 6, 7, 8, 9):
        hat = lambda x: max(0.0, 1.0 - abs(x - k))  # noqa: E731
        value, _ = integrate.quad(lambda x: hat(x) * float(sp.profile_density(x - c, w, sigma)), k - 1, k + 1,
                                  points=[k], epsabs=1e-13)
        assert row[k] == pytest.approx(value, abs=1e-10)
    # mirror at the ends: a slice centred on the first sample folds its left half back in
    left = sp.thick_sampling_matrix(20, np.array([0.0]), 4.0, 0.0)[0]
    assert left[1] == pytest.approx(2 * sp.thick_sampling_matrix(20, np.array([10.0]), 4.0, 0.0)[0][11])


def _random_field(shape: tuple[int, int, int], spacing: float, seed: int) -> np.ndarray:
    """Isotropic Gaussian random field (periodic FFT synthesis), 100 HU std."""
    rng = np.random.default_rng(seed)
    k = np.meshgrid(*[np.fft.fftfreq(n, spacing) for n in shape[:2]], np.fft.rfftfreq(shape[2], spacing), indexing="ij")
    nu = np.sqrt(sum(x * x for x in k))
    spectrum = np.fft.rfftn(rng.standard_normal(shape)) * (1 + (nu / 0.05) ** 2) ** (-3.5 / 4)
    field = np.fft.irfftn(spectrum, shape, axes=(0, 1, 2))
    return field * (100.0 / field.std())


def _thick(truth: np.ndarray, spacing: float, increment: float, w: float, sigma: float) -> np.ndarray:
    nz = truth.shape[0]
    count = int(math.floor((nz - 1) * spacing / increment + 1e-9)) + 1
    s = sp.thick_sampling_matrix(nz, np.arange(count) * increment / spacing, w / spacing, sigma / spacing)
    return (s @ truth.reshape(nz, -1)).reshape((count,) + truth.shape[1:])


def test_spectral_prediction_matches_spatial_degradation() -> None:
    """B (phase-averaged expectation) equals the periodogram of lines degraded by S at many phases."""
    rng = np.random.default_rng(3)
    spacing, increment, length = 0.8, 2.0, 32
    lines = ndimage.gaussian_filter1d(rng.standard_normal((400, 256)), 2.0, axis=1) * 50.0
    w, sigma = sp.member_from_widths(3.0, 1.5)
    model = sp._build_model(lines[:, None, :].repeat(length, axis=1), spacing, increment, length, 3.0)
    _, b, _, _ = (x[0] for x in sp._predict(model, np.array([w]), np.array([sigma])))
    window = sp._hann(length)
    periodograms = []
    for phase in np.linspace(0.0, increment, 8, endpoint=False):
        centres = (phase + increment * np.arange(length)) / spacing + 20.0
        degraded = lines @ sp.thick_sampling_matrix(256, centres, w / spacing, sigma / spacing).T
        degraded = (degraded - degraded.mean(axis=1, keepdims=True)) * window
        periodograms.append(np.mean(np.abs(np.fft.rfft(degraded, axis=1)) ** 2, axis=0))
    empirical = np.mean(periodograms, axis=0)
    ratio = empirical[2:] / b[2:]
    assert np.all(np.abs(np.log(ratio)) < 0.2)
    assert abs(np.mean(np.log(ratio))) < 0.05


@pytest.fixture(scope="module")
def phantom() -> np.ndarray:
    """Small isotropic ball phantom (0.8 mm), from validate.py."""
    return make_phantom((200, 128, 128), 0.8, 500, seed=5)


@pytest.mark.parametrize("ratio,family", [(1.0, ("box",)), (1.77, ("blurred box", "gaussian")),
                                          (sp.GAUSSIAN_FWTM_RATIO, ("blurred box", "gaussian"))])
@pytest.mark.parametrize("thickness,increment,noise_hu", [(3.0, 2.0, 0.0), (5.0, 2.5, 10.0)])
def test_estimator_recovers_known_profile(phantom: np.ndarray, ratio: float, family: tuple[str, ...],
                                          thickness: float, increment: float, noise_hu: float) -> None:
    w, sigma = sp.member_from_widths(thickness, ratio)
    stack = simulate(phantom, 0.8, increment, w, sigma, noise_hu)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", sp.SliceProfileWarning)
        est = sp.estimate_slice_profile(stack, 0.8, increment, thickness, self_check=False)
    assert est.confidence != "fallback"
    assert est.fwhm_mm == pytest.approx(sp.fwhm(w, sigma), rel=0.05)
    assert est.fwtm_mm == pytest.approx(sp.fwtm(w, sigma), rel=0.10)
    assert est.family in family
    if noise_hu:
        assert est.noise_std_hu == pytest.approx(noise_hu, rel=0.1)


def test_estimator_on_random_field_without_noise_model() -> None:
    truth = _random_field((192, 112, 112), 0.8, seed=2)
    w, sigma = sp.member_from_widths(3.0, sp.GAUSSIAN_FWTM_RATIO)
    est = sp.estimate_slice_profile(_thick(truth, 0.8, 2.0, w, sigma), 0.8, 2.0, 3.0, self_check=False,
                                    noise_model="none")
    assert est.fwhm_mm == pytest.approx(3.0, rel=0.05)
    assert est.fwtm_mm == pytest.approx(sp.fwtm(w, sigma), rel=0.10)


def test_result_is_frozen() -> None:
    est = sp.ProfileEstimate("box", 3.0, 0.0, 3.0, 3.0, 0.1, 0.1, "high", True)
    with pytest.raises(Exception):
        est.fwhm_mm = 2.0  # type: ignore[misc]


def test_fallback_on_too_few_slices() -> None:
    stack = _random_field((6, 64, 64), 0.8, seed=4)
    with pytest.warns(sp.SliceProfileWarning, match="slices"):
        est = sp.estimate_slice_profile(stack, 0.8, 2.0, 3.0)
    assert est.confidence == "fallback" and not est.trusted
    assert (est.family, est.fwhm_mm, est.fwtm_mm, est.sigma_mm) == ("box", 3.0, 3.0, 0.0)


def test_fallback_on_flat_image() -> None:
    stack = np.full((40, 64, 64), 40.0)
    with pytest.warns(sp.SliceProfileWarning, match="flat"):
        est = sp.estimate_slice_profile(stack, 0.8, 2.5, 5.0)
    assert est.confidence == "fallback" and est.fwhm_mm == 5.0


def test_noise_estimate_on_correlated_noise() -> None:
    rng = np.random.default_rng(5)
    noise = ndimage.gaussian_filter(rng.standard_normal((8, 192, 192)), (0, 0.8, 0.8))
    noise *= 10.0 / noise.std()
    est = sp.estimate_noise(noise, 0.8)
    assert est.std_hu == pytest.approx(10.0, rel=0.05)
    # white noise smoothed by a Gaussian of s px has correlation length 2 sqrt(pi) s px
    assert est.correlation_length_mm == pytest.approx(2 * math.sqrt(math.pi) * 0.8 * 0.8, rel=0.15)
    nps = est.nps_on_grid(64)
    assert np.mean(nps) == pytest.approx(est.std_hu**2, rel=1e-6)


def test_noise_estimate_ignores_smooth_structure() -> None:
    yy, xx = np.mgrid[:128, :128]
    smooth = np.repeat((50.0 * np.sin(xx / 15.0) * np.cos(yy / 21.0))[None], 4, axis=0)
    assert sp.estimate_noise(smooth, 1.0).std_hu < 1.0
    noise = ndimage.gaussian_filter(np.random.default_rng(6).standard_normal(smooth.shape), (0, 0.8, 0.8))
    noise *= 10.0 / noise.std()
    assert sp.estimate_noise(smooth + noise, 1.0).std_hu == pytest.approx(10.0, rel=0.05)


def test_sampling_matrix_matches_forward_model_limits() -> None:
    """Box and Gaussian rows equal forward.thick_sampling_matrix's (its formulas, restated)."""
    centres = np.array([0.0, 3.4, 9.0])
    width = 3.6
    for w, sigma, kind in [(width, 0.0, "box"), (0.0, width * FWHM_TO_SIGMA, "gaussian")]:
        ours = sp.thick_sampling_matrix(15, centres, w, sigma)
        ref = np.zeros_like(ours)
        for m, c in enumerate(centres):
            for k in range(-12, 28):
                def ramp(knot: float) -> float:
                    v = c - knot
                    if kind == "box":
                        return (max(v + width / 2, 0) ** 2 - max(v - width / 2, 0) ** 2) / (2 * width)
                    return _gaussian_ramp(v, sigma)
                weight = ramp(k - 1) - 2 * ramp(k) + ramp(k + 1)
                period = 2 * 14
                folded = k % period
                ref[m, period - folded if folded > 14 else folded] += weight
        assert np.max(np.abs(ours - ref)) < 1e-12
