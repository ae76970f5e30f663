"""The whole job on one volume: check, train on its own axial images, enhance, and keep its geometry."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from .core.acquisition import Acquisition
from .core.confidence import PassDifference, confidence_volume
from .core.device import resolve_device
from .errors import InputError
from .core.forward import CONSISTENCY_LAMBDA, CONSISTENCY_LAMBDA_RANGE
from .core.inference import VIEWS, enhance_stack, resample_along_axis0
from .core.intensity import Normalisation, check_intensities
from .core.memory import check_memory, estimate_memory_bytes, fine_grid_size
from .core.networks import build_network
from .progress import Reporter
from .core.training import PRESETS, preset, train_network
from .core.volume import ThroughPlaneGeometry, Volume, enhanced_matrix
from .limits import check_range, default_threads

MODEL_FORMAT = "sr4zct-model-1"
ACQUISITION_MATCH_MM = 0.05  # a saved model is reused only for an acquisition this close to its own
MODEL_KEYS = {"format", "architecture", "network_options", "state_dict", "acquisition", "grid_spacing_mm",
              "normalisation", "metrics"}
ARCHITECTURE_BOUNDS = {  # every option of every architecture, bounded so a model file cannot ask for tens of GB
    "cnn": {"depth": (2, 64), "width": (1, 256)},
    "msd": {"depth": (1, 500), "width": (1, 1), "max_dilation": (1, 64)},
}
NORMALISATION_KINDS = ("hu", "percentile", "identity")


@dataclass
class EnhanceOptions:
    """What to run. Defaults: the `fast` preset, both views fused, the preset's consistency projection."""

    preset: str = "fast"
    iterations: Optional[int] = None
    target_spacing_mm: Optional[float] = None  # default: the finer in-plane spacing
    device: str = "auto"
    seed: int = 0
    views: Sequence[str] = VIEWS
    consistency: Optional[bool] = None  # project onto the measured slices; default: the preset's
    consistency_lambda: float = CONSISTENCY_LAMBDA  # the projection's relative regularisation
    allow_non_hu: bool = False
    force: bool = False  # skip the memory check
    batch_size: Optional[int] = None
    confidence: bool = False  # also return the coronal/sagittal disagreement map (confidence.py)
    threads: Optional[int] = None  # CPU threads; default min(4, CPU count): results depend on it, not on OMP_NUM_THREADS


