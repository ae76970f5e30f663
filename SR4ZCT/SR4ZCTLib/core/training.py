"""Self-supervised training on the scan's own axial images (the paper's off-axis training).

Each axial image is sharp in-plane. Along one in-plane axis we apply the forward model of the
real through-plane acquisition (thickness, increment, profile, a random sub-slice phase) and
interpolate back: the network learns to undo exactly that. Images are oriented so the degraded
axis is image axis 0, as z is in the coronal and sagittal images seen at inference. With
non-square pixels the degraded axis is first resampled to the finer in-plane spacing, the
spacing of the z grid at inference, so a slice is as many pixels wide in training as there.
"""

from __future__ import annotations

import copy
import math
import time
import warnings
from dataclasses import asdict, dataclass, field, replace
from typing import Callable, Optional

import numpy as np
import torch
from torch import nn

from .acquisition import Acquisition
from .device import Compute, free_cuda_memory, is_out_of_memory, precise_dtype
from ..errors import InputError
from .forward import degradation_operators
from .intensity import PSNR_WINDOW_HU, Normalisation
from .networks import build_network
from .training_noise import TrainingNoise, thick_noise
from ..progress import Reporter


VALIDATION_TASK = ("in-plane stand-in: held-out axial images degraded along an in-plane axis by the through-plane "
                   "model; not a measurement of the through-plane result")


@dataclass(frozen=True)
class TrainingConfig:
    """A training schedule. `epochs` (full images) wins over `iterations` when set."""

    architecture: str
    network_options: dict
    iterations: int
    batch_size: int
    patch_size: Optional[int]  # None: full images, as in the paper
    learning_rate: float = 1e-3
    cosine_decay: bool = True
    epochs: Optional[int] = None
    phases: int = 32
    profile_spread: float = 0.0  # each phase's slice width (FWHM and FWTM) scaled by U(1 - spread, 1 + spread)
    validations: int = 10
    consistency: bool = True  # project the output onto the measured slices
    early_patch_size: Optional[int] = None  # a cheaper first stage: patches this small for the first iterations
    early_fraction: float = 0.0  # the share of iterations on early patches

    def with_schedule(self, schedule: str) -> "TrainingConfig":
        """The schedule `schedule`: "standard" (as is) or "short" (2/3 of the steps, the first third of them on patches
        half as wide: about half the work; bench/speed.py measures what it costs in PSNR). Patch presets only."""
        if schedule not in SCHEDULES:
            raise InputError(f"unknown schedule {schedule!r}; choose one of {', '.join(SCHEDULES)}")
        if schedule == "standard" or self.patch_size is None or self.epochs is not None:
            return self
        return replace(self, iterations=max(1, round(self.iterations * 2 / 3)), early_patch_size=self.patch_size // 2,
                       early_fraction=1 / 3)

    def patch_at(self, iteration: int, iterations: int) -> Optional[int]:
        """The patch size of step `iteration` (1-based) of `iterations`."""
        early = self.early_patch_size is not None and iteration <= self.early_fraction * iterations
        return self.early_patch_size if early else self.patch_size

    def with_iterations(self, iterations: Optional[int]) -> "TrainingConfig":
        if iterations is None:
            return self
        if iterations < 1:
            raise InputError(f"--iterations must be at least 1, got {iterations}")
        return replace(self, iterations=int(iterations), epochs=None)


SCHEDULES = ("standard", "short")

PRESETS: dict[str, TrainingConfig] = {
    # Chosen from measurements on 2 CPU cores (docs/benchmarks.md): a small residual CNN on 64x64
    # patches reaches most of the gain in minutes; MS-D is 4-5x slower per step on a CPU.
    "fast": TrainingConfig(
        architecture="cnn", network_options={"depth": 8, "width": 32}, iterations=1500, batch_size=16,
        patch_size=64, learning_rate=1e-3, cosine_decay=True,
    ),
    # The paper: MS-D 100 layers, width 1, dilations 1..10, full images, 200 epochs, Adam 1e-3, L2.
    "paper": TrainingConfig(
        architecture="msd", network_options={"depth": 100, "width": 1, "max_dilation": 10}, iterations=0,
        batch_size=1, patch_size=None, learning_rate=1e-3, cosine_decay=False, epochs=200, consistency=False,
    ),
}


def preset(name: str) -> TrainingConfig:
    if name not in PRESETS:
        raise InputError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return PRESETS[name]


@dataclass
class TrainingResult:
    network: nn.Module
    metrics: dict = field(default_factory=dict)


