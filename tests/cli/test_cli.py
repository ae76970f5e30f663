"""The `sr4zct` command line contract and the reliability table (README, Troubleshooting): one row, one test.

Every case checks the exit code, the one-line `error:` message, that nothing was written and that
the input file's bytes are unchanged.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from SR4ZCTLib import cli
from SR4ZCTLib.core.device import resolve_device
from SR4ZCTLib.errors import InputError
from SR4ZCTLib.core.volume import Volume
from SR4ZCTLib.io.volumes import read_volume, write_volume

from conftest import CHEST_DICOM, needs_shared, stacked_positions, write_dicom_series

MATRIX = Volume.matrix_from((1.0, -2.0, 3.0), (0.7, 0.7, 2.5), np.eye(3))


def digest(path: Path) -> str:
    paths = sorted(path.rglob("*")) if path.is_dir() else [path]
    return hashlib.sha256(b"".join(p.read_bytes() for p in paths if p.is_file())).hexdigest()


def run_cli(args, capsys):
    code = cli.main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def ct_file(tmp_path: Path, array: np.ndarray, name="ct.nrrd", matrix=MATRIX) -> Path:
    return write_volume(Volume(array, matrix), tmp_path / name)


@pytest.fixture
def ct(tmp_path, small_ct) -> Path:
    return ct_file(tmp_path, small_ct)


# ---- bad inputs: error line, exit 2, nothing written, input untouched ---------------------------------------------
def _two_d(tmp_path, small_ct):
    import SimpleITK as sitk

    path = tmp_path / "image.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray(small_ct[0]), str(path))
    return path


def _two_slices(tmp_path, small_ct):
    return ct_file(tmp_path, small_ct[:2], "two.nrrd")


def _nan(tmp_path, small_ct):
    array = small_ct.astype(np.float32)
    array[2, 3, 4] = np.nan
    return ct_file(tmp_path, array, "nan.nrrd")


def _inf(tmp_path, small_ct):
    array = small_ct.astype(np.float32)
    array[1, 1, 1] = np.inf
    return ct_file(tmp_path, array, "inf.nrrd")


def _label_map(tmp_path, small_ct):
    return ct_file(tmp_path, (small_ct > 0).astype(np.int16) * 3, "labels.nrrd")


def _mr_like(tmp_path, small_ct):
    noise = np.random.default_rng(0).integers(0, 300, small_ct.shape)
    return ct_file(tmp_path, (small_ct + 1024 + noise).astype(np.int16), "mr.nrrd")


def _out_of_range(tmp_path, small_ct):
    return ct_file(tmp_path, small_ct.astype(np.float32) * 100.0, "scaled.nrrd")


def _missing_slice(tmp_path, small_ct):
    positions = stacked_positions(6, 2.0)
    keep = [0, 1, 3, 4, 5]
    return write_dicom_series(tmp_path / "missing", small_ct[keep], [positions[i] for i in keep], thickness=2.0)


def _tilted(tmp_path, small_ct):
    positions = [p + np.array([0.0, 0.6 * i, 0.0]) for i, p in enumerate(stacked_positions(6, 2.0))]
    return write_dicom_series(tmp_path / "tilt", small_ct, positions, thickness=2.0)


def _not_a_volume(tmp_path, small_ct):
    path = tmp_path / "notes.txt"
    path.write_text("hello")
    return path


BAD_INPUTS = [
    (_two_d, [], "not a 3D volume"),
    (_two_slices, [], "too few slices"),
    (_nan, [], "NaN or infinite"),
    (_inf, [], "NaN or infinite"),
    (_label_map, [], "label map"),
    (_mr_like, [], "no voxel is below 0"),
    (_out_of_range, [], "outside CT Hounsfield units"),
    (_missing_slice, [], "not uniform"),
    (_tilted, [], "gantry tilt"),
    (_not_a_volume, [], "unknown file type"),
    (lambda tmp_path, a: ct_file(tmp_path, a), ["--thickness", "0"], "--thickness.*positive"),
    (lambda tmp_path, a: ct_file(tmp_path, a), ["--thickness", "nan"], "--thickness.*positive"),
    (lambda tmp_path, a: ct_file(tmp_path, a), ["--increment", "-2"], "--increment.*positive"),
    (lambda tmp_path, a: ct_file(tmp_path, a), ["--target-spacing", "0"], "--target-spacing.*positive"),
]


@pytest.mark.parametrize("make_input,extra,message", BAD_INPUTS,
                         ids=[case[2].split(".")[0].replace(" ", "-") + f"-{i}" for i, case in enumerate(BAD_INPUTS)])
def test_bad_input_gets_one_error_line_and_nothing_is_written(tmp_path, small_ct, capsys, make_input, extra, message):
    source = make_input(tmp_path, small_ct)
    before = digest(source)
    output = tmp_path / "out" / "enhanced.nrrd"
    output.parent.mkdir()
    code, out, err = run_cli(["enhance", source, "-o", output, "--iterations", "2", "--device", "cpu", *extra], capsys)
    assert code == 2
    error_lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1 and __import__("re").search(message, error_lines[0]), err
    assert "Traceback" not in err
    assert list(output.parent.iterdir()) == []
    assert digest(source) == before


def test_allow_non_hu_enhances_a_non_ct_volume(tmp_path, small_ct, capsys):
    source = _mr_like(tmp_path, small_ct)
    code, _, err = run_cli(["enhance", source, "-o", tmp_path / "o.nrrd", "--iterations", "2", "--device", "cpu",
                            "--thickness", "2.5", "--allow-non-hu", "--progress", "none"], capsys)
    assert code == 0, err
    # mapped back to the input's own scale (0..1400): an HU mapping would put its background near -1024; the
    # projection's overshoot on this white noise stays within a few tens
    assert read_volume(tmp_path / "o.nrrd").array.min() >= -300


# ---- output paths ---------------------------------------------------------------------------------------------
def test_existing_output_is_refused_without_overwrite(tmp_path, ct, capsys):
    output = tmp_path / "exists.nrrd"
    output.write_bytes(b"keep me")
    code, _, err = run_cli(["enhance", ct, "-o", output, "--iterations", "2", "--device", "cpu"], capsys)
    assert code == 2 and "--overwrite" in err and output.read_bytes() == b"keep me"
    code, _, err = run_cli(["enhance", ct, "-o", output, "--iterations", "2", "--device", "cpu", "--overwrite",
                            "--thickness", "2.5", "--progress", "none"], capsys)
    assert code == 0, err
    assert read_volume(output).array.shape[1:] == (24, 20)


def test_output_same_as_input_is_refused_even_with_overwrite(ct, capsys):
    before = digest(ct)
    code, _, err = run_cli(["enhance", ct, "-o", ct, "--overwrite"], capsys)
    assert code == 2 and "overwrite the input" in err
    assert digest(ct) == before


def test_unwritable_output_folder_is_refused(tmp_path, ct, capsys, monkeypatch):
    code, _, err = run_cli(["enhance", ct, "-o", tmp_path / "no" / "such" / "o.nrrd"], capsys)
    assert code == 2 and "does not exist" in err
    locked = tmp_path / "locked"
    locked.mkdir()
    real_access = os.access  # root may write anywhere, so ask os.access what a normal user would hear
    monkeypatch.setattr(os, "access", lambda path, mode: False if Path(path) == locked.resolve() else real_access(path, mode))
    code, _, err = run_cli(["enhance", ct, "-o", locked / "o.nrrd"], capsys)
    assert code == 2 and "not writable" in err
    assert list(locked.iterdir()) == []


def test_output_type_is_checked(tmp_path, ct, capsys):
    code, _, err = run_cli(["enhance", ct, "-o", tmp_path / "o.png"], capsys)
    assert code == 2 and "unknown type" in err


# ---- warnings that let the run go on ----------------------------------------------------------------------------
@needs_shared(CHEST_DICOM)
def test_thickness_far_from_dicom_warns(capsys):
    code, out, err = run_cli(["info", CHEST_DICOM, "--thickness", "2"], capsys)
    assert code == 0 and "far from the DICOM SliceThickness" in err


def test_gap_works_and_warns(tmp_path, small_ct, capsys):
    folder = write_dicom_series(tmp_path / "gap", small_ct, stacked_positions(6, 3.0), thickness=2.0)
    code, out, err = run_cli(["info", folder, "--json"], capsys)
    assert code == 0 and "gap of 1 mm" in err
    assert json.loads(out)["overlap_mm"] == pytest.approx(-1.0)
    code, _, err = run_cli(["enhance", folder, "-o", tmp_path / "o.nii.gz", "--iterations", "2", "--device", "cpu",
                            "--progress", "none"], capsys)
    assert code == 0, err


def test_through_plane_not_coarser_warns(tmp_path, small_ct, capsys):
    source = ct_file(tmp_path, small_ct, matrix=Volume.matrix_from((0, 0, 0), (0.7, 0.7, 0.7), np.eye(3)))
    code, _, err = run_cli(["info", source, "--thickness", "0.7"], capsys)
    assert code == 0 and "nothing to recover" in err


# ---- info ---------------------------------------------------------------------------------------------------------
def test_info_json_has_the_contract_keys(tmp_path, small_ct, capsys):
    folder = write_dicom_series(tmp_path / "s", small_ct, stacked_positions(6, 2.0), thickness=3.0)
    code, out, _ = run_cli(["info", folder, "--json"], capsys)
    summary = json.loads(out)
    assert code == 0
    assert {"shape", "spacing_mm", "through_plane_axis", "increment_mm", "thickness_mm", "overlap_mm",
            "thickness_source"} <= set(summary)
    assert summary["thickness_source"] == "dicom" and summary["overlap_mm"] == pytest.approx(1.0)
    code, out, _ = run_cli(["info", folder, "--json", "--thickness", "2.5"], capsys)
    assert json.loads(out)["thickness_source"] == "user"


def test_info_without_thickness_assumes_the_increment(ct, capsys):
    code, out, err = run_cli(["info", ct, "--json"], capsys)
    summary = json.loads(out)
    assert summary["thickness_source"] == "assumed" and summary["thickness_mm"] == pytest.approx(2.5)
    assert "assuming it equals the increment" in err


# ---- enhance, simulate, types, reproducibility -----------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.int16, np.float32, np.uint16, np.float64])
def test_voxel_types_work_and_output_type_is_documented(tmp_path, small_ct, capsys, dtype):
    array = small_ct.astype(np.float64) + (1024 if dtype == np.uint16 else 0)
    source = ct_file(tmp_path, array.astype(dtype), f"in_{np.dtype(dtype).name}.nrrd")
    extra = ["--allow-non-hu"] if dtype == np.uint16 else []
    code, _, err = run_cli(["enhance", source, "-o", tmp_path / "o.nrrd", "--iterations", "2", "--device", "cpu",
                            "--thickness", "2.5", "--progress", "none", *extra], capsys)
    assert code == 0, err
    expected = dtype if np.issubdtype(dtype, np.integer) else np.float32  # the input's integer type when it fits
    assert read_volume(tmp_path / "o.nrrd").array.dtype == expected


def test_same_input_same_seed_same_file(tmp_path, ct, capsys):
    outputs = []
    for name in ("a.nrrd", "b.nrrd"):
        code, _, err = run_cli(["enhance", ct, "-o", tmp_path / name, "--iterations", "4", "--device", "cpu",
                                "--seed", "3", "--progress", "none"], capsys)
        assert code == 0, err
        outputs.append(read_volume(tmp_path / name).array)
    np.testing.assert_array_equal(*outputs)


def test_enhance_writes_report_model_and_reuses_the_model(tmp_path, ct, capsys):
    before = digest(ct)
    code, out, err = run_cli(["enhance", ct, "-o", tmp_path / "o.mha", "--iterations", "3", "--device", "cpu",
                              "--thickness", "3", "--report", tmp_path / "report", "--save-model", tmp_path / "m.pt",
                              "--progress", "json"], capsys)
    assert code == 0, err
    events = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    assert events[-1]["stage"] == "done" and "validation_psnr_db" in events[-1]["metrics"]["training"]
    metrics = json.loads((tmp_path / "report" / "metrics.json").read_text())
    assert metrics["acquisition"]["overlap_mm"] == pytest.approx(0.5)
    assert (tmp_path / "report" / "report.png").read_bytes()[:4] == b"\x89PNG"
    code, _, err = run_cli(["enhance", ct, "-o", tmp_path / "again.mha", "--model", tmp_path / "m.pt",
                            "--thickness", "3", "--device", "cpu", "--progress", "none"], capsys)
    assert code == 0, err
    np.testing.assert_array_equal(read_volume(tmp_path / "again.mha").array, read_volume(tmp_path / "o.mha").array)
    code, _, err = run_cli(["enhance", ct, "-o", tmp_path / "wrong.mha", "--model", tmp_path / "m.pt",
                            "--thickness", "4", "--device", "cpu"], capsys)
    assert code == 2 and "trained for" in err and not (tmp_path / "wrong.mha").exists()
    assert digest(ct) == before


def test_simulate_makes_thick_slices_with_the_increment(tmp_path, capsys):
    thin = np.tile(np.linspace(-1000, 1000, 41, dtype=np.float32)[:, None, None], (1, 8, 9))
    source = ct_file(tmp_path, thin, "thin.nrrd", Volume.matrix_from((0, 0, 5.0), (0.6, 0.6, 0.5), np.eye(3)))
    code, out, err = run_cli(["simulate", source, "-o", tmp_path / "thick.nrrd", "--thickness", "3",
                              "--increment", "2"], capsys)
    assert code == 0, err
    thick = read_volume(tmp_path / "thick.nrrd")
    assert thick.array.shape == (11, 8, 9)
    assert thick.spacing == pytest.approx([0.6, 0.6, 2.0])
    np.testing.assert_allclose(thick.origin, [0, 0, 5.0])
    np.testing.assert_allclose(thick.array[1:-1, 0, 0], np.linspace(-1000, 1000, 41)[4:-4:4], atol=1e-3)


@pytest.mark.parametrize("axis,expected", [(None, (6, 9, 10)), ("k", (6, 9, 10)), ("j", (11, 7, 10)), ("i", (11, 9, 7))])
def test_simulate_thickens_the_axis_asked_for_not_the_coarsest(tmp_path, capsys, axis, expected):
    """A thin (0.7, 0.8, 0.5) mm volume: k by default (the coarsest rule picked j), any axis with --axis."""
    thin = np.zeros((11, 9, 10), np.float32)
    source = ct_file(tmp_path, thin, "thin.nrrd", Volume.matrix_from((0, 0, 0), (0.7, 0.8, 0.5), np.eye(3)))
    code, _, err = run_cli(["simulate", source, "-o", tmp_path / "thick.nrrd", "--thickness", "2", "--increment", "1"]
                           + (["--axis", axis] if axis else []), capsys)
    assert code == 0, err
    thick = read_volume(tmp_path / "thick.nrrd")
    assert thick.array.shape == expected
    spacing = {"i": [1.0, 0.8, 0.5], "j": [0.7, 1.0, 0.5], "k": [0.7, 0.8, 1.0]}[axis or "k"]
    assert thick.spacing == pytest.approx(spacing)


# ---- the README's Troubleshooting table: rows numbered 1, 2, 3 ..., and every "row N" names one -------------------
def test_troubleshooting_rows_are_numbered_in_order_and_references_exist():
    import re

    root = Path(__file__).resolve().parents[2]
    readme = (root / "README.md").read_text()
    table = readme[readme.index("## Troubleshooting"):].split("\n\n")[1].splitlines()[2:]
    numbers = [re.match(r"\| (\d+)\. ", row) for row in table]
    assert all(numbers), [row[:40] for row, n in zip(table, numbers) if not n]
    assert [int(n.group(1)) for n in numbers] == list(range(1, len(table) + 1))
    texts = [readme] + [p.read_text() for p in sorted((root / "docs").glob("*.md")) + sorted(root.glob("tests/**/*_rows.py"))]
    cited = {int(n) for text in texts for refs in re.findall(r"\brows? (\d+(?:(?:, | and )\d+)*)", text)
             for n in re.findall(r"\d+", refs)}
    assert cited and cited <= set(range(1, len(table) + 1)), sorted(cited)


# ---- a new user's first hour: --version, simulate's header read back, simulate --progress ---------------------------
def test_version_is_printed_and_in_every_json_output(tmp_path, ct, capsys):
    from SR4ZCTLib import __version__

    code, out, _ = run_cli(["--version"], capsys)
    assert code == 0 and out.strip() == f"sr4zct {__version__}"
    code, out, _ = run_cli(["info", ct, "--json", "--thickness", "2.5"], capsys)
    assert json.loads(out)["sr4zct_version"] == __version__
    code, _, err = run_cli(["enhance", ct, "-o", tmp_path / "o.nrrd", "--iterations", "2", "--device", "cpu",
                            "--thickness", "2.5", "--report", tmp_path / "r", "--progress", "json"], capsys)
    assert code == 0, err
    assert json.loads(err.splitlines()[-1])["metrics"]["sr4zct_version"] == __version__
    assert json.loads((tmp_path / "r" / "metrics.json").read_text())["sr4zct_version"] == __version__


def _simulated(tmp_path: Path, capsys, suffix: str, *extra: str) -> tuple[Path, str]:
    rng = np.random.default_rng(4)
    thin = rng.normal(40, 300, (30, 20, 22)).astype(np.int16)
    source = ct_file(tmp_path, thin, "thin.nrrd", Volume.matrix_from((0, 0, 5.0), (0.7, 0.7, 0.5), np.eye(3)))
    output = tmp_path / f"thick{suffix}"
    code, _, err = run_cli(["simulate", source, "-o", output, "--thickness", "3", "--increment", "2",
                            "--profile", "gaussian", *extra], capsys)
    assert code == 0, err
    return output, err


@pytest.mark.parametrize("suffix", [".nrrd", ".nii.gz", ".mha"])
def test_simulate_records_its_acquisition_and_info_and_enhance_read_it(tmp_path, capsys, suffix):
    thick, _ = _simulated(tmp_path, capsys, suffix)
    code, out, err = run_cli(["info", thick, "--json"], capsys)
    summary = json.loads(out)
    assert code == 0 and "assum" not in err
    assert (summary["thickness_mm"], summary["increment_mm"], summary["profile"]) == (3.0, 2.0, "gaussian")
    assert summary["thickness_source"] == summary["increment_source"] == "simulate header"
    code, _, err = run_cli(["enhance", thick, "-o", tmp_path / "o.nrrd", "--iterations", "2", "--device", "cpu",
                            "--progress", "none", "--report", tmp_path / "r"], capsys)
    assert code == 0 and "assum" not in err, err
    metrics = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert metrics["thickness_source"] == "simulate header" and metrics["acquisition"]["profile"] == "gaussian"
    assert read_volume(tmp_path / "o.nrrd").recorded_acquisition is None  # the enhanced volume is not thick slices
    code, out, _ = run_cli(["info", thick, "--json", "--thickness", "4"], capsys)
    assert json.loads(out)["thickness_source"] == "user"  # the user's number wins


def test_a_damaged_simulate_header_is_refused_naming_the_field(tmp_path, capsys):
    thick, _ = _simulated(tmp_path, capsys, ".nrrd")
    thick.write_bytes(thick.read_bytes().replace(b"sr4zct_thickness_mm:=3", b"sr4zct_thickness_mm:=x"))
    code, out, err = run_cli(["info", thick, "--json"], capsys)
    assert code == 2 and err.startswith("error:") and "sr4zct_* header fields are damaged" in err and out == ""


def test_simulate_progress_reports_stages_as_json(tmp_path, capsys):
    _, err = _simulated(tmp_path, capsys, ".nrrd", "--progress", "json")
    events = [json.loads(line) for line in err.splitlines()]
    fractions = [e["fraction"] for e in events if e.get("stage") == "simulating"]
    assert len(fractions) >= 2 and fractions == sorted(fractions) and fractions[-1] == 1.0
    assert events[-1]["stage"] == "done" and events[-1]["metrics"]["sr4zct_version"]
    (tmp_path / "quiet").mkdir()
    assert _simulated(tmp_path / "quiet", capsys, ".nrrd", "--progress", "none")[1] == ""


# ---- memory, devices, GPU out of memory ---------------------------------------------------------------------------
def test_volume_too_large_for_memory_is_refused_unless_forced(tmp_path, ct, capsys, monkeypatch):
    import psutil

    class Tiny:
        available = 50 * 2**20

    monkeypatch.setattr(psutil, "virtual_memory", lambda: Tiny())
    code, _, err = run_cli(["enhance", ct, "-o", tmp_path / "o.nrrd", "--device", "cpu"], capsys)
    assert code == 2 and "GiB" in err and "--force" in err and "crop" in err
    assert not (tmp_path / "o.nrrd").exists()
    code, _, err = run_cli(["enhance", ct, "-o", tmp_path / "o.nrrd", "--device", "cpu", "--force",
                            "--iterations", "2", "--progress", "none"], capsys)
    assert code == 0, err


def test_no_cuda_means_cpu_with_a_message_and_cuda_asked_is_refused():
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    device, note = resolve_device("auto")
    assert device.type == "cpu" and "CPU (" in note
    with pytest.raises(InputError, match="--device cpu"):
        resolve_device("cuda")


def test_cuda_out_of_memory_in_inference_halves_the_batch_then_uses_the_cpu(monkeypatch):
    from SR4ZCTLib.core import inference
    from SR4ZCTLib.progress import Reporter

    calls = []

    def fake_run(network, images, device, compute, flips=False):
        calls.append((device.type, images.shape[0]))
        if device.type == "cuda":
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB")
        return images * 2

    monkeypatch.setattr(inference, "_run_network", fake_run)
    messages = []
    runner = inference._BatchRunner(torch.nn.Identity(), torch.device("cuda"), 4,
                                    Reporter(lambda p: messages.append(p.message)))
    images = torch.arange(12.0).reshape(6, 1, 2)
    torch.testing.assert_close(runner(images), images * 2)
    assert [c for c in calls if c[0] == "cuda"] == [("cuda", 4), ("cuda", 2), ("cuda", 1)]
    assert runner.device.type == "cpu"
    assert any("continuing on the CPU" in m for m in messages)


def test_cuda_out_of_memory_in_training_retries_smaller_then_cpu(monkeypatch):
    from SR4ZCTLib.core import training
    from SR4ZCTLib.core.acquisition import Acquisition
    from SR4ZCTLib.core.intensity import Normalisation

    attempts = []

    def fake_train(job, reporter):
        attempts.append((job.device.type, job.config.batch_size))
        if job.device.type == "cuda":
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")
        return training.TrainingResult(torch.nn.Identity(), {"device": str(job.device)})

    monkeypatch.setattr(training, "_train", fake_train)
    config = training.preset("fast")
    result = training.train_network(np.zeros((4, 8, 8), np.float32), (1.0, 1.0), Acquisition(2, 2), config,
                                    Normalisation(), torch.device("cuda"))
    assert attempts == [("cuda", 16), ("cuda", 8), ("cuda", 4), ("cuda", 2), ("cuda", 1), ("cpu", 1)]
    assert result.metrics["device"] == "cpu"


# ---- cancel ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("stage", ["pairs", "training", "inference"])
def test_cancel_in_each_stage_stops_quickly_and_writes_nothing(tmp_path, ct, stage):
    from SR4ZCTLib.enhance import EnhanceOptions, enhance
    from SR4ZCTLib.errors import Cancelled
    from SR4ZCTLib.progress import Reporter
    from SR4ZCTLib.core.volume import read_through_plane_geometry

    volume = read_volume(ct)
    before = volume.array.copy()
    geometry, _ = read_through_plane_geometry(volume)
    state = {"cancel": False, "at": None}

    def on_progress(progress):
        if progress.stage == stage and not state["cancel"]:
            state["cancel"], state["at"] = True, time.perf_counter()

    with pytest.raises(Cancelled):
        enhance(volume, geometry, EnhanceOptions(iterations=20 if stage == "inference" else 10**6, device="cpu"),
                reporter=Reporter(on_progress, lambda: state["cancel"]))
    assert time.perf_counter() - state["at"] < 3.0
    np.testing.assert_array_equal(volume.array, before)


def test_ctrl_c_exits_130_and_leaves_nothing(tmp_path, ct):
    before = digest(ct)
    output, report = tmp_path / "o.nrrd", tmp_path / "report"
    process = subprocess.Popen([sys.executable, "-m", "SR4ZCTLib.cli", "enhance", str(ct), "-o", str(output),
                                "--iterations", "1000000", "--device", "cpu", "--progress", "json",
                                "--report", str(report)], stderr=subprocess.PIPE, text=True)
    for line in process.stderr:  # wait until training runs
        if '"stage": "training"' in line:
            break
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=30)
    assert process.returncode == 130, err
    assert "cancelled" in err
    assert not output.exists() and not report.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ct.nrrd"]
    assert digest(ct) == before