@dataclass
class TrainedModel:
    """A trained network with the acquisition and intensity mapping it was trained for."""

    network: torch.nn.Module
    architecture: str
    network_options: dict
    acquisition: Acquisition
    grid_spacing_mm: float
    normalisation: Normalisation
    metrics: dict = field(default_factory=dict)
    loaded_from: Optional[str] = None  # the model file, when reused

    def bundle(self) -> dict:
        """Everything a model file holds (see MODEL_KEYS)."""
        return {
            "format": MODEL_FORMAT,
            "architecture": self.architecture,
            "network_options": self.network_options,
            "state_dict": {k: v.detach().cpu() for k, v in self.network.state_dict().items()},
            "acquisition": asdict(self.acquisition),
            "grid_spacing_mm": self.grid_spacing_mm,
            "normalisation": self.normalisation.as_dict(),
            "metrics": {k: v for k, v in self.metrics.items() if k != "history"},
        }

    def stage(self, publication, path: Path) -> None:
        """Write the model to path's temporary file and verify it loads back as a valid model."""
        bundle = self.bundle()
        publication.stage(path, lambda name: torch.save(bundle, name), lambda name: TrainedModel.load(name))

    def save(self, path: str | Path, overwrite: bool = False) -> Path:
        """Write, verify and publish (no clobber unless overwrite)."""
        from .io.publish import write_alone

        return write_alone(path, overwrite, self.stage)[0]

    @classmethod
    def load(cls, path: str | Path) -> "TrainedModel":
        """Read a model file safely (weights only) and refuse any that is not exactly a sane SR4ZCT model."""
        try:
            bundle = torch.load(str(path), map_location="cpu", weights_only=True)
        except FileNotFoundError:
            raise InputError(f"model file {path} does not exist") from None
        except Exception as error:
            raise InputError(f"cannot read model {path}: {error.__class__.__name__}; was it written by sr4zct?") from None
        if not isinstance(bundle, dict) or bundle.get("format") != MODEL_FORMAT:
            raise InputError(f"{path} is not an SR4ZCT model file ({MODEL_FORMAT})")
        try:
            network = _validated_network(bundle)
            acquisition = Acquisition(**bundle["acquisition"])
            grid_spacing = _finite(bundle["grid_spacing_mm"], "grid_spacing_mm", 0.01, 100.0)
            normalisation = _validated_normalisation(bundle["normalisation"])
        except (InputError, TypeError, KeyError, ValueError, RuntimeError) as error:
            raise InputError(f"{path} is not a valid SR4ZCT model ({error}); train a new one (omit --model)") from None
        network.eval()
        model = cls(network, bundle["architecture"], dict(bundle["network_options"]), acquisition, grid_spacing,
                    normalisation, dict(bundle["metrics"]))
        model.loaded_from = str(path)
        return model

    def check_matches(self, acquisition: Acquisition, grid_spacing_mm: float) -> None:
        """Refuse to apply a model to an acquisition it was not trained for (the paper's central point)."""
        mine = self.acquisition
        if (abs(mine.thickness_mm - acquisition.thickness_mm) > ACQUISITION_MATCH_MM
                or abs(mine.increment_mm - acquisition.increment_mm) > ACQUISITION_MATCH_MM
                or mine.profile != acquisition.profile):
            raise InputError(
                f"the model was trained for {mine.describe()} but this scan has {acquisition.describe()}; "
                "a mismatched model costs image quality: train a new one (omit --model) or correct --thickness/--increment"
            )
        if abs(self.grid_spacing_mm - grid_spacing_mm) > 0.02 * grid_spacing_mm:
            raise InputError(
                f"the model was trained at in-plane spacing {self.grid_spacing_mm:g} mm, this scan has {grid_spacing_mm:g} mm; "
                "train a new model for this scan (omit --model)"
            )


def _finite(value, name: str, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value) or not low <= value <= high:
        raise ValueError(f"{name} {value!r} is not a number in {low:g}..{high:g}")
    return float(value)


def _validated_network(bundle: dict) -> torch.nn.Module:
    """The model's network, after checking keys, architecture bounds, tensor names, shapes and finiteness."""
    if set(bundle) != MODEL_KEYS:
        raise ValueError(f"unexpected keys {sorted(set(bundle) - MODEL_KEYS)}, missing {sorted(MODEL_KEYS - set(bundle))}")
    bounds = ARCHITECTURE_BOUNDS.get(bundle["architecture"])
    options = bundle["network_options"]
    if bounds is None or not isinstance(options, dict) or not set(options) <= set(bounds):
        raise ValueError(f"unknown architecture {bundle['architecture']!r} with options {options!r}")
    for name, value in options.items():
        if isinstance(value, bool) or not isinstance(value, int) or not bounds[name][0] <= value <= bounds[name][1]:
            raise ValueError(f"{bundle['architecture']} {name} {value!r} is outside {bounds[name][0]}..{bounds[name][1]}")
    if not isinstance(bundle["metrics"], dict):
        raise ValueError("metrics is not a dictionary")
    network = build_network(bundle["architecture"], options)
    expected = network.state_dict()
    state = bundle["state_dict"]
    if not isinstance(state, dict) or set(state) != set(expected):
        raise ValueError("its weights do not match its architecture")
    for name, tensor in state.items():
        if (not isinstance(tensor, torch.Tensor) or tensor.shape != expected[name].shape
                or not tensor.is_floating_point() or not bool(torch.isfinite(tensor).all())):
            raise ValueError(f"weight {name} has the wrong shape or type, or is not finite")
    network.load_state_dict(state)
    return network


