"""Every run option, defined once: its flag, range, default and help, as one frozen value (`RunOptions`).

The command line's arguments, the batch manifest's columns, the Slicer worker's argv, the engine's
options, the Slicer logic's keyword arguments and the panel's ranges all come from `RunOptions`' fields.
Standard library only: the Slicer module imports it before its requirements are installed.

Ranges exist to refuse absurd numbers (1e-320, 1e308) before any work, with the range in the message;
the millimetre ranges cover every CT protocol with room to spare.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Optional, Sequence

from .errors import InputError

PROFILES = ("box", "gaussian", "blurred-box")  # slice profile models (core/forward.py states their maths)
DEFAULT_PROFILE = "blurred-box"  # where neither the user nor a header gives one: tuned on the phantom (docs/benchmarks.md)
PROFILE_CHOICES = PROFILES + ("auto",)  # auto: estimated from the scan (core/slice_profile.py), else the default
PRESET_NAMES = ("fast", "paper")  # training schedules (core/training.py)
DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps")  # mps: Apple silicon's Metal (core/device.py)
TRAINING_NOISE = ("off", "auto")  # noise added to the degraded training inputs (core/training_noise.py)
PRECISIONS = ("auto", "fp32", "bf16")  # CPU arithmetic of the training steps (core/device.resolve_compute)
VIEWS = ("coronal", "sagittal")  # the through-plane views the network enhances and fuses
CONSISTENCY_LAMBDA = 0.1  # relative regularisation of the projection; measured on the phantom, see docs/benchmarks.md

RANGES: dict[str, tuple[float, float]] = {
    "thickness": (0.1, 50.0),  # mm, slice thickness (FWHM of the slice profile)
    "increment": (0.1, 50.0),  # mm, distance between slice centres
    "target-spacing": (0.05, 50.0),  # mm, output slice spacing (also at most the increment)
    "iterations": (1, 10_000_000),
    "seed": (0, 2**32 - 1),
    "threads": (1, 256),
    "consistency-lambda": (1e-4, 10.0),  # the projection's relative regularisation
    "profile-spread": (0.0, 0.5),  # relative spread of the training slice widths
}
UNITS = {"thickness": " mm", "increment": " mm", "target-spacing": " mm"}
CONSISTENCY_LAMBDA_RANGE = RANGES["consistency-lambda"]


def check_range(name: str, value: float) -> float:
    """value if it is a finite number within RANGES[name], else an InputError naming the option and its range."""
    low, high = RANGES[name]
    unit = UNITS.get(name, "")
    if value is None or not math.isfinite(float(value)) or not low <= value <= high:
        raise InputError(f"--{name} {value!r} is outside its range {low:g}..{high:g}{unit}; give a value in it")
    return value


def default_threads() -> int:
    """CPU threads of a run: min(4, CPU count). Fixed per machine type, so a seeded run ignores OMP_NUM_THREADS."""
    return max(1, min(4, os.cpu_count() or 1))


@dataclass(frozen=True)
class Option:
    """How one field of RunOptions is given: flag, value kind, range name, choices, help, and its Slicer name."""

    flag: str
    kind: str  # "mm" (positive millimetres), "int", "real", "choice", "switch" (on/off), "flag" (present/absent), "path"
    help: Optional[str] = None
    choices: Sequence[str] = ()
    metavar: Optional[str] = None
    slicer: Optional[str] = None  # the Slicer logic's keyword argument (and parameter-node field where there is one)
    column: Optional[str] = None  # the batch manifest column that may give it per series

    @property
    def range_name(self) -> str:
        return self.flag[2:]

    @property
    def range(self) -> Optional[tuple[float, float]]:
        return RANGES.get(self.range_name)

    def parse(self, text: str) -> Any:
        """The value of a command-line word; ValueError with the reason (argparse shows it as a usage error)."""
        if self.kind in ("mm", "int"):
            try:
                value = (float if self.kind == "mm" else int)(text)
            except ValueError:
                raise ValueError(f"{text!r} is not a{' whole' if self.kind == 'int' else ''} number") from None
            if self.kind == "mm" and (not math.isfinite(value) or value <= 0):
                raise ValueError(f"{text!r} must be a positive number of millimetres")
            low, high = RANGES[self.range_name]
            if not low <= value <= high:
                raise ValueError(f"{text} is outside {low:g}..{high:g}{' mm' if self.kind == 'mm' else ''}")
            return value
        if self.kind == "real":
            try:
                value = float(text)
            except ValueError:
                raise ValueError(f"{text!r} is not a number") from None
            low, high = RANGES[self.range_name]
            if not low <= value <= high:  # also refuses NaN
                raise ValueError(f"{text!r} is outside {low:g} to {high:g}")
            return value
        return text

    def decode(self, value: Any) -> Any:
        """The parsed command-line value as the field holds it (on/off becomes a bool)."""
        return None if self.kind == "switch" and value is None else (value == "on" if self.kind == "switch" else value)

    def encode(self, value: Any) -> list[str]:
        """The argv words that give `value` (nothing for an absent value or a cleared flag)."""
        if value is None or (self.kind == "flag" and not value):
            return []
        if self.kind == "flag":
            return [self.flag]
        if self.kind == "switch":
            return [self.flag, "on" if value else "off"]
        return [self.flag, repr(float(value)) if self.kind == "mm" else str(value)]


def option(flag: str, kind: str, default: Any = None, **details) -> Any:
    """A RunOptions field given on the command line as `flag`."""
    return field(default=default, metadata={"option": Option(flag, kind, **details)})


@dataclass(frozen=True)
class RunOptions:
    """What to run: the acquisition, the training schedule, the output grid and the checks. None: the default.

    Defaults: thickness and increment from the scan (DICOM SliceThickness or a `simulate` header, slice positions),
    the header's profile else blurred-box, training noise measured from the scan,
    the `fast` preset, the preset's consistency projection, the in-plane spacing as output spacing.
    """

    thickness_mm: Optional[float] = option(
        "--thickness", "mm", help="slice thickness in mm, 0.1..50 (default: DICOM SliceThickness)",
        slicer="thicknessMm", column="thickness")
    increment_mm: Optional[float] = option(
        "--increment", "mm", help="slice increment in mm, 0.1..50 (default: from slice positions)",
        slicer="incrementMm", column="increment")
    profile: Optional[str] = option("--profile", "choice", choices=PROFILE_CHOICES, slicer="profile",
                                    help="slice profile: blurred-box (bell-shaped as helical scanners make it: FWHM = thickness, "
                                         "FWTM 1.7 x it), box, gaussian, or auto (estimated from the scan's own "
                                         "statistics, the default blurred box where the estimate is not trusted); default: "
                                         "the one a `simulate` header records, else blurred-box")
    preset: str = option("--preset", "choice", "fast", choices=PRESET_NAMES, slicer="preset")
    iterations: Optional[int] = option("--iterations", "int", help="training iterations, 1..10000000 (overrides the "
                                       "preset)", slicer="iterations")
    device: str = option("--device", "choice", "auto", choices=DEVICE_CHOICES, slicer="device")
    seed: int = option("--seed", "int", 0, help="random seed, 0..4294967295", slicer="seed")
    precision: str = option(
        "--precision", "choice", "fp32", choices=PRECISIONS,
        help="training arithmetic on a CPU: fp32 (default), bf16 autocast (CPUs with native bfloat16 only), or auto "
             "(bf16 where native, else fp32); inference stays fp32. bf16 trains about 2x faster; bench/speed.py: "
             "held-out PSNR -0.00 dB on the demo but -0.13 dB on a 512 x 512 x 150 case, so not the default")
    training_noise: str = option(
        "--training-noise", "choice", "auto", choices=TRAINING_NOISE,
        help="auto (default): measure the slices' noise (level and in-plane correlation in uniform regions, "
             "correlation between neighbouring slices) and add it to the degraded training inputs as z carries it, "
             "so the network does not learn to sharpen noise; off: train on noise-free degradations")
    threads: Optional[int] = option(
        "--threads", "int", help="CPU threads, 1..256 (default: min(4, CPU count)); a seeded run gives the same output "
                                 "at the same thread count", slicer="threads")
    consistency: Optional[bool] = option(
        "--consistency", "switch", choices=("on", "off"), slicer="consistency",
        help="project the output onto the measured slices (default: the preset's: fast on, paper off)")
    consistency_lambda: float = option(
        "--consistency-lambda", "real", CONSISTENCY_LAMBDA, metavar="L", slicer="consistencyLambda",
        help=f"the projection's relative regularisation, {CONSISTENCY_LAMBDA_RANGE[0]:g} to "
             f"{CONSISTENCY_LAMBDA_RANGE[1]:g}; smaller fits the slices closer (default {CONSISTENCY_LAMBDA:g})")
    allow_non_hu: bool = option("--allow-non-hu", "flag", False, help="enhance volumes that are not CT in HU",
                                slicer="allowNonHu")
    force: bool = option("--force", "flag", False, help="run even when the memory estimate exceeds what is free",
                         slicer="force")
    target_spacing_mm: Optional[float] = option(
        "--target-spacing", "mm", help="output slice spacing in mm, 0.05 mm up to the increment (default: in-plane)",
        slicer="targetSpacingMm")
    model_path: Optional[str] = option("--model", "path", slicer="model",
                                       help="use this trained model instead of training (same protocol only)")
    save_model_path: Optional[str] = option("--save-model", "path", slicer="saveModel",
                                            help="write the trained model here (reuse it with --model)")
    # Engine settings that no command-line flag gives.
    views: Sequence[str] = VIEWS  # the views enhanced and fused
    batch_size: Optional[int] = None  # inference batch; default: as large as memory allows
    channels_last: bool = True  # CPU: the network in channels_last memory format (bench/speed.py: 1.55x, +0.02 dB)
    schedule: str = "standard"  # "standard", or "short": fewer steps, small patches first (core/training.py)
    confidence: bool = False  # also compute the coronal/sagittal disagreement map (core/confidence.py)
    profile_spread: float = 0.0  # training: each phase's slice width times U(1 -/+ spread) (core/training.py)
    flips: bool = False  # test-time augmentation: the network's mean over each image's 4 flips (4x inference)

    @classmethod
    def from_values(cls, values: dict[str, Any]) -> "RunOptions":
        """From parsed command-line values keyed by field name (missing ones keep their defaults)."""
        given = {f.name: _option(f).decode(values[f.name]) for f in flagged_fields() if f.name in values}
        return cls(**given)

    @classmethod
    def from_slicer(cls, **keywords) -> "RunOptions":
        """From the Slicer logic's keyword arguments (thicknessMm=..., iterations=...); unknown names are refused."""
        names = {_option(f).slicer: f.name for f in flagged_fields() if _option(f).slicer}
        unknown = set(keywords) - set(names)
        if unknown:
            raise TypeError(f"unknown SR4ZCT option(s) {', '.join(sorted(unknown))}; use {', '.join(sorted(names))}")
        return cls(**{names[key]: value for key, value in keywords.items()})

    def argv(self) -> list[str]:
        """The command-line words that give these options (defaults and absent values are left out)."""
        words: list[str] = []
        for item in flagged_fields():
            value = getattr(self, item.name)
            if value != item.default:
                words += _option(item).encode(value)
        return words

    def checked(self) -> "RunOptions":
        """Itself, when every number lies in its documented range; else an InputError naming the option."""
        for item in flagged_fields():
            value, spec = getattr(self, item.name), _option(item)
            if spec.range is not None and value is not None:
                check_range(spec.range_name, value)
        return self

    def key(self) -> dict[str, Any]:
        """The options a result depends on (what a stored batch result must match to be reused)."""
        return {k: v for k, v in asdict(self).items() if k not in ("force", "threads", "model_path", "save_model_path",
                                                                     "batch_size")}


def _option(item) -> Option:
    return item.metadata["option"]


def flagged_fields() -> list:
    """The fields of RunOptions that have a command-line flag, in definition order."""
    return [f for f in fields(RunOptions) if "option" in f.metadata]


def spec(name: str) -> Option:
    """The Option of RunOptions field `name`."""
    return next(_option(f) for f in flagged_fields() if f.name == name)


PANEL_ZERO_IS_DEFAULT = ("target_spacing_mm", "iterations")  # a Slicer spin box at 0 means "the default" for these


def panel_range(name: str) -> tuple[float, float]:
    """The range a Slicer spin box shows for RunOptions field `name`: the engine's, from 0 where 0 is the default."""
    low, high = spec(name).range
    return (0, high) if name in PANEL_ZERO_IS_DEFAULT else (low, high)


__all__ = ["CONSISTENCY_LAMBDA", "CONSISTENCY_LAMBDA_RANGE", "DEVICE_CHOICES", "PRECISIONS", "PRESET_NAMES", "PROFILES",
           "PROFILE_CHOICES", "RANGES", "TRAINING_NOISE",
           "RunOptions", "VIEWS", "check_range", "default_threads", "flagged_fields", "panel_range", "spec"]