class PairSampler:
    """Draws (degraded, sharp) training pairs from axial images on the fly, on the training device.

    A bank of degradation matrices at random phases per in-plane axis (with `profile_spread`, each at its own
    slice width around the acquisition's); a patch needs only the matrix rows it covers, so one batched matmul
    makes a batch of pairs.
    """

    def __init__(self, views: list[torch.Tensor], spacing_mm: float, acquisition: Acquisition,
                 phases: int, generator: torch.Generator, noise: Optional[TrainingNoise] = None,
                 profile_spread: float = 0.0) -> None:
        self.views = views  # from training_views: degraded axis is image axis 0, at spacing_mm
        self.generator = generator
        self.noise = noise
        self.banks, self.noise_banks = [], []
        rng = np.random.default_rng(int(torch.randint(0, 2**31 - 1, (1,), generator=generator)))
        for view in self.views:
            phase_mm = rng.uniform(0.0, acquisition.increment_mm, size=phases)
            scales = rng.uniform(1.0 - profile_spread, 1.0 + profile_spread, size=phases) if profile_spread else None
            operators = [degradation_operators(view.shape[1], spacing_mm,
                                               acquisition if scales is None else acquisition.scaled(scales[i]), p)
                         for i, p in enumerate(phase_mm)]
            bank = np.stack([back @ sampling for sampling, back in operators])
            self.banks.append(torch.from_numpy(bank).to(device=view.device, dtype=view.dtype))
            if noise is not None:
                self.noise_banks.append(_noise_bank(operators, noise, view))

    def noise_std(self) -> list[float]:
        """sigma_add per view (network units); empty without noise."""
        return [bank[2] for bank in self.noise_banks]

    def _randint(self, high: int, count: int) -> torch.Tensor:
        return torch.randint(0, high, (count,), generator=self.generator)

    def batch(self, count: int, patch: Optional[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """(degraded, sharp) of shape (count, 1, h, w), both views mixed, random flips."""
        view_index = int(self._randint(2, 1))
        view, bank = self.views[view_index], self.banks[view_index]
        n_slices, rows, cols = view.shape
        ph, pw = (rows, cols) if patch is None else (min(patch, rows), min(patch, cols))
        slice_index = self._randint(n_slices, count).to(view.device)
        phase_index = self._randint(bank.shape[0], count).to(view.device)
        row0 = self._randint(rows - ph + 1, count).to(view.device)
        col0 = self._randint(cols - pw + 1, count).to(view.device)
        row_ids = row0[:, None] + torch.arange(ph, device=view.device)[None, :]
        col_ids = col0[:, None] + torch.arange(pw, device=view.device)[None, :]
        matrix_rows = bank[phase_index[:, None], row_ids]  # (count, ph, rows)
        columns = view[slice_index[:, None, None], torch.arange(rows, device=view.device)[None, :, None],
                       col_ids[:, None, :]]  # (count, rows, pw)
        degraded = torch.bmm(matrix_rows, columns)
        if self.noise is not None:  # the noise z carries at inference (core/training_noise.py)
            samplings, backs, added, share = self.noise_banks[view_index]
            white = self.noise.coloured((count, rows, pw), self.generator, view.device, view.dtype)
            per_slice = (self.noise.coloured((count, samplings.shape[1], pw), self.generator, view.device, view.dtype)
                         if share < 1.0 else None)
            degraded = degraded + added * thick_noise(samplings[phase_index], backs[phase_index[:, None], row_ids], white,
                                                      per_slice, share)
        sharp = columns[torch.arange(count, device=view.device)[:, None], row_ids]  # (count, ph, pw)
        return random_flips(degraded, sharp, int(self._randint(4, 1).item()))


def random_flips(degraded: torch.Tensor, sharp: torch.Tensor, flips: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A pair batch (count, h, w) flipped alike (bit 0: along h, bit 1: along w), as (count, 1, h, w)."""
    if flips & 1:
        degraded, sharp = degraded.flip(1), sharp.flip(1)
    if flips & 2:
        degraded, sharp = degraded.flip(2), sharp.flip(2)
    return degraded[:, None], sharp[:, None]


def _noise_bank(operators: list[tuple[np.ndarray, np.ndarray]], noise: TrainingNoise,
                view: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float, float]:
    """(S with unit-norm rows, U) per phase, padded to one slice count, sigma_add and a^2 for this axis."""
    count = max(sampling.shape[0] for sampling, _ in operators)
    samplings = np.zeros((len(operators), count, operators[0][0].shape[1]))
    backs = np.zeros((len(operators), operators[0][1].shape[0], count))
    for index, (sampling, back) in enumerate(operators):
        samplings[index, : len(sampling)] = sampling / np.linalg.norm(sampling, axis=1, keepdims=True)
        backs[index, :, : back.shape[1]] = back
    added = float(np.mean([noise.added_std(sampling) for sampling, _ in operators]))
    share = float(np.mean([noise.overlap_share(sampling) for sampling, _ in operators]))
    return (torch.from_numpy(samplings).to(device=view.device, dtype=view.dtype),
            torch.from_numpy(backs).to(device=view.device, dtype=view.dtype), added, share)


def training_views(slices: torch.Tensor, in_plane_spacing_mm: tuple[float, float]) -> tuple[list[torch.Tensor], float]:
    """(views, spacing): the images with rows, then columns, as image axis 0, that axis at the finer in-plane spacing.

    A coarser axis is resampled (cubic B-spline) to the finer spacing, which is the z grid at inference.
    """
    grid = min(in_plane_spacing_mm)
    views = []
    for view, spacing in zip((slices, slices.transpose(1, 2)), in_plane_spacing_mm):
        if spacing > grid * (1.0 + 1e-6):
            from scipy.interpolate import make_interp_spline

            length = view.shape[1]
            positions = np.arange(int(math.floor((length - 1) * spacing / grid + 1e-6)) + 1) * grid
            spline = make_interp_spline(np.arange(length) * spacing, view.cpu().numpy(), k=3, axis=1)
            view = torch.from_numpy(spline(positions).astype(np.float32)).to(slices.device)
        views.append(view)
    return views, grid


VALIDATION_NOISE_SEED = 20231008  # the validation pairs' noise is the same in every run


def validation_pairs(views: list[torch.Tensor], spacing_mm: float, acquisition: Acquisition,
                     max_size: int = 256, noise: Optional[TrainingNoise] = None) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Fixed (degraded, sharp) pairs from held-out slices (training_views): both axes, phases 0 and d/2, central crop;
    with `noise`, the degraded images carry it as in training (a fixed seed)."""
    pairs = []
    generator = torch.Generator().manual_seed(VALIDATION_NOISE_SEED)
    for view in views:
        length = view.shape[1]
        for phase in (0.0, 0.5 * acquisition.increment_mm):
            sampling, back = degradation_operators(length, spacing_mm, acquisition, phase)
            degraded = torch.matmul(torch.from_numpy(back @ sampling).to(view), view)
            if noise is not None:
                count, share = len(view), noise.overlap_share(sampling)
                white = noise.coloured(tuple(view.shape), generator, view.device, view.dtype)
                per_slice = (noise.coloured((count, len(sampling), view.shape[2]), generator, view.device, view.dtype)
                             if share < 1.0 else None)
                unit = torch.from_numpy(sampling / np.linalg.norm(sampling, axis=1, keepdims=True)).to(view)
                degraded = degraded + noise.added_std(sampling) * thick_noise(
                    unit.expand(count, -1, -1), torch.from_numpy(back).to(view).expand(count, -1, -1), white, per_slice,
                    share)
            r0 = max(0, (view.shape[1] - max_size) // 2)
            c0 = max(0, (view.shape[2] - max_size) // 2)
            crop = (slice(None), slice(r0, r0 + max_size), slice(c0, c0 + max_size))
            pairs.append((degraded[crop][:, None].contiguous(), view[crop][:, None].contiguous()))
    return pairs


def window_psnr(estimate: torch.Tensor, truth: torch.Tensor, normalisation: Normalisation) -> float:
    """PSNR (dB) over the fixed HU window mapped to [0, 1]; on the device, summed in float64 (MPS: float32)."""
    lo, hi = PSNR_WINDOW_HU
    dtype = precise_dtype(estimate.device)
    a = ((normalisation.inverse(estimate.to(dtype)) - lo) / (hi - lo)).clamp(0, 1)
    b = ((normalisation.inverse(truth.to(dtype)) - lo) / (hi - lo)).clamp(0, 1)
    mse = float(torch.mean((a - b) ** 2))
    return float("inf") if mse == 0 else 10.0 * math.log10(1.0 / mse)


def evaluate(network: nn.Module, pairs, normalisation: Normalisation, batch: int = 4,
             compute: Compute = Compute()) -> tuple[float, float]:
    """(network PSNR, linear-interpolation PSNR) over the validation pairs, pooled; the network runs as at inference
    (float32, in `compute`'s memory format)."""
    network.eval()
    estimates, degraded_all, truths = [], [], []
    with torch.no_grad():
        for degraded, sharp in pairs:
            for start in range(0, degraded.shape[0], batch):
                estimates.append(network(compute.images(degraded[start:start + batch])).flatten())
            degraded_all.append(degraded.flatten())
            truths.append(sharp.flatten())
    network.train()
    truth = torch.cat(truths)
    return window_psnr(torch.cat(estimates), truth, normalisation), window_psnr(torch.cat(degraded_all), truth, normalisation)


def split_validation_slab(n_slices: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (training, validation): a contiguous slab of about 10 % of the slices, just past the middle."""
    size = max(1, int(round(0.1 * n_slices)))
    start = min(n_slices - size, n_slices // 2)
    validation = np.arange(start, start + size)
    training = np.setdiff1d(np.arange(n_slices), validation)
    if len(training) == 0:
        raise InputError(f"only {n_slices} slice(s): too few to train and validate on")
    return training, validation


def total_iterations(config: TrainingConfig, n_training_slices: int) -> int:
    if config.epochs is not None:  # an epoch: every training slice once along each in-plane axis
        return max(1, config.epochs * 2 * n_training_slices // config.batch_size)
    return config.iterations


@dataclass(frozen=True)
class TrainingJob:
    """One training run: axial images (n, rows, cols) in network units, their spacing, the acquisition to undo."""

    slices: torch.Tensor
    in_plane_spacing_mm: tuple[float, float]
    acquisition: Acquisition
    config: TrainingConfig
    normalisation: Normalisation
    device: torch.device
    seed: int = 0
    compute: Compute = Compute()
    noise: Optional[TrainingNoise] = None  # thick-slice noise added to the degraded inputs (core/training_noise.py)
    pair_source: Optional["PairSource"] = None  # other pairs than the self-supervised ones (bench/oracle.py's ceiling)


def train_network(
    slices: np.ndarray | torch.Tensor,
    in_plane_spacing_mm: tuple[float, float],
    acquisition: Acquisition,
    config: TrainingConfig,
    normalisation: Normalisation,
    device: torch.device,
    seed: int = 0,
    reporter: Optional[Reporter] = None,
    compute: Compute = Compute(),
    noise: Optional[TrainingNoise] = None,
    pair_source: Optional["PairSource"] = None,
) -> TrainingResult:
    """Train on axial images `slices` (n, rows, cols) in network units; keep the best validation checkpoint.

    CUDA out of memory halves the batch (down to 1), then falls back to the CPU with a message. `compute`:
    autocast and memory format (deterministic for a seed, thread count and CPU type either way). `pair_source`
    replaces the self-supervised pairs with others, under the same schedule (the supervised oracle of bench/).
    """
    job = TrainingJob(torch.as_tensor(slices, dtype=torch.float32), in_plane_spacing_mm, acquisition, config,
                      normalisation, device, seed, compute, noise, pair_source)
    return _train_with_retries(job, reporter or Reporter())


def _train_with_retries(job: TrainingJob, reporter: Reporter) -> TrainingResult:
    try:
        return _train(job, reporter)
    except RuntimeError as error:
        if job.device.type != "cuda" or not is_out_of_memory(error):
            raise
        free_cuda_memory()
        if job.config.batch_size > 1:
            smaller = replace(job, config=replace(job.config, batch_size=job.config.batch_size // 2))
            reporter.step("training", 0.0, f"GPU out of memory; retrying with batch size {smaller.config.batch_size}")
            return _train_with_retries(smaller, reporter)
        reporter.step("training", 0.0, "GPU out of memory even at batch size 1; training on the CPU instead")
        return _train_with_retries(replace(job, device=torch.device("cpu"), compute=Compute()), reporter)


@dataclass
class TrainingPairs:
    """The training pair sampler (batch(count, patch) -> (degraded, sharp); noise_std()) and the held-out
    validation pairs of a job."""

    sampler: PairSampler
    held_out: list
    validation_ids: np.ndarray
    n_training: int
    seconds: float


PairSource = Callable[[TrainingJob, torch.Generator, Reporter], TrainingPairs]


def _prepare_pairs(job: TrainingJob, generator: torch.Generator, reporter: Reporter) -> TrainingPairs:
    """Training views of the training slab, validation pairs from a few images of the held-out slab."""
    training_ids, validation_ids = split_validation_slab(job.slices.shape[0])
    reporter.step("pairs", 0.0, "preparing training pairs")
    started = time.perf_counter()
    views, spacing = training_views(job.slices[training_ids], job.in_plane_spacing_mm)
    sampler = PairSampler([view.to(job.device) for view in views], spacing, job.acquisition, job.config.phases, generator,
                          job.noise, job.config.profile_spread)
    del views
    shown = validation_ids[:: max(1, len(validation_ids) // 4)][:4]  # at most 4 images per axis and phase
    views, spacing = training_views(job.slices[shown], job.in_plane_spacing_mm)
    held_out = validation_pairs([view.to(job.device) for view in views], spacing, job.acquisition, noise=job.noise)
    seconds = time.perf_counter() - started
    reporter.step("pairs", 1.0, f"pairs ready in {seconds:.1f} s", seconds=seconds)
    return TrainingPairs(sampler, held_out, validation_ids, len(training_ids), seconds)


def _train(job: TrainingJob, reporter: Reporter) -> TrainingResult:
    """Seeded training with periodic validation; the network comes back at its best validation checkpoint."""
    torch.manual_seed(job.seed)
    pairs = (job.pair_source or _prepare_pairs)(job, torch.Generator().manual_seed(job.seed), reporter)
    config, normalisation = job.config, job.normalisation
    compute = job.compute
    network = compute.network(build_network(config.architecture, config.network_options).to(job.device))
    optimiser = torch.optim.Adam(network.parameters(), lr=config.learning_rate)
    iterations = total_iterations(config, pairs.n_training)
    schedule = (torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=iterations, eta_min=config.learning_rate * 0.05)
                if config.cosine_decay else None)
    loss_function = nn.MSELoss()
    every = max(1, iterations // max(1, config.validations))
    best_psnr, linear_psnr = evaluate(network, pairs.held_out, normalisation, compute=compute)
    best_state, best_iteration = copy.deepcopy(network.state_dict()), 0
    history = [{"iteration": 0, "validation_psnr_db": best_psnr}]
    started = last_report = time.perf_counter()
    loss_value = float("nan")
    for iteration in range(1, iterations + 1):
        degraded, sharp = pairs.sampler.batch(config.batch_size, config.patch_at(iteration, iterations))
        with compute.training_context(job.device):
            loss = loss_function(network(compute.images(degraded)).float(), sharp)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        if schedule is not None:
            schedule.step()
        loss_value = float(loss.detach()) if iteration % 10 == 0 or iteration == iterations else loss_value
        if iteration % every == 0 or iteration == iterations:
            current, _ = evaluate(network, pairs.held_out, normalisation, compute=compute)
            history.append({"iteration": iteration, "validation_psnr_db": current})
            if current > best_psnr:
                best_psnr, best_iteration = current, iteration
                best_state = copy.deepcopy(network.state_dict())
        now = time.perf_counter()
        if iteration % max(1, iterations // 200) == 0 or iteration == iterations or now - last_report > 0.5:
            last_report = now
            reporter.step("training", iteration / iterations,
                          f"iteration {iteration}/{iterations}, validation PSNR {best_psnr:.2f} dB (linear {linear_psnr:.2f} dB)",
                          iteration=iteration, loss=loss_value, validation_psnr_db=best_psnr,
                          linear_psnr_db=linear_psnr)
        else:
            reporter.check()
    network.load_state_dict(best_state)
    network.eval()
    if best_iteration == 0:
        warnings.warn(f"training learned nothing: no step beat the identity start ({best_psnr:.2f} dB) on the held-out "
                      "in-plane stand-in task, so the network passes its input through (linear interpolation); "
                      "try more --iterations or check --thickness and --increment", UserWarning, stacklevel=2)
    metrics = {
        "iterations": iterations,
        "best_iteration": best_iteration,
        "training_seconds": time.perf_counter() - started,
        "pair_setup_seconds": pairs.seconds,
        "validation_psnr_db": best_psnr,
        "validation_linear_psnr_db": linear_psnr,
        "validation_gain_db": best_psnr - linear_psnr,
        "validation_slices": [int(pairs.validation_ids[0]), int(pairs.validation_ids[-1])],
        "validation_task": VALIDATION_TASK,
        "psnr_window_hu": list(PSNR_WINDOW_HU),
        "history": history,
        "config": asdict(config),
        "device": str(job.device),
        "compute": compute.describe(),
    }
    if job.noise is not None:
        metrics["training_noise"] = job.noise.describe(float(np.mean(pairs.sampler.noise_std())), normalisation.scale)
    return TrainingResult(network=network, metrics=metrics)
