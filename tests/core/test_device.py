"""Device choice: auto picks CUDA, else Apple's Metal (MPS), else the CPU; each refusal says what to do.

torch's availability checks are stubbed (torch is not ours); our selection logic runs for real.
Not run on a Mac here: these tests are what checks the MPS path.
"""

from __future__ import annotations

import pytest
import torch

from SR4ZCTLib.core import device as devices
from SR4ZCTLib.core.device import precise_dtype, resolve_device
from SR4ZCTLib.errors import InputError
from SR4ZCTLib.options import DEVICE_CHOICES


@pytest.fixture
def machine(monkeypatch):
    """Set what torch reports: machine(cuda=..., mps=...)."""

    def configure(cuda: bool, mps: bool) -> None:
        monkeypatch.setattr(torch.backends.cuda, "is_built", lambda: cuda)
        monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: int(cuda))
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=0: "Stub GPU")
        monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)

    return configure


@pytest.mark.parametrize("cuda,mps,expected", [(True, True, "cuda"), (False, True, "mps"), (False, False, "cpu"),
                                               (True, False, "cuda")])
def test_auto_prefers_cuda_then_mps_then_cpu(machine, cuda, mps, expected):
    machine(cuda, mps)
    chosen, note = resolve_device("auto")
    assert chosen.type == expected
    if expected == "mps":
        assert "MPS" in note and "float32" in note


def test_mps_asked_for_is_used_where_present_and_refused_with_the_fix_elsewhere(machine):
    assert "mps" in DEVICE_CHOICES
    machine(cuda=True, mps=True)
    assert resolve_device("mps")[0].type == "mps"  # asked for: Metal even where CUDA exists
    machine(cuda=False, mps=False)
    with pytest.raises(InputError, match="--device mps was asked for but Metal .* use --device cpu or auto"):
        resolve_device("mps")


def test_cuda_asked_for_never_falls_to_mps_and_cpu_stays_cpu(machine):
    machine(cuda=False, mps=True)
    with pytest.raises(InputError, match="--device cuda was asked for"):
        resolve_device("cuda")
    assert resolve_device("cpu")[0].type == "cpu"


def test_the_fallback_switch_is_reported(machine, monkeypatch):
    machine(cuda=False, mps=True)
    monkeypatch.setenv("PYTORCH_ENABLE_MPS_FALLBACK", "0")
    assert "set PYTORCH_ENABLE_MPS_FALLBACK=1" in resolve_device("auto")[1]
    monkeypatch.setenv("PYTORCH_ENABLE_MPS_FALLBACK", "1")
    assert "fallback for unsupported ops on" in resolve_device("auto")[1]


def test_mps_sums_in_float32_elsewhere_in_float64():
    assert precise_dtype(torch.device("mps")) == torch.float32
    assert precise_dtype(torch.device("cpu")) == torch.float64
    assert devices.mps_usable() in (True, False)
