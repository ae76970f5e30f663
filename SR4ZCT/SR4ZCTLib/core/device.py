"""Choosing the compute device (auto: CUDA, else Apple silicon's Metal, else CPU), with a plain message why.

MPS (Metal) rules: float32 only (Metal has no float64 tensors: every tensor sent there is float32), and
operators Metal lacks run on the CPU when PYTORCH_ENABLE_MPS_FALLBACK=1, which the package sets on macOS
(unless the user set it) before torch loads. Not run on a Mac here: the selection is tested with stubs.
"""

from __future__ import annotations

import os
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from ..errors import InputError
from ..options import DEVICE_CHOICES, PRECISIONS


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


def cpu_has_native_bf16() -> bool:
    """True where this CPU computes bfloat16 natively: torch's oneDNN bf16 check, AVX-512 capability, and the
    avx512_bf16 or amx_bf16 flag in /proc/cpuinfo (elsewhere oneDNN would emulate bf16, which does not pay)."""
    try:
        if not (torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()):
            return False
        if not torch.backends.cpu.get_cpu_capability().startswith("AVX512"):
            return False
        flags = Path("/proc/cpuinfo").read_text(errors="replace").split()
    except (OSError, RuntimeError, AttributeError):
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


@dataclass(frozen=True)
class Compute:
    """How the network runs: the training steps' autocast dtype (None: float32) and the memory format.

    Validation and inference stay float32: bf16 autocast at inference moved the output by up to 1.6 HU
    (tests/core/test_speed.py's network), more than the 1 HU allowed; training in bf16 only changes the path
    the weights take, which the held-out PSNR measures (bench/speed.py).
    """

    training_autocast: Optional[torch.dtype] = None
    channels_last: bool = False

    def training_context(self, device: torch.device):
        """The autocast context of a training step on `device` (a no-op for float32)."""
        dtype = self.training_autocast
        return torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()

    def images(self, batch: torch.Tensor) -> torch.Tensor:
        """A (n, 1, h, w) batch in the memory format the network runs in."""
        return batch.contiguous(memory_format=torch.channels_last) if self.channels_last else batch

    def network(self, network: torch.nn.Module) -> torch.nn.Module:
        return network.to(memory_format=torch.channels_last) if self.channels_last else network

    def describe(self) -> str:
        kind = {None: "float32", torch.bfloat16: "bf16 autocast training, float32 inference"}[self.training_autocast]
        return kind + (", channels_last" if self.channels_last else "")


def resolve_compute(precision: str, device: torch.device, channels_last: bool = False) -> Compute:
    """The Compute for --precision on `device`: bf16 autocast on CPUs with native bf16 (auto, or bf16 asked for),
    else float32. Other devices: float32 here (CUDA inference keeps its own fp16 rule; MPS stays float32)."""
    if precision not in PRECISIONS:
        raise InputError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    if precision == "fp32" or device.type != "cpu":
        return Compute(None, channels_last and device.type == "cpu")
    if precision == "bf16" and not cpu_has_native_bf16():
        raise InputError("--precision bf16 was asked for but this CPU has no native bfloat16 (avx512_bf16 or AMX); "
                         "use --precision auto or fp32")
    return Compute(torch.bfloat16 if cpu_has_native_bf16() else None, channels_last)
