"""Noise matched in training (issue 16 item 2): the degraded in-plane axis carries the noise z carries.

The reference is a physical simulation, not the model: fine noise white along z and correlated in-plane, integrated
by overlapping box slices (5 mm every 2.5 mm on a 1 mm grid). Its thick slices' z-lines have a std and a correlation
between neighbouring slices; the training degradation of one of those thick slices' in-plane axes, plus the added
noise, must show the same two figures along the degraded axis."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

from SR4ZCTLib.core.acquisition import Acquisition
from SR4ZCTLib.core.forward import degradation_operators
from SR4ZCTLib.core.slice_profile import estimate_noise
from SR4ZCTLib.core.training import PairSampler, validation_pairs
from SR4ZCTLib.core.training_noise import TrainingNoise

ACQUISITION = Acquisition(5.0, 2.5)


@pytest.fixture(scope="module")
def acquired():
    """Thick slices (n, 96, 96) of pure noise, acquired from fine noise white along z (1 mm grid)."""
    rng = np.random.default_rng(4)
    fine = gaussian_filter(rng.normal(size=(120, 96, 96)), (0, 1.0, 1.0))  # in-plane correlated, white along z
    sampling, _ = degradation_operators(120, 1.0, ACQUISITION)
    thick = np.einsum("mk,kyx->myx", sampling, fine)
    return (thick * (10.0 / thick.std())).astype(np.float64)  # 10 HU per slice


def _lag1(lines: np.ndarray, axis: int) -> float:
    a, b = np.take(lines, range(lines.shape[axis] - 1), axis), np.take(lines, range(1, lines.shape[axis]), axis)
    return float(np.mean(a * b) / np.sqrt(np.mean(a * a) * np.mean(b * b)))


def test_the_estimate_finds_the_slices_noise(acquired):
    estimate = estimate_noise(acquired, 1.0)
    assert estimate.std_hu == pytest.approx(10.0, rel=0.1)
    measured = np.mean(acquired[:, :, 1:] * acquired[:, :, :-1]) / np.mean(acquired ** 2)
    assert estimate.autocovariance[1] / estimate.autocovariance[0] == pytest.approx(measured, abs=0.08)


def test_degraded_axis_carries_the_std_and_slice_correlation_of_z(acquired):
    z_std, z_corr = float(acquired.std()), _lag1(acquired[:, 8:-8, 8:-8], 0)  # real z: between neighbouring slices
    noise = TrainingNoise.from_estimate(estimate_noise(acquired, 1.0), 1.0)
    sampling, _ = degradation_operators(96, 1.0, ACQUISITION)
    unit = sampling / np.linalg.norm(sampling, axis=1, keepdims=True)
    images = torch.from_numpy(acquired[:, :, :]).float()  # axial images; degrade along image axis 0 (rows)
    thick = torch.matmul(torch.from_numpy(sampling).float(), images)  # what S leaves of the images' own noise
    plain_std = float(thick[:, 2:-2].std())
    white = noise.coloured(tuple(images.shape), torch.Generator().manual_seed(0), torch.device("cpu"))
    thick = thick + noise.added_std(sampling) * torch.matmul(torch.from_numpy(unit).float(), white)
    lines = thick[:, 2:-2].numpy()  # away from the mirrored ends
    assert plain_std < 0.75 * z_std  # without it, training inputs are far quieter than z at inference
    assert lines.std() == pytest.approx(z_std, rel=0.08)
    assert _lag1(lines, 1) == pytest.approx(z_corr, abs=0.08)
    assert _lag1(lines, 2) == pytest.approx(_lag1(acquired, 2), abs=0.08)  # the other axis: in-plane correlation


def test_residual_fraction_matches_monte_carlo(acquired):
    noise = TrainingNoise.from_estimate(estimate_noise(acquired, 1.0), 1.0)
    sampling, _ = degradation_operators(96, 1.0, ACQUISITION)
    thick = np.einsum("mk,nky->nmy", sampling, acquired)
    measured = thick[:, 2:-2].var() / acquired.var()
    assert noise.residual_fraction(sampling) == pytest.approx(measured, rel=0.15)


def test_coloured_noise_has_unit_variance_and_the_spectrum_asked():
    acf = np.array([1.0, 0.6, 0.2, 0.05])
    noise = TrainingNoise(0.5, acf)
    sample = noise.coloured((64, 32, 48), torch.Generator().manual_seed(1), torch.device("cpu")).numpy()
    assert sample.var() == pytest.approx(1.0, rel=0.05)
    assert _lag1(sample, 2) == pytest.approx(0.6, abs=0.03)
    assert abs(_lag1(sample, 1)) < 0.03  # white along rows (the degraded axis, before S)


def test_the_sampler_adds_it_deterministically_and_validation_too(acquired):
    noise = TrainingNoise.from_estimate(estimate_noise(acquired, 1.0), 1.0)
    views = [torch.from_numpy(np.zeros((4, 96, 96))).float()]  # no anatomy: what the batch holds is the added noise

    def draw(seed, with_noise):
        sampler = PairSampler(views * 2, 1.0, ACQUISITION, 4, torch.Generator().manual_seed(seed),
                              noise if with_noise else None)
        return sampler.batch(8, 32)[0]

    assert float(draw(0, False).abs().max()) == 0.0
    first, again = draw(0, True), draw(0, True)
    assert torch.equal(first, again) and float(first.std()) > 0.3 * noise.std
    held_out = validation_pairs(views, 1.0, ACQUISITION, noise=noise)
    assert all(float(degraded.std()) > 0.3 * noise.std for degraded, _ in held_out)
    assert torch.equal(held_out[0][0], validation_pairs(views, 1.0, ACQUISITION, noise=noise)[0][0])


def test_no_noise_found_means_none():
    estimate = estimate_noise(np.zeros((8, 64, 64)), 1.0)
    assert TrainingNoise.from_estimate(estimate, 1.0) is None


def test_slices_noised_one_by_one_train_with_noise_uncorrelated_between_samples():
    """A simulation that adds noise to each slice on its own (rho_z = 0) is matched as far as it can be: the added
    noise is then white per thick sample, so neighbouring degraded samples correlate only by what S leaves of the
    image's own noise (r1), not by the overlapping profiles as well."""
    from SR4ZCTLib.core.training_noise import slice_correlation

    rng = np.random.default_rng(5)
    anatomy = np.zeros((40, 96, 96))
    per_slice = gaussian_filter(rng.normal(size=anatomy.shape), (0, 1.0, 1.0))
    stack = anatomy + per_slice * (10.0 / per_slice.std())
    rho = slice_correlation(stack)
    assert abs(rho) < 0.05
    sampling, _ = degradation_operators(96, 1.0, ACQUISITION)
    lines = np.einsum("mk,nky->nmy", sampling, stack)  # what S leaves of the image's own noise
    unit = sampling / np.linalg.norm(sampling, axis=1, keepdims=True)
    white = torch.Generator().manual_seed(0), torch.Generator().manual_seed(1)

    def degraded(noise: TrainingNoise) -> np.ndarray:
        profiled = noise.coloured(tuple(stack.shape), white[0], torch.device("cpu")).numpy()
        own = noise.coloured((len(stack), len(sampling), 96), white[1], torch.device("cpu")).numpy()
        share = noise.overlap_share(sampling)
        added = noise.added_std(sampling) * (np.sqrt(share) * np.einsum("mk,nky->nmy", unit, profiled)
                                             + np.sqrt(1 - share) * own)
        return (lines + added)[:, 2:-2]

    matched = TrainingNoise.from_estimate(estimate_noise(stack, 1.0), 1.0, rho)
    overlapping = TrainingNoise.from_estimate(estimate_noise(stack, 1.0), 1.0, None)
    assert matched.overlap_share(sampling) == 0.0 and overlapping.overlap_share(sampling) == 1.0
    total, before = degraded(matched), degraded(overlapping)
    assert total.std() == pytest.approx(10.0, rel=0.08)
    assert _lag1(total, 1) == pytest.approx(matched.residual_fraction(sampling, 1), abs=0.05)
    assert _lag1(total, 1) < _lag1(before, 1) - 0.15  # the profile-integrated model over-correlates it


