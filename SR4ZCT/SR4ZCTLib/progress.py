"""Progress reports and cancellation shared by the command line and the Slicer module."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Optional

from .errors import Cancelled, check_cancelled

@dataclass
class Progress:
    """One step of a long job: the stage, how far it is (0..1), a message and figures so far."""

    stage: str
    fraction: float
    message: str = ""
    metrics: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {"stage": self.stage, "fraction": round(float(self.fraction), 4), "message": self.message,
                "metrics": self.metrics, "time": round(time.time(), 3)}


ProgressCallback = Callable[[Progress], None]
CancelCheck = Callable[[], bool]


class Reporter:
    """Wraps the optional callback and cancel check; `step` reports and raises Cancelled when asked to stop."""

    def __init__(self, callback: Optional[ProgressCallback] = None, cancel: Optional[CancelCheck] = None) -> None:
        self.callback = callback
        self.cancel = cancel

    def check(self) -> None:
        check_cancelled()  # a signal's cancel that Python swallowed on the way
        if self.cancel is not None and self.cancel():
            raise Cancelled("cancelled by the user")

    def step(self, stage: str, fraction: float, message: str = "", **metrics) -> None:
        self.check()
        if self.callback is not None:
            self.callback(Progress(stage, min(max(fraction, 0.0), 1.0), message, metrics))