def _validated_normalisation(values: dict) -> Normalisation:
    if not isinstance(values, dict) or set(values) != {"offset", "scale", "kind"}:
        raise ValueError("normalisation must have offset, scale and kind")
    if values["kind"] not in NORMALISATION_KINDS:
        raise ValueError(f"unknown normalisation kind {values['kind']!r}")
    offset = _finite(values["offset"], "normalisation offset", -1e9, 1e9)
    scale = _finite(values["scale"], "normalisation scale", 1e-6, 1e9)
    return Normalisation(offset, scale, values["kind"])


@dataclass
class EnhanceResult:
    volume: Volume
    model: Optional[TrainedModel]
    metrics: dict
    confidence: Optional[Volume] = None  # |coronal - sagittal| in HU on the output grid, when asked for


def enhance(
    volume: Volume,
    geometry: ThroughPlaneGeometry,
    options: Optional[EnhanceOptions] = None,
    model: Optional[TrainedModel] = None,
    reporter: Optional[Reporter] = None,
) -> EnhanceResult:
    """Train on the volume's own axial images (or reuse `model`) and return the enhanced volume.

    The input volume is never modified. Output: same origin, directions and in-plane grid; slices
    from the first input slice centre to the last, every target spacing; the input's integer type
    when the rounded values fit it, float32 otherwise. CPU work runs on `options.threads` threads.
    """
    options = options or EnhanceOptions()
    threads = int(check_range("threads", options.threads or default_threads()))
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return _enhance(volume, geometry, options, model, reporter)
    finally:
        torch.set_num_threads(previous)


def _enhance(volume: Volume, geometry: ThroughPlaneGeometry, options: EnhanceOptions,
             model: Optional[TrainedModel], reporter: Optional[Reporter]) -> EnhanceResult:
    reporter = reporter or Reporter()
    timings: dict[str, float] = {}
    started = time.perf_counter()
    config = preset(options.preset).with_iterations(options.iterations)
    acquisition = geometry.acquisition
    grid_spacing = min(geometry.in_plane_spacing_mm)
    target = check_target_spacing(options.target_spacing_mm, grid_spacing, acquisition.increment_mm)
    check_range("seed", options.seed)
    if options.iterations is not None:
        check_range("iterations", options.iterations)
    unknown_views = set(options.views) - set(VIEWS)
    if unknown_views:
        raise InputError(f"unknown view(s) {sorted(unknown_views)}; choose from {', '.join(VIEWS)}")
    low, high = CONSISTENCY_LAMBDA_RANGE
    if not low <= float(options.consistency_lambda) <= high:  # also refuses NaN
        raise InputError(f"consistency lambda must be between {low:g} and {high:g}, got {options.consistency_lambda}; "
                         f"the default {CONSISTENCY_LAMBDA:g} was measured (docs/benchmarks.md)")
    array_axis = geometry.array_axis
    check_memory(estimate_memory_bytes(volume.array.shape, array_axis, acquisition.increment_mm, grid_spacing, target,
                                       config.phases), options.force)
    normalisation = model.normalisation if model is not None else check_intensities(volume.array, options.allow_non_hu)
    if model is not None:
        check_intensities(volume.array, options.allow_non_hu or model.normalisation.kind != "hu")
        model.check_matches(acquisition, grid_spacing)
    device, device_note = resolve_device(options.device)
    reporter.step("reading", 1.0, f"device: {device_note}; {acquisition.describe()}")

    stack = np.moveaxis(volume.array, array_axis, 0)  # a view: (through-plane, rows, cols)
    rows_spacing, cols_spacing = _in_plane_spacing_for_stack(volume, geometry.axis)
    if model is None:
        slices = torch.empty(stack.shape, dtype=torch.float32)
        for index in range(stack.shape[0]):
            slices[index] = torch.from_numpy(normalisation.forward(np.asarray(stack[index], dtype=np.float32)))
        result = train_network(slices, (rows_spacing, cols_spacing), acquisition, config, normalisation, device,
                               options.seed, reporter)
        del slices
        model = TrainedModel(result.network, config.architecture, dict(config.network_options), acquisition,
                             grid_spacing, normalisation, result.metrics)
        timings["training_s"] = result.metrics["training_seconds"] + result.metrics["pair_setup_seconds"]
        training_metrics = dict(model.metrics)
    else:  # no validation on this scan: the figures in the file are the training scan's, and say so
        training_metrics = {"reused_model": model.loaded_from or "given",
                            "training_scan": {k: v for k, v in model.metrics.items() if k.startswith("validation")}}
    consistency = config.consistency if options.consistency is None else bool(options.consistency)
    inference_started = time.perf_counter()
    fine_shape = (fine_grid_size(stack.shape[0], acquisition.increment_mm, grid_spacing),) + stack.shape[1:]
    passes = PassDifference(fine_shape, options.views) if options.confidence else None
    enhanced = enhance_stack(
        stack, acquisition, grid_spacing, model.network, normalisation.forward, normalisation.inverse, device,
        views=tuple(options.views), consistency_lambda=options.consistency_lambda if consistency else None,
        batch_size=options.batch_size, reporter=reporter, on_pass=passes,
    )
    if abs(target - grid_spacing) > 1e-9:
        enhanced = resample_along_axis0(enhanced, grid_spacing, target,
                                        fine_grid_size(stack.shape[0], acquisition.increment_mm, target))
    timings["inference_s"] = time.perf_counter() - inference_started
    output_array = to_output_type(enhanced, volume.array.dtype)
    del enhanced
    output = Volume(
        array=np.ascontiguousarray(np.moveaxis(output_array, 0, array_axis)),
        ijk_to_world=enhanced_matrix(volume, geometry.axis, target),
        source=volume.source,
    )
    confidence = confidence_volume(passes, normalisation.scale, grid_spacing, target, array_axis, output.ijk_to_world,
                                   output.array.shape[array_axis])
    timings["total_s"] = time.perf_counter() - started
    threads = torch.get_num_threads()
    metrics = {
        "preset": options.preset,
        "device": device_note,
        "acquisition": asdict(acquisition) | {"overlap_mm": acquisition.overlap_mm},
        "thickness_source": geometry.thickness_source,
        "increment_source": geometry.increment_source,
        "target_spacing_mm": target,
        "views": list(options.views),
        "consistency": "on" if consistency else "off",
        "consistency_lambda": float(options.consistency_lambda) if consistency else None,
        "input_shape": list(volume.array.shape),
        "output_shape": list(output.array.shape),
        "timings": timings,
        "training": training_metrics,
        "threads": threads if device.type == "cpu" else None,
    }
    return EnhanceResult(volume=output, model=model, metrics=metrics, confidence=confidence)


