"""A trained network with the acquisition and intensity mapping it was made for: saved, loaded and checked.

A model file is refused when its bytes are damaged (each record's CRC-32), then read with torch's weights-only
loader and refused unless it is exactly a sane SR4ZCT model (keys, field types, architecture bounds, tensor
names, shapes and finite values); it is reused only for the acquisition
and in-plane spacing it was trained for.
"""

from __future__ import annotations

import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from .core.acquisition import Acquisition
from .core.intensity import Normalisation
from .core.networks import build_network
from .errors import InputError
from .options import DEFAULT_PROFILE
from .metrics import without

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
            "metrics": without(self.metrics, "history"),
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
        if not Path(path).is_file():
            raise InputError(f"model file {path} does not exist")
        check_archive(Path(path))
        try:
            bundle = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as error:
            raise InputError(f"cannot read model {path}: {error.__class__.__name__}; was it written by sr4zct?") from None
        if not isinstance(bundle, dict) or bundle.get("format") != MODEL_FORMAT:
            raise InputError(f"{path} is not an SR4ZCT model file ({MODEL_FORMAT})")
        try:
            network = _validated_network(bundle)
            acquisition = _validated_acquisition(bundle["acquisition"])
            _check_metrics(bundle["metrics"])
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
        widths_match = (abs(mine.thickness_mm - acquisition.thickness_mm) <= ACQUISITION_MATCH_MM
                        and abs(mine.increment_mm - acquisition.increment_mm) <= ACQUISITION_MATCH_MM)
        shape_matches = (mine.profile == acquisition.profile
                         and abs(mine.fwtm_ratio - acquisition.fwtm_ratio) * mine.thickness_mm <= ACQUISITION_MATCH_MM)
        if widths_match and not shape_matches:
            raise InputError(
                f"the model was trained for {mine.describe()} but this scan is read with the "
                f"{acquisition.profile} profile (the default is {DEFAULT_PROFILE} since version 0.2): give "
                f"--profile {mine.profile} to apply this model, or train a new one (omit --model)"
            )
        if not widths_match:
            raise InputError(
                f"the model was trained for {mine.describe()} but this scan has {acquisition.describe()}; "
                "a mismatched model costs image quality: train a new one (omit --model) or correct --thickness/--increment"
            )
        if abs(self.grid_spacing_mm - grid_spacing_mm) > 0.02 * grid_spacing_mm:
            raise InputError(
                f"the model was trained at in-plane spacing {self.grid_spacing_mm:g} mm, this scan has {grid_spacing_mm:g} mm; "
                "train a new model for this scan (omit --model)"
            )


def check_archive(path: Path) -> None:
    """Refuse a model file whose bytes are damaged: every record's CRC-32 (stored by torch.save) read and checked.

    torch's own reader does not check them (a flipped byte in a weight loads as a wrong weight); Python's zipfile
    does, for the whole file, in one read."""
    try:
        with zipfile.ZipFile(path) as archive:
            damaged = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as error:
        raise InputError(f"{path} is not an SR4ZCT model file ({MODEL_FORMAT}): not a readable torch archive "
                         f"({error}); give a file written by --save-model") from None
    if damaged is not None:
        raise InputError(f"{path} is damaged: its record {damaged} fails its CRC-32 check (a broken copy or disk); "
                         "copy the model file again or train a new one (omit --model)")


def _validated_acquisition(values: dict) -> Acquisition:
    """The model's acquisition, each field of its documented type (numbers are numbers, the profile a name)."""
    required = {"thickness_mm", "increment_mm", "profile"}
    if not isinstance(values, dict) or not required <= set(values) <= required | {"fwtm_mm"}:
        raise ValueError("acquisition must have thickness_mm, increment_mm and profile (and may have fwtm_mm)")
    if not isinstance(values["profile"], str):
        raise ValueError(f"acquisition profile {values['profile']!r} is not a name")
    fwtm = values.get("fwtm_mm")
    return Acquisition(_finite(values["thickness_mm"], "thickness_mm", 1e-3, 1e3),
                       _finite(values["increment_mm"], "increment_mm", 1e-3, 1e3), values["profile"],
                       None if fwtm is None else _finite(fwtm, "fwtm_mm", 1e-3, 1e3))


def _check_metrics(metrics: dict) -> None:
    """The figures a model carries: a dictionary whose dB figures (validation PSNR) are numbers (or absent)."""
    if not isinstance(metrics, dict):
        raise ValueError("metrics is not a dictionary")
    for name, value in metrics.items():
        if str(name).endswith("_db") and value is not None:  # the PSNR figures a reused model's report shows
            _finite(value, name, -1e9, 1e9)


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
