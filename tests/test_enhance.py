"""End-to-end enhancement on a synthetic volume with a known truth, networks, models, reproducibility."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from SR4ZCTLib import Acquisition, InputError
from SR4ZCTLib.enhance import EnhanceOptions, TrainedModel, enhance, linear_baseline
from SR4ZCTLib.core.forward import simulate_thick_slices
from SR4ZCTLib.core.intensity import psnr
from SR4ZCTLib.core.networks import MSDNet, ResidualCNN
from SR4ZCTLib.core.phantom import make_phantom
from SR4ZCTLib.progress import Reporter
from SR4ZCTLib.core.volume import Volume, read_through_plane_geometry

from conftest import oblique_matrix

SPACING = 0.5
ACQUISITION = Acquisition(2.5, 1.25)


@pytest.fixture(scope="module")
def phantom_case():
    """Truth at 0.5 mm and its thick-slice version (2.5 mm every 1.25 mm) as a volume with oblique geometry."""
    truth = make_phantom((81, 64, 64), SPACING, seed=2, noise_hu=5.0)
    thick = simulate_thick_slices(truth, 0, SPACING, ACQUISITION).numpy()
    matrix = oblique_matrix(spacing=(SPACING, SPACING, ACQUISITION.increment_mm))
    volume = Volume(np.round(thick).astype(np.int16), matrix)
    return truth, volume


@pytest.fixture(scope="module")
def trained(phantom_case):
    """One 150-iteration training on the phantom, shared by the quality tests."""
    _, volume = phantom_case
    return _run(volume, iterations=150)


def _run(volume, iterations=150, **options):
    geometry, _ = read_through_plane_geometry(volume, thickness_mm=ACQUISITION.thickness_mm)
    return geometry, enhance(volume, geometry, EnhanceOptions(iterations=iterations, device="cpu", **options))


def test_enhance_beats_linear_interpolation_against_the_truth(phantom_case, trained):
    truth, volume = phantom_case
    before = volume.array.copy()
    geometry, result = trained
    enhanced = result.volume.array.astype(np.float32)
    linear = linear_baseline(volume, geometry).array.astype(np.float32)
    assert enhanced.shape == linear.shape == truth.shape
    inner = (slice(4, -4), slice(4, -4), slice(4, -4))
    gain = psnr(enhanced[inner], truth[inner]) - psnr(linear[inner], truth[inner])
    assert gain > 1.0, f"only {gain:.2f} dB over linear"
    for view in ("coronal", "sagittal"):  # each pass on its own, unprojected: a mis-oriented pass cannot hide
        alone = enhance(volume, geometry, EnhanceOptions(device="cpu", views=(view,), consistency=False),
                        model=result.model).volume.array.astype(np.float32)
        view_gain = psnr(alone[inner], truth[inner]) - psnr(linear[inner], truth[inner])
        assert view_gain > 1.0, f"{view} pass only {view_gain:.2f} dB over linear"
    assert result.metrics.validation_psnr_db > result.metrics.validation_linear_psnr_db
    np.testing.assert_array_equal(volume.array, before)  # the input is never modified


def test_output_geometry_keeps_origin_directions_and_in_plane_grid(phantom_case):
    """In-plane 0.6 mm does not divide the 40 mm from first to last centre, 0.8 mm does: the output reaches the last centre."""
    _, thick = phantom_case
    volume = Volume(thick.array, oblique_matrix(spacing=(0.6, 0.6, ACQUISITION.increment_mm)))
    matrix_before = volume.ijk_to_world.copy()
    geometry, result = _run(volume, iterations=2, target_spacing_mm=0.8)
    out = result.volume
    np.testing.assert_allclose(out.origin, volume.origin, atol=1e-9)
    np.testing.assert_allclose(out.directions, volume.directions, atol=1e-9)
    np.testing.assert_allclose(out.spacing, [0.6, 0.6, 0.8], atol=1e-9)
    assert out.array.shape == ((volume.array.shape[0] - 1) * 1.25 / 0.8 + 1, 64, 64)  # 51: 0, 0.8, ..., 40 mm
    assert linear_baseline(volume, geometry, 0.8).array.shape == out.array.shape
    assert out.array.dtype == np.int16
    np.testing.assert_array_equal(volume.ijk_to_world, matrix_before)


def test_same_seed_same_output_on_cpu(phantom_case):
    _, volume = phantom_case
    first = _run(volume, iterations=5, seed=7)[1].volume.array
    second = _run(volume, iterations=5, seed=7)[1].volume.array
    third = _run(volume, iterations=5, seed=8)[1].volume.array
    np.testing.assert_array_equal(first, second)
    assert not np.array_equal(first, third)


def test_views_agree_so_z_is_oriented_as_in_training(phantom_case, trained):
    """Coronal-only and sagittal-only results score alike: both see z as image axis 0, as in training."""
    truth, volume = phantom_case
    geometry, first = trained
    scores = {}
    for view in ("coronal", "sagittal"):
        result = enhance(volume, geometry, EnhanceOptions(device="cpu", views=(view,), consistency=False),
                         model=first.model)
        scores[view] = psnr(result.volume.array[4:-4, 4:-4, 4:-4], truth[4:-4, 4:-4, 4:-4])
    assert abs(scores["coronal"] - scores["sagittal"]) < 1.0, scores


def test_saved_model_reused_and_mismatch_refused(phantom_case, tmp_path):
    _, volume = phantom_case
    geometry, result = _run(volume, iterations=3)
    path = result.model.save(tmp_path / "model.pt")
    model = TrainedModel.load(path)
    again = enhance(volume, geometry, EnhanceOptions(device="cpu"), model=model)
    np.testing.assert_array_equal(again.volume.array, result.volume.array)
    wrong, _ = read_through_plane_geometry(volume, thickness_mm=3.5)
    with pytest.raises(InputError, match="trained for"):
        enhance(volume, wrong, EnhanceOptions(device="cpu"), model=model)
    (tmp_path / "junk.pt").write_bytes(b"not a model")
    with pytest.raises(InputError, match="model"):
        TrainedModel.load(tmp_path / "junk.pt")


def test_progress_reports_every_stage_in_order(phantom_case):
    _, volume = phantom_case
    geometry, _ = read_through_plane_geometry(volume, thickness_mm=2.5)
    seen = []
    enhance(volume, geometry, EnhanceOptions(iterations=4, device="cpu"), reporter=Reporter(lambda p: seen.append(p)))
    stages = list(dict.fromkeys(p.stage for p in seen))
    assert stages == ["reading", "pairs", "training", "inference", "consistency"]
    assert all(0.0 <= p.fraction <= 1.0 for p in seen)
    assert any("validation_psnr_db" in p.metrics for p in seen)


def test_memory_efficient_msd_matches_the_naive_dense_network():
    torch.manual_seed(0)
    network = MSDNet(depth=12, max_dilation=4).double()
    with torch.no_grad():
        for weight in network.weights:
            weight.normal_()
        network.final.weight.normal_()
    image = torch.randn(2, 1, 21, 17, dtype=torch.double, requires_grad=True)
    (network(image) ** 2).sum().backward()
    fast_grads = [p.grad.clone() for p in network.parameters()] + [image.grad.clone()]
    network.zero_grad()
    image.grad = None
    channels = [image]
    for index, dilation in enumerate(network.dilations):
        padded = F.pad(torch.cat(channels, 1), (dilation,) * 4, mode="reflect")
        channels.append(F.relu(F.conv2d(padded, network.weights[index], network.biases[index], dilation=dilation)))
    naive = network.final(torch.cat(channels, 1))
    (naive ** 2).sum().backward()
    naive_grads = [p.grad for p in network.parameters()] + [image.grad]
    for fast, slow in zip(fast_grads, naive_grads):
        torch.testing.assert_close(fast, slow)


def test_paper_msd_has_100_layers_and_starts_as_identity():
    network = MSDNet()
    assert len(network.dilations) == 100 and network.dilations[:11] == [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 1]
    image = torch.randn(1, 1, 32, 32)
    torch.testing.assert_close(network(image), image)
    torch.testing.assert_close(ResidualCNN()(image), image)
