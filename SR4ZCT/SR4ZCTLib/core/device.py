"""Choosing the compute device (auto: CUDA, else Apple silicon's Metal, else CPU), with a plain message why.

MPS (Metal) rules: float32 only (Metal has no float64 tensors: every tensor sent there is float32), and
operators Metal lacks run on the CPU when PYTORCH_ENABLE_MPS_FALLBACK=1, which the package sets on macOS
(unless the user set it) before torch loads. Not run on a Mac here: the selection is tested with stubs.
"""

from __future__ import annotations

import os

import torch

from ..errors import InputError
from ..options import DEVICE_CHOICES


def cuda_usable() -> bool:
    """True when this torch has CUDA and a driver and device answer (a CUDA build without a driver is common)."""
    try:
        return bool(torch.backends.cuda.is_built() and torch.cuda.is_available() and torch.cuda.device_count() > 0)
    except Exception:  # broken driver installs raise from inside the CUDA runtime
        return False


def mps_usable() -> bool:
    """True when this torch has the MPS backend and a Metal device answers (Apple silicon, macOS 12.3+)."""
    try:
        backend = getattr(torch.backends, "mps", None)
        return bool(backend is not None and backend.is_available())
    except Exception:
        return False


def _use_mps() -> tuple[torch.device, str]:
    fallback = "on" if os.environ.get("PYTORCH_ENABLE_MPS_FALLBACK") == "1" else "off: set PYTORCH_ENABLE_MPS_FALLBACK=1"
    return torch.device("mps"), f"Apple GPU (MPS, float32; CPU fallback for unsupported ops {fallback})"


def precise_dtype(device: torch.device) -> torch.dtype:
    """The dtype for sums that must not lose digits: float64, except on MPS, which has no float64 (float32)."""
    return torch.float32 if device.type == "mps" else torch.float64


def resolve_device(choice: str = "auto") -> tuple[torch.device, str]:
    """The torch device for `choice` and a one-line note on what was picked and why (auto: cuda, mps, cpu)."""
    if choice not in DEVICE_CHOICES:
        raise InputError(f"unknown device {choice!r}; choose one of {', '.join(DEVICE_CHOICES)}")
    if choice == "cpu":
        return torch.device("cpu"), "CPU (as asked)"
    if choice in ("auto", "cuda") and cuda_usable():
        name = torch.cuda.get_device_name(0)
        return torch.device("cuda"), f"GPU {name}"
    if choice == "cuda":
        raise InputError(
            "--device cuda was asked for but no usable CUDA device was found (CPU-only torch build, or no driver); "
            "use --device cpu or auto"
        )
    if mps_usable():
        return _use_mps()
    if choice == "mps":
        raise InputError("--device mps was asked for but Metal (torch's MPS backend) is not available: it needs "
                         "Apple silicon, macOS 12.3 or later and a torch build with MPS; use --device cpu or auto")
    reason = "this torch build has no CUDA" if not torch.backends.cuda.is_built() else "no usable CUDA device or driver"
    return torch.device("cpu"), f"CPU ({reason})"


def is_out_of_memory(error: BaseException) -> bool:
    """CUDA out-of-memory, whichever way this torch version reports it."""
    oom_type = getattr(torch.cuda, "OutOfMemoryError", ())
    return (oom_type and isinstance(error, oom_type)) or "CUDA out of memory" in str(error)


def free_cuda_memory() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
