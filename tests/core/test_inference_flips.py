"""Test-time augmentation: the network's mean over the four flips of each image, flipped back."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from SR4ZCTLib import Acquisition
from SR4ZCTLib.core.inference import _run_network, enhance_stack
from SR4ZCTLib.core.intensity import Normalisation
from SR4ZCTLib.core.device import Compute


def _lopsided() -> nn.Module:
    """A network that is not flip-equivariant: a one-sided kernel."""
    torch.manual_seed(0)
    network = nn.Conv2d(1, 1, 3, padding=1, bias=False)
    with torch.no_grad():
        network.weight.copy_(torch.tensor([[[[0.0, 0.0, 0.0], [0.0, 0.5, 0.5], [0.0, 0.0, 0.3]]]]))
    return network


def test_flips_average_the_four_flipped_outputs():
    images = torch.from_numpy(np.random.default_rng(0).normal(size=(3, 12, 10)).astype(np.float32))
    network = _lopsided()
    plain = _run_network(network, images, torch.device("cpu"), Compute())
    with torch.no_grad():
        x = images[:, None]
        expected = sum(network(x.flip(d)).flip(d) if d else network(x) for d in ((), (2,), (3,), (2, 3)))[:, 0] / 4
    averaged = _run_network(network, images, torch.device("cpu"), Compute(), flips=True)
    torch.testing.assert_close(averaged, expected, rtol=1e-5, atol=1e-6)
    assert float((averaged - plain).abs().max()) > 0.1  # it changes what a lopsided network gives


def test_flips_reach_the_stack_and_keep_its_grid():
    thick = np.random.default_rng(1).normal(0, 50, size=(6, 16, 14)).astype(np.float32)
    identity = Normalisation(offset=0.0, scale=1.0, kind="identity")
    args = (thick, Acquisition(3.0, 1.5), 0.5, _lopsided(), identity, torch.device("cpu"))
    plain, flipped = enhance_stack(*args), enhance_stack(*args, flips=True)
    assert plain.shape == flipped.shape == (16, 16, 14)
    assert float((plain - flipped).abs().max()) > 1.0
