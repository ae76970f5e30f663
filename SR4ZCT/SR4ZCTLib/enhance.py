"""The whole job on one volume: check, train on its own axial images, enhance, and keep its geometry."""

from __future__ import annotations

import time
import warnings
from dataclasses import asdict, dataclass, replace
from typing import Optional

import numpy as np
import torch

from .core.confidence import PassDifference, confidence_volume
from .core.device import Compute, resolve_compute, resolve_device
from .core.inference import enhance_stack, resample_along_axis0
from .core.intensity import Normalisation, check_intensities
from .core.memory import check_memory, estimate_memory_bytes, fine_grid_size
from .core.slice_profile import FALLBACK_NOTE, estimate_noise, estimate_slice_profile
from .core.training import PRESETS, TrainingConfig, preset, train_network
from .core.training_noise import TrainingNoise, slice_correlation
from .core.volume import ThroughPlaneGeometry, Volume, enhanced_matrix
from .errors import InputError
from .metrics import RunMetrics
from .model import TrainedModel
from .options import DEFAULT_PROFILE, VIEWS, RunOptions, check_range, default_threads
from .progress import Reporter

SPACING_ROUNDING = 1e-6  # relative: a target spacing this close to the increment is the increment
EnhanceOptions = RunOptions  # what enhance() runs with: the one options type (options.py)


@dataclass
class EnhanceResult:
    volume: Volume
    model: Optional[TrainedModel]
    metrics: RunMetrics
    confidence: Optional[Volume] = None  # |coronal - sagittal| in HU on the output grid, when asked for
    geometry: Optional[ThroughPlaneGeometry] = None  # as used: with --profile auto, the estimated profile


@dataclass(frozen=True)
class _Plan:
    """What a checked run will do: schedule, grids, intensity mapping and device."""

    config: TrainingConfig
    grid_spacing_mm: float  # the fine grid the network works on: the finer in-plane spacing
    target_spacing_mm: float  # the output's slice spacing
    normalisation: Normalisation
    device: torch.device
    device_note: str
    consistency: bool
    compute: Compute  # the network's autocast and memory format (--precision; RunOptions.channels_last)
    training_noise: str = "auto"  # --training-noise: "auto" measures the slices' noise and trains with it


def enhance(
    volume: Volume,
    geometry: ThroughPlaneGeometry,
    options: Optional[RunOptions] = None,
    model: Optional[TrainedModel] = None,
    reporter: Optional[Reporter] = None,
) -> EnhanceResult:
    """Train on the volume's own axial images (or reuse `model`) and return the enhanced volume.

    The input volume is never modified. Output: same origin, directions and in-plane grid; slices
    from the first input slice centre to the last, every target spacing; the input's integer type
    when the rounded values fit it, float32 otherwise. CPU work runs on `options.threads` threads.
    """
    options = options or RunOptions()
    threads = int(check_range("threads", options.threads or default_threads()))
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return _enhance(volume, geometry, options, model, reporter or Reporter())
    finally:
        torch.set_num_threads(previous)