def test_slice_correlation_of_overlapping_slices(acquired):
    from SR4ZCTLib.core.training_noise import slice_correlation

    assert slice_correlation(acquired) == pytest.approx(_lag1(acquired[:, 8:-8, 8:-8], 0), abs=0.08)
    assert slice_correlation(acquired[:3]) is None


def test_the_sampler_and_validation_add_per_slice_noise_when_neighbouring_slices_do_not_correlate(acquired):
    """rho_z = 0 (each slice noised on its own): the batch's noise is white per thick sample, so rows two
    increments apart no longer correlate as the overlapping profiles make them; validation does the same."""
    estimate = estimate_noise(acquired, 1.0)
    views = [torch.zeros((6, 96, 96))]  # no anatomy: the batch holds only the added noise

    def lag_correlation(images: torch.Tensor, lag: int) -> float:
        a, b = images[..., :-lag, :], images[..., lag:, :]
        return float((a * b).mean() / torch.sqrt((a * a).mean() * (b * b).mean()))

    correlations = {}
    for rho in (None, 0.0):
        noise = TrainingNoise.from_estimate(estimate, 1.0, rho)
        sampler = PairSampler(views * 2, 1.0, ACQUISITION, 8, torch.Generator().manual_seed(3), noise)
        batch = torch.cat([sampler.batch(16, 48)[0] for _ in range(8)])
        held_out = validation_pairs(views, 1.0, ACQUISITION, noise=noise)[0][0]
        correlations[rho] = (lag_correlation(batch, 3), lag_correlation(held_out, 3), float(batch.std()))
    (profiled, profiled_held, _), (own, own_held, std) = correlations[None], correlations[0.0]
    assert profiled > own + 0.15 and profiled_held > own_held + 0.15, correlations
    assert std > 0.3 * TrainingNoise.from_estimate(estimate, 1.0, 0.0).std
