"""The oracle ceiling (issue 16, item 5): the shipped network and schedule trained *supervised* on the truth's own
through-plane pairs, then run exactly as the shipped default (same inference, fusion and projection).

Pairs: inputs are coronal and sagittal images of the thick slices interpolated onto the fine grid (U b, what the
network sees at inference), targets the truth's images on that grid. The thick slices for training are a second
simulation of the same volume with another noise draw, so the oracle cannot learn the test input's noise. A
slab of about 10 % of the lines of each view is held out for validation (core/training.split_validation_slab).
No self-supervised method can beat it on average: it knows the true profile, the noise and the anatomy along z.
"""

from __future__ import annotations

import numpy as np
import torch

from SR4ZCTLib.core.acquisition import Acquisition
from SR4ZCTLib.core.inference import interpolation_to_grid
from SR4ZCTLib.core.intensity import check_intensities
from SR4ZCTLib.core.training import TrainingPairs, preset, random_flips, split_validation_slab, train_network
from SR4ZCTLib.model import TrainedModel

VALIDATION_CROP = 256


class SupervisedSampler:
    """Random (input, truth) patches of coronal and sagittal images, both views mixed, random flips, as PairSampler."""

    def __init__(self, views: list[tuple[torch.Tensor, torch.Tensor]], generator: torch.Generator) -> None:
        self.views, self.generator = views, generator  # per view: (inputs, truths), each (lines, n_fine, width)

    def noise_std(self) -> list[float]:
        return []

    def _randint(self, high: int, count: int) -> torch.Tensor:
        return torch.randint(0, high, (count,), generator=self.generator)

    def batch(self, count: int, patch) -> tuple[torch.Tensor, torch.Tensor]:
        inputs, truths = self.views[int(self._randint(2, 1))]
        lines, rows, cols = inputs.shape
        ph, pw = (rows, cols) if patch is None else (min(patch, rows), min(patch, cols))
        line = self._randint(lines, count)
        row0, col0 = self._randint(rows - ph + 1, count), self._randint(cols - pw + 1, count)
        row_ids = row0[:, None, None] + torch.arange(ph)[None, :, None]
        col_ids = col0[:, None, None] + torch.arange(pw)[None, None, :]
        degraded, sharp = inputs[line[:, None, None], row_ids, col_ids], truths[line[:, None, None], row_ids, col_ids]
        return random_flips(degraded, sharp, int(self._randint(4, 1).item()))


def _views(fine: torch.Tensor, truth: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(inputs, truths) per view: coronal images (one per row y: (z, x)) and sagittal ones (one per column x)."""
    return [(fine.permute(1, 0, 2), truth.permute(1, 0, 2)), (fine.permute(2, 0, 1), truth.permute(2, 0, 1))]


def oracle_model(thick: np.ndarray, truth: np.ndarray, spacing_mm: float, acquisition: Acquisition,
                 preset_name: str = "fast", iterations=None, seed: int = 0) -> TrainedModel:
    """The supervised network: `thick` (n, y, x) HU slices every increment, `truth` (n_fine, y, x) HU on the fine grid
    from the first slice centre, every `spacing_mm` (the in-plane spacing)."""
    normalisation = check_intensities(thick)
    config = preset(preset_name).with_iterations(iterations)
    measured = torch.from_numpy(normalisation.forward(thick.astype(np.float32)))
    fine = torch.einsum("fs,syx->fyx", interpolation_to_grid(len(thick), acquisition.increment_mm, spacing_mm), measured)
    target = torch.from_numpy(normalisation.forward(truth[: fine.shape[0]].astype(np.float32)))
    if target.shape != fine.shape:
        raise ValueError(f"truth {tuple(target.shape)} does not cover the fine grid {tuple(fine.shape)}")

    def pairs(job, generator, reporter) -> TrainingPairs:
        training, held_out = [], []
        for inputs, truths in _views(fine, target):
            keep, shown = split_validation_slab(inputs.shape[0])
            training.append((inputs[keep].contiguous(), truths[keep].contiguous()))
            shown = shown[:: max(1, len(shown) // 8)][:8]
            held_out.append((inputs[shown][:, None, :, :VALIDATION_CROP].contiguous(),
                             truths[shown][:, None, :, :VALIDATION_CROP].contiguous()))
        return TrainingPairs(SupervisedSampler(training, generator), held_out, np.asarray(shown),
                             sum(len(t[0]) for t in training), 0.0)

    result = train_network(measured, (spacing_mm, spacing_mm), acquisition, config, normalisation,
                           torch.device("cpu"), seed, pair_source=pairs)
    return TrainedModel(result.network, config.architecture, dict(config.network_options), acquisition, spacing_mm,
                        normalisation, result.metrics | {"oracle": "supervised on the truth's through-plane pairs"})