def _enhance(volume: Volume, geometry: ThroughPlaneGeometry, options: RunOptions, model: Optional[TrainedModel],
             reporter: Reporter) -> EnhanceResult:
    started = time.perf_counter()
    profile_note = None
    if options.profile == "auto":
        geometry, profile_note = estimated_profile(volume, geometry, model, reporter)
    plan = _check(volume, geometry, options, model)
    reporter.step("reading", 1.0, f"device: {plan.device_note}, {plan.compute.describe()}; "
                                  f"{geometry.acquisition.describe()}")
    stack = np.moveaxis(volume.array, geometry.array_axis, 0)  # a view: (through-plane, rows, cols)
    timings: dict[str, float] = {}
    if model is None:
        model = _train(stack, volume, geometry, plan, options.seed, reporter)
        timings["training_s"] = model.metrics["training_seconds"] + model.metrics["pair_setup_seconds"]
        training_metrics = dict(model.metrics)
    else:  # no validation on this scan: the figures in the file are the training scan's, and say so
        training_metrics = {"reused_model": model.loaded_from or "given",
                            "training_scan": {k: v for k, v in model.metrics.items() if k.startswith("validation")}}
    inference_started = time.perf_counter()
    output, confidence = _infer(stack, volume, geometry, plan, model, options, reporter)
    timings["inference_s"] = time.perf_counter() - inference_started
    timings["total_s"] = time.perf_counter() - started
    metrics = RunMetrics(
        preset=options.preset, device=plan.device_note,
        acquisition=asdict(geometry.acquisition) | {"overlap_mm": geometry.acquisition.overlap_mm,
                                                    "fwtm_mm": geometry.acquisition.fwtm_ratio
                                                    * geometry.acquisition.thickness_mm},
        thickness_source=geometry.thickness_source, increment_source=geometry.increment_source,
        target_spacing_mm=plan.target_spacing_mm, views=list(options.views),
        consistency="on" if plan.consistency else "off",
        consistency_lambda=float(options.consistency_lambda) if plan.consistency else None,
        input_shape=list(volume.array.shape), output_shape=list(output.array.shape), timings=timings,
        training=training_metrics, threads=torch.get_num_threads() if plan.device.type == "cpu" else None,
        extra={"compute": plan.compute.describe(), "schedule": options.schedule}
        | ({"slice_profile": profile_note} if profile_note is not None else {})
        | ({"test_time_flips": True} if options.flips else {}),
    )
    return EnhanceResult(volume=output, model=model, metrics=metrics, confidence=confidence, geometry=geometry)


