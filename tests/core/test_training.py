"""Training pairs: non-square pixels, the held-out slab, and a warning when nothing was learned."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from SR4ZCTLib import Acquisition
from SR4ZCTLib.core.intensity import Normalisation
from SR4ZCTLib.core.networks import build_network
from SR4ZCTLib.core.training import PairSampler, preset, split_validation_slab, train_network, training_views


def _width_px(bank: torch.Tensor) -> float:
    """RMS width in pixels of the degradation's central row (mean over the phases)."""
    centre = bank.shape[1] // 2
    offsets = torch.arange(bank.shape[2], dtype=bank.dtype) - centre
    rows = bank[:, centre, :]
    return float(torch.sqrt((rows * offsets**2).sum(dim=1) / rows.sum(dim=1)).mean())


def test_non_square_pixels_train_both_axes_at_the_inference_spacing():
    """Rows 0.6 mm, columns 0.9 mm: the z grid at inference is 0.6 mm, so a 3 mm slice must be 5 px wide
    in both training views (at 0.9 mm it was 3.3 px)."""
    rng = np.random.default_rng(0)
    slices = torch.from_numpy(rng.normal(size=(3, 60, 40)).astype(np.float32))
    views, spacing = training_views(slices, (0.6, 0.9))
    assert spacing == 0.6
    assert views[0].shape == (3, 60, 40) and views[1].shape == (3, 59, 60)  # 39 x 0.9 mm = 35.1 mm -> 59 at 0.6 mm
    acquisition = Acquisition(3.0, 1.5)
    sampler = PairSampler(views, spacing, acquisition, phases=8, generator=torch.Generator().manual_seed(0))
    widths = [_width_px(bank) for bank in sampler.banks]
    assert widths[0] == pytest.approx(widths[1], rel=0.03), widths
    ramp = torch.arange(40, dtype=torch.float32)[None, None, :].expand(1, 5, 40) * 0.9  # mm along the columns
    resampled = training_views(ramp, (0.6, 0.9))[0][1]
    np.testing.assert_allclose(resampled[0, :, 0].numpy(), np.arange(59) * 0.6, atol=1e-4)


def test_the_held_out_slab_never_reaches_training():
    """Two volumes differing only inside the validation slab train identically (same losses); validation differs."""
    rng = np.random.default_rng(1)
    data = rng.normal(0.0, 0.2, size=(20, 32, 32)).astype(np.float32)
    _, validation = split_validation_slab(len(data))
    changed = data.copy()
    changed[validation] = rng.normal(0.0, 0.2, size=changed[validation].shape)
    config = preset("fast").with_iterations(30)
    runs = []
    for volume in (data, changed):
        losses = []

        def record(progress, losses=losses):
            if "loss" in progress.metrics and np.isfinite(progress.metrics["loss"]):
                losses.append((progress.metrics["iteration"], progress.metrics["loss"]))

        from SR4ZCTLib.progress import Reporter

        result = train_network(volume, (1.0, 1.0), Acquisition(3.0, 1.5), config, Normalisation(offset=0.0, scale=1.0,
                               kind="identity"), torch.device("cpu"), seed=3, reporter=Reporter(record))
        runs.append((losses, result.metrics))
    assert runs[0][0] and runs[0][0] == runs[1][0]
    assert runs[0][1]["validation_linear_psnr_db"] != runs[1][1]["validation_linear_psnr_db"]


def test_training_that_learns_nothing_warns():
    """A constant volume: the identity start is already perfect, no step can beat it."""
    config = preset("fast").with_iterations(3)
    with pytest.warns(UserWarning, match="learned nothing"):
        result = train_network(np.zeros((10, 16, 16), np.float32), (1.0, 1.0), Acquisition(3.0, 1.5), config,
                               Normalisation(offset=0.0, scale=1.0, kind="identity"), torch.device("cpu"))
    assert result.metrics["best_iteration"] == 0
    assert result.metrics["validation_task"].startswith("in-plane stand-in")


