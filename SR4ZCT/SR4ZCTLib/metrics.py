"""The figures of one run as a small typed value: what the panel, the CLI, the report and batch read.

Standard library only (the Slicer module reads a worker's figures with it). `to_json()` is metrics.json;
`summary()` is the same without the training history and schedule (the worker's last progress line).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Optional

from . import __version__

SUMMARY_LEFT_OUT = ("history", "config")  # training entries metrics.json keeps and a summary leaves out


def without(training: dict, *names: str) -> dict:
    """The training figures less the named entries (e.g. the per-validation "history")."""
    return {k: v for k, v in training.items() if k not in names}


@dataclass(frozen=True)
class RunMetrics:
    """What a run did and measured. `training` holds the training figures (or, for a reused model, its origin)."""

    preset: str
    device: str
    acquisition: dict
    thickness_source: str
    increment_source: str
    target_spacing_mm: float
    views: list
    consistency: str  # "on" or "off"
    consistency_lambda: Optional[float]
    input_shape: list
    output_shape: list
    timings: dict
    training: dict
    threads: Optional[int]
    sr4zct_version: Optional[str] = __version__  # the package that made the figures (None: an older run's figures)
    extra: dict = field(default_factory=dict)  # e.g. batch's warnings and key, kept in metrics.json

    @property
    def validation_psnr_db(self) -> Optional[float]:
        """Held-out in-plane stand-in PSNR of the trained network (None for a reused model)."""
        return self.training.get("validation_psnr_db")

    @property
    def validation_linear_psnr_db(self) -> Optional[float]:
        """The same held-out images by linear interpolation: the reference the network must beat."""
        return self.training.get("validation_linear_psnr_db")

    @property
    def reused_model(self) -> Optional[str]:
        """The model file a run reused instead of training, if any."""
        return self.training.get("reused_model")

    @property
    def total_seconds(self) -> float:
        return float(self.timings.get("total_s", 0.0))

    def to_json(self) -> dict[str, Any]:
        """Every figure, as metrics.json holds them."""
        values = asdict(self)
        return {**{k: v for k, v in values.items() if k != "extra"}, **values["extra"]}

    def summary(self) -> dict[str, Any]:
        """to_json() without the training history and schedule (small enough for one progress line)."""
        values = self.to_json()
        values["training"] = without(self.training, *SUMMARY_LEFT_OUT)
        return values

    def stored(self) -> dict[str, Any]:
        """to_json() without the training history (what batch keeps beside each result)."""
        values = self.to_json()
        values["training"] = without(self.training, "history")
        return values

    def with_extra(self, **extra) -> "RunMetrics":
        return RunMetrics(**{f.name: getattr(self, f.name) for f in fields(self) if f.name != "extra"},
                          extra={**self.extra, **extra})

    @classmethod
    def from_json(cls, values: dict[str, Any]) -> "RunMetrics":
        """Back from to_json() or summary() (unknown keys go to `extra`; missing ones are empty)."""
        names = {f.name for f in fields(cls)} - {"extra"}
        known = {name: values.get(name) for name in names}
        for name in ("acquisition", "timings", "training"):
            known[name] = dict(known[name] or {})
        return cls(**known, extra={k: v for k, v in values.items() if k not in names})

    def describe(self, output: str) -> str:
        """The CLI's one-line result: output, shape, the held-out figure (or the reused model), time and device."""
        line = f"wrote {output} ({' x '.join(map(str, self.output_shape))})"
        if self.validation_psnr_db is not None:
            line += (f"; held-out in-plane stand-in PSNR {self.validation_psnr_db:.2f} dB, "
                     f"linear interpolation {self.validation_linear_psnr_db:.2f} dB")
        elif self.reused_model is not None:
            line += f"; model reused from {self.reused_model} (no validation on this scan)"
        return line + f"; {self.total_seconds:.0f} s on {self.device}"


def strict_json(value: Any) -> Any:
    """value with NaN and infinities replaced by None, so that json.dumps(allow_nan=False) gives standard JSON."""
    if isinstance(value, dict):
        return {str(k): strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(v) for v in value]
    if hasattr(value, "dtype") and hasattr(value, "item"):  # a numpy scalar
        value = value.item()
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    return value
