"""The reliability table's shared parts (README Troubleshooting): the CLI in-process, one `error:` line, the library
under test for subprocesses, small inputs and a real (then damaged) model file. Each layer's rows import it."""


from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import SR4ZCTLib
import SR4ZCTLib.cli.common
from SR4ZCTLib import cli
from SR4ZCTLib.core.acquisition import Acquisition
from SR4ZCTLib.options import DEFAULT_PROFILE
from SR4ZCTLib.enhance import TrainedModel
from SR4ZCTLib.errors import InputError
from SR4ZCTLib.core.intensity import Normalisation
from SR4ZCTLib.core.networks import build_network
from SR4ZCTLib.core.volume import Volume
from SR4ZCTLib.io.volumes import read_volume, write_volume

from conftest import stacked_positions, write_dicom_series

LIBRARY = str(Path(SR4ZCTLib.__file__).resolve().parents[1])  # the folder holding the SR4ZCTLib under test
MATRIX = Volume.matrix_from((1.0, -2.0, 3.0), (0.7, 0.7, 2.5), np.eye(3))
LIMITED_WRITE = """
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
limit = int(sys.argv[1])
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
from SR4ZCTLib.cli import main
sys.exit(main(sys.argv[2:]))
"""  # python -c LIMITED_WRITE BYTES ARGS...: the CLI with files limited to BYTES, as on a full disk
FAST = ["--iterations", "2", "--device", "cpu", "--thickness", "2.5"]


def digest(path: Path) -> bytes:
    paths = sorted(path.rglob("*")) if path.is_dir() else [path]
    return b"".join(p.name.encode() + p.read_bytes() for p in paths if p.is_file())


def run_cli(args, capsys):
    code = cli.main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@contextlib.contextmanager
def unprivileged(tmp_path: Path):
    """As root, run the block as `nobody` (real and effective ids; root kept as the saved id to come back), with
    tmp_path reachable: a read-only folder then refuses writes as it does for every user. Otherwise a no-op."""
    if not hasattr(os, "setresuid") or os.geteuid() != 0:
        yield
        return
    import pwd

    nobody = pwd.getpwnam("nobody")
    reach = {folder: 0o005 for folder in [tmp_path, *tmp_path.parents]}  # the test's files: listed and read
    for place in (sys.prefix, LIBRARY, *sys.path):  # Python, the library, lazy imports: passed through only
        for folder in Path(place).resolve().parents if place else ():
            reach.setdefault(folder, 0o001)
    modes = {folder: folder.stat().st_mode & 0o7777 for folder in reach if folder.is_dir()}
    for folder, mode in modes.items():
        if mode & reach[folder] != reach[folder]:
            folder.chmod(mode | reach[folder])
    os.setresgid(nobody.pw_gid, nobody.pw_gid, 0)
    os.setresuid(nobody.pw_uid, nobody.pw_uid, 0)
    try:
        yield
    finally:
        os.setresuid(0, 0, 0)
        os.setresgid(0, 0, 0)
        for folder, mode in modes.items():
            if folder.stat().st_mode & 0o7777 != mode:
                folder.chmod(mode)


def assert_refused(code, err, message):
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(errors) == 1, err
    assert re.search(message, errors[0]), errors[0]
    assert "Traceback" not in err


def subprocess_env(**extra) -> dict:
    environment = dict(os.environ, PYTHONPATH=LIBRARY + os.pathsep + os.environ.get("PYTHONPATH", ""))
    environment.update(extra)
    return environment


@pytest.fixture
def ct(tmp_path, small_ct) -> Path:
    return write_volume(Volume(small_ct, MATRIX), tmp_path / "ct.nrrd")


@pytest.fixture
def dicom(tmp_path, small_ct) -> Path:
    return write_dicom_series(tmp_path / "series", small_ct, stacked_positions(6, 2.5), thickness=2.5)


def small_model(path: Path, **changes) -> Path:
    """A real saved model (untrained CNN), then the bundle edited as a hostile or damaged file would be."""
    model = TrainedModel(build_network("cnn", {"depth": 3, "width": 4}), "cnn", {"depth": 3, "width": 4},
                         Acquisition(2.5, 2.5, DEFAULT_PROFILE), 0.7, Normalisation(), {"validation_psnr_db": 41.0,
                                                                       "validation_linear_psnr_db": 40.0})
    model.save(path)
    if changes:
        bundle = torch.load(str(path), weights_only=True)
        for key, value in changes.items():
            target, _, name = key.partition(".") if "." in key else ("", "", key)
            holder = bundle[target] if target else bundle
            if value is KeyError:
                del holder[name]
            else:
                holder[name] = value
        torch.save(bundle, str(path))
    return path