def estimated_profile(volume: Volume, geometry: ThroughPlaneGeometry, model: Optional[TrainedModel],
                      reporter: Reporter) -> tuple[ThroughPlaneGeometry, dict]:
    """--profile auto: the slice profile estimated from the scan (core/slice_profile.py); where the estimate is not
    trusted, the default profile (DEFAULT_PROFILE) of the nominal thickness, with a warning. With a model, the
    profile it was trained with."""
    if model is not None:
        own = model.acquisition
        acquisition = replace(geometry.acquisition, profile=own.profile, fwtm_mm=own.fwtm_mm)
        return replace(geometry, acquisition=acquisition), {"source": "the model's", "profile": own.profile}
    reporter.step("reading", 0.0, "estimating the slice profile from the scan")
    nominal = geometry.acquisition
    stack = np.moveaxis(volume.array, geometry.array_axis, 0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        estimate = estimate_slice_profile(stack, min(geometry.in_plane_spacing_mm), nominal.increment_mm,
                                          nominal.thickness_mm)
    note = {"source": "estimated", **estimate.as_dict()}
    if not estimate.trusted:
        reasons = [n for n in estimate.notes if n != FALLBACK_NOTE]  # enhance falls back to its own default
        warnings.warn(f"--profile auto: the slice profile estimate is not trusted ({'; '.join(reasons)}); "
                      f"using the default {DEFAULT_PROFILE} of the nominal {nominal.thickness_mm:g} mm", UserWarning,
                      stacklevel=2)
        acquisition = replace(nominal, profile=DEFAULT_PROFILE, fwtm_mm=None)
    else:
        family = {"box": "box", "gaussian": "gaussian"}.get(estimate.family, "blurred-box")
        acquisition = replace(nominal, thickness_mm=float(estimate.fwhm_mm), profile=family,
                              fwtm_mm=float(estimate.fwtm_mm) if family == "blurred-box" else None)
    del caught
    note["used"] = acquisition.describe()
    return replace(geometry, acquisition=acquisition), note


def _check(volume: Volume, geometry: ThroughPlaneGeometry, options: RunOptions,
           model: Optional[TrainedModel]) -> _Plan:
    """Every check before any work: ranges, views, memory, intensities, the model's protocol, the device."""
    config = preset(options.preset).with_schedule(options.schedule).with_iterations(options.iterations)
    if options.profile_spread:
        config = replace(config, profile_spread=float(check_range("profile-spread", options.profile_spread)))
    acquisition = geometry.acquisition
    grid_spacing = min(geometry.in_plane_spacing_mm)
    target = check_target_spacing(options.target_spacing_mm, grid_spacing, acquisition.increment_mm)
    options.checked()
    unknown_views = set(options.views) - set(VIEWS)
    if unknown_views:
        raise InputError(f"unknown view(s) {sorted(unknown_views)}; choose from {', '.join(VIEWS)}")
    check_memory(estimate_memory_bytes(volume.array.shape, geometry.array_axis, acquisition.increment_mm, grid_spacing,
                                       target, config.phases), options.force)
    if model is None:
        normalisation = check_intensities(volume.array, options.allow_non_hu)
    else:
        normalisation = model.normalisation
        check_intensities(volume.array, options.allow_non_hu or model.normalisation.kind != "hu")
        model.check_matches(acquisition, grid_spacing)
    device, device_note = resolve_device(options.device)
    consistency = config.consistency if options.consistency is None else bool(options.consistency)
    compute = resolve_compute(options.precision, device, options.channels_last)
    return _Plan(config, grid_spacing, target, normalisation, device, device_note, consistency, compute,
                 options.training_noise)


def _train(stack: np.ndarray, volume: Volume, geometry: ThroughPlaneGeometry, plan: _Plan, seed: int,
           reporter: Reporter) -> TrainedModel:
    """Train a network on the stack's own axial images (in network units)."""
    slices = torch.empty(stack.shape, dtype=torch.float32)
    for index in range(stack.shape[0]):
        slices[index] = torch.from_numpy(plan.normalisation.forward(np.asarray(stack[index], dtype=np.float32)))
    spacing = _in_plane_spacing_for_stack(volume, geometry.axis)
    noise = _training_noise(stack, min(spacing), plan, reporter)
    result = train_network(slices, spacing, geometry.acquisition, plan.config, plan.normalisation, plan.device, seed,
                           reporter, plan.compute, noise)
    if plan.training_noise == "auto" and noise is None:
        result.metrics["training_noise"] = {"std_hu": 0.0, "added_std_hu": 0.0, "note": "no noise found to match"}
    return TrainedModel(result.network, plan.config.architecture, dict(plan.config.network_options),
                        geometry.acquisition, plan.grid_spacing_mm, plan.normalisation, result.metrics)


def _training_noise(stack: np.ndarray, spacing_mm: float, plan: _Plan, reporter: Reporter) -> Optional[TrainingNoise]:
    """--training-noise auto: the slices' noise (std, in-plane correlation) from uniform regions, in network units."""
    if plan.training_noise != "auto":
        return None
    reporter.step("pairs", 0.0, "measuring the slices' noise")
    estimate = estimate_noise(stack, spacing_mm)
    noise = TrainingNoise.from_estimate(estimate, plan.normalisation.scale, slice_correlation(stack))
    if noise is None:  # a noise-free input (a simulation) or no uniform region: nothing to match, not a fault
        reporter.step("pairs", 0.0, f"no noise found to match ({'; '.join(estimate.notes) or 'std 0'}); "
                                    "training without added noise")
    return noise


def _infer(stack: np.ndarray, volume: Volume, geometry: ThroughPlaneGeometry, plan: _Plan, model: TrainedModel,
           options: RunOptions, reporter: Reporter) -> tuple[Volume, Optional[Volume]]:
    """Enhance every coronal and sagittal slice, project, resample to the target spacing; the volume and its map."""
    increment, grid, target = geometry.acquisition.increment_mm, plan.grid_spacing_mm, plan.target_spacing_mm
    fine_shape = (fine_grid_size(stack.shape[0], increment, grid),) + stack.shape[1:]
    passes = PassDifference(fine_shape, options.views) if options.confidence else None
    enhanced = enhance_stack(stack, geometry.acquisition, grid, model.network, plan.normalisation, plan.device,
                             views=tuple(options.views),
                             consistency_lambda=options.consistency_lambda if plan.consistency else None,
                             batch_size=options.batch_size, reporter=reporter, on_pass=passes, compute=plan.compute,
                             flips=options.flips)
    if abs(target - grid) > 1e-9:
        enhanced = resample_along_axis0(enhanced, grid, target, fine_grid_size(stack.shape[0], increment, target))
    output_array = to_output_type(enhanced, volume.array.dtype)
    del enhanced
    output = Volume(array=np.ascontiguousarray(np.moveaxis(output_array, 0, geometry.array_axis)),
                    ijk_to_world=enhanced_matrix(volume, geometry.axis, target), source=volume.source)
    confidence = confidence_volume(passes, plan.normalisation.scale, grid, target, geometry.array_axis,
                                   output.ijk_to_world, output.array.shape[geometry.array_axis])
    return output, confidence


def _in_plane_spacing_for_stack(volume: Volume, axis: int) -> tuple[float, float]:
    """Spacing of the stack's rows and columns (the two in-plane ijk axes, numpy order)."""
    in_plane_ijk = [a for a in (2, 1, 0) if a != axis]  # numpy axes run k, j, i
    spacing = volume.spacing
    return float(spacing[in_plane_ijk[0]]), float(spacing[in_plane_ijk[1]])


def check_target_spacing(target_mm: Optional[float], grid_spacing_mm: float, increment_mm: float) -> float:
    """The output slice spacing (default: the finer in-plane spacing), within its range and at most the increment;
    a value within rounding (1e-6 relative) of the increment is the increment, so the last slice is kept."""
    target = float(target_mm or grid_spacing_mm)
    check_range("target-spacing", target)
    if target > increment_mm * (1 + SPACING_ROUNDING):
        raise InputError(f"--target-spacing {target:g} mm is coarser than the slice increment {increment_mm:g} mm: "
                         f"there would be nothing to enhance; give at most {increment_mm:g} mm")
    return increment_mm if abs(target - increment_mm) <= increment_mm * SPACING_ROUNDING else target


def to_output_type(values: torch.Tensor, input_dtype: np.dtype) -> np.ndarray:
    """The documented output type: the input's integer type (rounded) when every value fits it, else float32."""
    if np.issubdtype(input_dtype, np.integer):
        limits = np.iinfo(input_dtype)
        rounded_low, rounded_high = float(torch.round(values.min())), float(torch.round(values.max()))
        if limits.min <= rounded_low and rounded_high <= limits.max:
            result = np.empty(values.shape, dtype=input_dtype)
            for start in range(0, values.shape[0], 32):
                result[start:start + 32] = torch.round(values[start:start + 32]).to(torch.float64).numpy()
            return result
    return values.to(torch.float32).numpy()


def linear_baseline(volume: Volume, geometry: ThroughPlaneGeometry, target_spacing_mm: Optional[float] = None,
                    consistency_lambda: Optional[float] = None) -> Volume:
    """Plain linear interpolation onto the output grid (optionally projected onto consistency): the reference."""
    grid_spacing = min(geometry.in_plane_spacing_mm)
    target = float(target_spacing_mm or grid_spacing)
    stack = np.moveaxis(volume.array, geometry.array_axis, 0)
    values = enhance_stack(stack, geometry.acquisition, target, None, Normalisation(offset=0.0, scale=1.0, kind="identity"),
                           torch.device("cpu"), consistency_lambda=consistency_lambda)
    return Volume(np.ascontiguousarray(np.moveaxis(to_output_type(values, volume.array.dtype), 0, geometry.array_axis)),
                  enhanced_matrix(volume, geometry.axis, target), source=volume.source)


__all__ = ["EnhanceOptions", "EnhanceResult", "RunOptions", "TrainedModel", "enhance", "linear_baseline", "PRESETS"]