@pytest.mark.parametrize("architecture,options", [("msd", {"depth": 6}), ("cnn", {"depth": 3, "width": 4})])
def test_half_precision_autocast_keeps_the_output_layer_in_float32(architecture, options):
    """The guard behind inference's CUDA fp16 autocast, checked with CPU bfloat16 autocast (no GPU here): both
    networks start as the identity, and their output in HU stays exact instead of rounding to 8 mantissa bits."""
    network = build_network(architecture, options).eval()
    image = torch.linspace(-1.024, 3.071, 64 * 64).reshape(1, 1, 64, 64)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        result = network(image)
    assert result.dtype == torch.float32
    assert float((result - image).abs().max()) * 1000.0 < 1.0  # within 1 HU (network units are HU / 1000)


def test_a_pair_source_replaces_the_self_supervised_pairs_under_the_same_schedule():
    """The oracle's hook: the network learns the pairs it is given (here: halve), not the in-plane stand-in task."""
    from SR4ZCTLib.core.training import TrainingPairs

    rng = np.random.default_rng(2)
    images = torch.from_numpy(rng.normal(0.0, 0.2, size=(12, 24, 24)).astype(np.float32))
    held_out = [(images[:2, None], 0.5 * images[:2, None])]
    calls = []

    class Halve:
        def __init__(self, generator):
            self.generator = generator

        def noise_std(self):
            return []

        def batch(self, count, patch):
            chosen = images[torch.randint(0, len(images), (count,), generator=self.generator)]
            return chosen[:, None], 0.5 * chosen[:, None]

    def source(job, generator, reporter):
        calls.append(job.config.iterations)
        return TrainingPairs(Halve(generator), held_out, np.arange(2), len(images), 0.0)

    config = preset("fast").with_iterations(150)
    result = train_network(images, (1.0, 1.0), Acquisition(3.0, 1.5), config,
                           Normalisation(offset=0.0, scale=1.0, kind="identity"), torch.device("cpu"), seed=1,
                           pair_source=source)
    assert calls == [150] and result.metrics["iterations"] == 150
    with torch.no_grad():
        error = float(torch.mean((result.network(images[2:4, None]) - 0.5 * images[2:4, None]) ** 2))
    assert error < 0.5 * float(torch.mean((0.5 * images[2:4]) ** 2))  # the identity start's error


def test_a_profile_spread_draws_each_phase_at_its_own_slice_width():
    """spread 0.2: the bank's slice widths spread about +-20 % around the nominal; without it they all agree."""
    view = torch.zeros((2, 96, 8))
    widths = {}
    for spread in (0.0, 0.2):
        sampler = PairSampler([view, view], 1.0, Acquisition(5.0, 2.5), phases=16,
                              generator=torch.Generator().manual_seed(0), profile_spread=spread)
        bank = sampler.banks[0][:, 20:76]  # (phase, row, column): W = U S, away from the mirrored ends
        offsets = torch.arange(bank.shape[2], dtype=bank.dtype)[None, None, :] - torch.arange(20, 76)[None, :, None]
        per_row = torch.sqrt((bank * offsets**2).sum(dim=2) / bank.sum(dim=2))
        widths[spread] = per_row.mean(dim=1)  # a phase shifts the rows, the mean over a stretch of them stays
    assert float(widths[0.0].std() / widths[0.0].mean()) < 0.02  # only the phase moves it
    assert float(widths[0.2].std() / widths[0.2].mean()) > 0.05
    assert float(widths[0.2].max() / widths[0.2].min()) < 1.6


def test_the_profile_spread_reaches_training_and_is_range_checked():
    from SR4ZCTLib.enhance import _check
    from SR4ZCTLib.errors import InputError
    from SR4ZCTLib.options import RunOptions
    from SR4ZCTLib.core.volume import Volume, read_through_plane_geometry

    volume = Volume(np.zeros((12, 16, 16), np.int16) - 1000, Volume.matrix_from((0, 0, 0), (1.0, 1.0, 2.5), np.eye(3)))
    geometry, _ = read_through_plane_geometry(volume, 5.0, 2.5, None)
    assert _check(volume, geometry, RunOptions(profile_spread=0.1, allow_non_hu=True), None).config.profile_spread == 0.1
    with pytest.raises(InputError, match="profile-spread"):
        _check(volume, geometry, RunOptions(profile_spread=0.9, allow_non_hu=True), None)
