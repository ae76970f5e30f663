"""Choosing the compute device, with a plain message when CUDA is asked for but unusable."""

from __future__ import annotations

import torch

from ..errors import InputError
from ..options import DEVICE_CHOICES


def cuda_usable() -> bool:
    """True when this torch has CUDA and a driver and device answer (a CUDA build without a driver is common)."""
    try:
        return bool(torch.backends.cuda.is_built() and torch.cuda.is_available() and torch.cuda.device_count() > 0)
    except Exception:  # broken driver installs raise from inside the CUDA runtime
        return False


def resolve_device(choice: str = "auto") -> tuple[torch.device, str]:
    """The torch device for `choice` and a one-line note on what was picked and why."""
    if choice not in DEVICE_CHOICES:
        raise InputError(f"unknown device {choice!r}; choose one of {', '.join(DEVICE_CHOICES)}")
    if choice == "cpu":
        return torch.device("cpu"), "CPU (as asked)"
    if cuda_usable():
        name = torch.cuda.get_device_name(0)
        return torch.device("cuda"), f"GPU {name}"
    if choice == "cuda":
        raise InputError(
            "--device cuda was asked for but no usable CUDA device was found (CPU-only torch build, or no driver); "
            "use --device cpu or auto"
        )
    reason = "this torch build has no CUDA" if not torch.backends.cuda.is_built() else "no usable CUDA device or driver"
    return torch.device("cpu"), f"CPU ({reason})"


def is_out_of_memory(error: BaseException) -> bool:
    """CUDA out-of-memory, whichever way this torch version reports it."""
    oom_type = getattr(torch.cuda, "OutOfMemoryError", ())
    return (oom_type and isinstance(error, oom_type)) or "CUDA out of memory" in str(error)


def free_cuda_memory() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
