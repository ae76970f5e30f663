"""The whole job on one volume: check, train on its own axial images, enhance, and keep its geometry."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from .acquisition import Acquisition
from .device import resolve_device
from .errors import InputError
from .forward import CONSISTENCY_LAMBDA, CONSISTENCY_LAMBDA_RANGE
from .inference import VIEWS, enhance_stack, resample_along_axis0
from .intensity import Normalisation, check_intensities
from .memory import check_memory, estimate_memory_bytes, fine_grid_size
from .networks import build_network
from .progress import Reporter
from .training import PRESETS, preset, train_network
from .volume import ThroughPlaneGeometry, Volume, enhanced_matrix
from .volume_io import write_atomically

MODEL_FORMAT = "sr4zct-model-1"
ACQUISITION_MATCH_MM = 0.05  # a saved model is reused only for an acquisition this close to its own


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

    def save(self, path: str | Path) -> Path:
        """Write atomically (temporary file, then rename)."""
        bundle = {
            "format": MODEL_FORMAT,
            "architecture": self.architecture,
            "network_options": self.network_options,
            "state_dict": {k: v.detach().cpu() for k, v in self.network.state_dict().items()},
            "acquisition": asdict(self.acquisition),
            "grid_spacing_mm": self.grid_spacing_mm,
            "normalisation": self.normalisation.as_dict(),
            "metrics": {k: v for k, v in self.metrics.items() if k != "history"},
        }
        return write_atomically(path, lambda name: torch.save(bundle, name))

    @classmethod
    def load(cls, path: str | Path) -> "TrainedModel":
        try:
            bundle = torch.load(str(path), map_location="cpu", weights_only=True)
        except FileNotFoundError:
            raise InputError(f"model file {path} does not exist") from None
        except Exception as error:
            raise InputError(f"cannot read model {path}: {error.__class__.__name__}; was it written by sr4zct?") from None
        if not isinstance(bundle, dict) or bundle.get("format") != MODEL_FORMAT:
            raise InputError(f"{path} is not an SR4ZCT model file ({MODEL_FORMAT})")
        network = build_network(bundle["architecture"], bundle["network_options"])
        network.load_state_dict(bundle["state_dict"])
        network.eval()
        return cls(network, bundle["architecture"], bundle["network_options"], Acquisition(**bundle["acquisition"]),
                   float(bundle["grid_spacing_mm"]), Normalisation(**bundle["normalisation"]), bundle.get("metrics", {}))

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


@dataclass
class EnhanceResult:
    volume: Volume
    model: Optional[TrainedModel]
    metrics: dict


def enhance(
    volume: Volume,
    geometry: ThroughPlaneGeometry,
    options: Optional[EnhanceOptions] = None,
    model: Optional[TrainedModel] = None,
    reporter: Optional[Reporter] = None,
) -> EnhanceResult:
    """Train on the volume's own axial images (or reuse `model`) and return the enhanced volume.

    The input volume is never modified. Output: same origin, directions and in-plane grid; slices
    from the first input slice centre to the last, every target spacing; int16 HU for integer
    inputs (rounded, clipped), float32 otherwise.
    """
    options = options or EnhanceOptions()
    reporter = reporter or Reporter()
    timings: dict[str, float] = {}
    started = time.perf_counter()
    config = preset(options.preset).with_iterations(options.iterations)
    acquisition = geometry.acquisition
    grid_spacing = min(geometry.in_plane_spacing_mm)
    target = float(options.target_spacing_mm or grid_spacing)
    if not np.isfinite(target) or target <= 0:
        raise InputError(f"target spacing must be a positive number of millimetres, got {options.target_spacing_mm}")
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
    consistency = config.consistency if options.consistency is None else bool(options.consistency)
    inference_started = time.perf_counter()
    enhanced = enhance_stack(
        stack, acquisition, grid_spacing, model.network, normalisation.forward, normalisation.inverse, device,
        views=tuple(options.views), consistency_lambda=options.consistency_lambda if consistency else None,
        batch_size=options.batch_size,
        reporter=reporter,
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
    timings["total_s"] = time.perf_counter() - started
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
        "training": dict(model.metrics),
    }
    return EnhanceResult(volume=output, model=model, metrics=metrics)


def _in_plane_spacing_for_stack(volume: Volume, axis: int) -> tuple[float, float]:
    """Spacing of the stack's rows and columns (the two in-plane ijk axes, numpy order)."""
    in_plane_ijk = [a for a in (2, 1, 0) if a != axis]  # numpy axes run k, j, i
    spacing = volume.spacing
    return float(spacing[in_plane_ijk[0]]), float(spacing[in_plane_ijk[1]])


def to_output_type(values: torch.Tensor, input_dtype: np.dtype) -> np.ndarray:
    """The documented output type: int16 HU (rounded, clipped) for integer inputs, float32 otherwise."""
    if np.issubdtype(input_dtype, np.integer):
        result = np.empty(values.shape, dtype=np.int16)
        for start in range(0, values.shape[0], 32):
            result[start:start + 32] = torch.round(values[start:start + 32]).clamp(-32768, 32767).numpy()
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