def _in_plane_spacing_for_stack(volume: Volume, axis: int) -> tuple[float, float]:
    """Spacing of the stack's rows and columns (the two in-plane ijk axes, numpy order)."""
    in_plane_ijk = [a for a in (2, 1, 0) if a != axis]  # numpy axes run k, j, i
    spacing = volume.spacing
    return float(spacing[in_plane_ijk[0]]), float(spacing[in_plane_ijk[1]])


def check_target_spacing(target_mm: Optional[float], grid_spacing_mm: float, increment_mm: float) -> float:
    """The output slice spacing (default: the finer in-plane spacing), within its range and at most the increment."""
    target = float(target_mm or grid_spacing_mm)
    check_range("target-spacing", target)
    if target > increment_mm * (1 + 1e-6):
        raise InputError(f"--target-spacing {target:g} mm is coarser than the slice increment {increment_mm:g} mm: "
                         f"there would be nothing to enhance; give at most {increment_mm:g} mm")
    return target


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
    identity = Normalisation(offset=0.0, scale=1.0, kind="identity")
    values = enhance_stack(stack, geometry.acquisition, target, None, identity.forward, identity.inverse,
                           torch.device("cpu"), consistency_lambda=consistency_lambda)
    return Volume(np.ascontiguousarray(np.moveaxis(to_output_type(values, volume.array.dtype), 0, geometry.array_axis)),
                  enhanced_matrix(volume, geometry.axis, target), source=volume.source)


__all__ = ["EnhanceOptions", "EnhanceResult", "TrainedModel", "enhance", "linear_baseline", "PRESETS"]
