"""Reliability table, the DICOM series output (issue 17): published with every other output, all or none; never over
an input or unrelated files; stale staging cleaned; a full disk and odd folders as one error (rows 2, 3, 5, 13, 14).

Each refusal checks the exit code, one `error:` line without a traceback, that nothing new was left and that every
old file, the inputs included, is as it was."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest

from reliability import (FAST, LIMITED_WRITE, MATRIX, InputError, Volume, assert_refused, ct, dicom, digest,  # noqa: F401
                         run_cli, small_model, subprocess_env)
from conftest import stacked_positions, write_dicom_series

RUN = ["--progress", "none", *FAST]


def _series_uids(folder: Path) -> set:
    return {str(pydicom.dcmread(str(p), stop_before_pixels=True).SeriesInstanceUID) for p in folder.iterdir()}


def _left_over(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if ".sr4zct-" in p.name]


@pytest.fixture
def old_series(tmp_path, small_ct) -> Path:
    """An existing derived-series folder (one series, nothing else) that --overwrite may replace."""
    return write_dicom_series(tmp_path / "out", small_ct[:3], stacked_positions(3, 2.5), thickness=2.5)


def _staged_run(tmp_path, dicom, overwrite: bool):
    """A publication holding a staged series for tmp/out and a staged model file tmp/m.pt (nothing published yet)."""
    from SR4ZCTLib.io.dicom import read_source_series
    from SR4ZCTLib.io.dicom_write import stage_dicom_series
    from SR4ZCTLib.io.publish import OutputPlan, Publication
    from SR4ZCTLib.io.volumes import read_volume

    plan = OutputPlan(dicom, overwrite)
    plan.protect_folder("-o", tmp_path / "out")
    plan.add("--save-model", tmp_path / "m.pt")
    publication = Publication(plan)
    stage_dicom_series(publication, read_volume(dicom), 2, tmp_path / "out", read_source_series(dicom), "series")
    small_model(tmp_path / "model-source.pt")
    publication.stage(tmp_path / "m.pt", lambda name: Path(name).write_bytes((tmp_path / "model-source.pt").read_bytes()),
                      lambda name: None)
    return publication


# ---- row 2: the series is part of the one publication: a later failure publishes nothing, an old series kept --------
def test_a_later_output_failing_leaves_no_new_series(tmp_path, dicom):
    publication = _staged_run(tmp_path, dicom, overwrite=False)
    (tmp_path / "m.pt").write_bytes(b"appeared meanwhile")
    with pytest.raises(InputError, match="m.pt appeared while this run worked"):
        publication.publish()
    assert not (tmp_path / "out").exists() and (tmp_path / "m.pt").read_bytes() == b"appeared meanwhile"
    assert _left_over(tmp_path) == []


def test_with_overwrite_a_later_failure_puts_the_old_series_back(tmp_path, dicom, old_series):
    before = digest(old_series)
    publication = _staged_run(tmp_path, dicom, overwrite=True)
    (tmp_path / "m.pt").mkdir()  # --save-model became a folder while the run worked
    with pytest.raises(InputError, match="became a folder"):
        publication.publish()
    assert digest(old_series) == before and _left_over(tmp_path) == []


SWAP_LOOP = """
import signal, sys
from pathlib import Path
from SR4ZCTLib.cli.app import _raise_cancelled
from SR4ZCTLib.errors import Cancelled
from SR4ZCTLib.io.dicom import read_source_series
from SR4ZCTLib.io.dicom_write import write_dicom_series
from SR4ZCTLib.io.volumes import read_volume
source, out = Path(sys.argv[1]), Path(sys.argv[2])
volume, series = read_volume(source), read_source_series(source)
signal.signal(signal.SIGTERM, _raise_cancelled)
print("ready", flush=True)
try:
    while True:
        write_dicom_series(volume, 2, out, series, "x", overwrite=True)
except Cancelled as cancel:
    print("cancelled:", cancel.kept, flush=True)
"""


@pytest.mark.parametrize("delay", [0.3, 0.7, 1.1])
def test_sigterm_during_the_swap_keeps_one_whole_series(tmp_path, dicom, old_series, delay):
    process = subprocess.Popen([sys.executable, "-c", SWAP_LOOP, str(dicom), str(old_series)], stdout=subprocess.PIPE,
                               text=True, env=subprocess_env())
    assert process.stdout.readline().strip() == "ready"
    import time

    time.sleep(delay)  # many swaps per second: the signal lands in staging or in the swap itself
    process.send_signal(signal.SIGTERM)
    try:
        out, _ = process.communicate(timeout=60)  # one signal is enough: a cancel Python drops is remembered (row 64)
    finally:
        process.kill()
    assert "cancelled:" in out and ("nothing was written" in out or "already published" in out), out
    files = list(old_series.iterdir())
    assert len(files) in (3, 6) and len(_series_uids(old_series)) == 1  # the old series whole, or a new one whole
    assert _left_over(tmp_path) == []


def test_a_cancel_while_reading_back_is_a_cancel_not_a_damaged_file(dicom, monkeypatch):
    from SR4ZCTLib.errors import Cancelled
    from SR4ZCTLib.io.dicom import scan_folder

    def interrupted(*args, **kwargs):
        raise Cancelled("terminated")

    monkeypatch.setattr(pydicom, "dcmread", interrupted)  # SIGTERM landing inside pydicom while a series is verified
    with pytest.raises(Cancelled):
        scan_folder(dicom, refuse_damaged=True)


@pytest.fixture
def cli_signal_handler():
    """SIGTERM handled as `sr4zct` handles it, and any remembered cancel forgotten afterwards."""
    from SR4ZCTLib.cli.app import _raise_cancelled
    from SR4ZCTLib.errors import clear_cancel

    previous = signal.signal(signal.SIGTERM, _raise_cancelled)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
        clear_cancel()


def test_pydicom_turns_a_cancel_inside_a_sequence_into_oserror(cli_signal_handler):
    """Why a cancel must be remembered: pydicom 3 (filereader.read_sequence_item) re-raises any BaseException there
    as OSError('No tag to read'), which a reader takes for a damaged file. A real SIGTERM, sent as pydicom reads an
    item's tag; the handler runs right after that read, inside pydicom's try."""
    from pydicom.dataset import Dataset

    ds, item = Dataset(), Dataset()
    item.ReferencedSOPInstanceUID = "1.2.3"
    ds.ReferencedImageSequence = [item]
    sent = []

    def signal_at_the_item_read(frame, event, arg):
        if event == "c_call" and frame.f_code.co_name == "read_sequence_item" and arg.__name__ == "read" and not sent:
            sent.append(True)
            os.kill(os.getpid(), signal.SIGTERM)

    sys.setprofile(signal_at_the_item_read)
    try:
        with pytest.raises(OSError, match="No tag to read"):
            pydicom.dcmread(_saved(ds), force=True).ReferencedImageSequence
    finally:
        sys.setprofile(None)
    assert sent


def _saved(ds):
    import io

    buffer = io.BytesIO()
    ds.save_as(buffer, implicit_vr=False, little_endian=True)
    buffer.seek(0)
    return buffer


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # the swallowed cancel, on purpose
def test_a_cancel_a_library_swallowed_stays_a_cancel(tmp_path, dicom, cli_signal_handler, monkeypatch):
    from SR4ZCTLib.errors import Cancelled
    from SR4ZCTLib.io.dicom import read_source_series, scan_folder
    from SR4ZCTLib.io.dicom_write import write_dicom_series
    from SR4ZCTLib.io.volumes import read_volume

    volume, series = read_volume(dicom), read_source_series(dicom)
    real_read = pydicom.dcmread

    def read_then_signalled(*args, **kwargs):  # the signal lands in a sequence item: pydicom raises OSError
        monkeypatch.setattr(pydicom, "dcmread", real_read)
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            return real_read(*args, **kwargs)
        except Cancelled:
            raise OSError("No tag to read at file position 1F4") from None

    monkeypatch.setattr(pydicom, "dcmread", read_then_signalled)
    with pytest.raises(Cancelled):  # before: the file was skipped as damaged, and the run went on
        scan_folder(dicom)

    class Finaliser:  # the signal lands while a finaliser runs: Python prints "Exception ignored" and goes on
        def __del__(self):
            os.kill(os.getpid(), signal.SIGTERM)
            sum(range(1000))  # the handler runs here; its exception is swallowed with the finaliser's

    from SR4ZCTLib.errors import clear_cancel

    clear_cancel()
    Finaliser()
    with pytest.raises(Cancelled):  # before: the series was written and published as if nothing had happened
        write_dicom_series(volume, 2, tmp_path / "out", series, "x")
    assert not (tmp_path / "out").exists() and _left_over(tmp_path) == []


# ---- row 3: never over an input; --overwrite replaces only a folder holding one series -------------------------------
def test_overwrite_refuses_an_output_folder_holding_an_input(tmp_path, ct, dicom, capsys):
    project = tmp_path / "proj"
    template = write_dicom_series(project / "template", np.zeros((3, 24, 20)), stacked_positions(3, 2.5))
    model = small_model(project / "m.pt")
    before = digest(project)
    for extra in (["--dicom-template", template], ["--dicom-template", dicom, "--model", model]):
        code, _, err = run_cli(["enhance", ct, "-o", project, "--overwrite", *extra, *RUN], capsys)
        assert_refused(code, err, "output folder .*proj would be written into or over the input")
    assert digest(project) == before


def test_overwrite_refuses_a_folder_holding_more_than_one_series(tmp_path, dicom, old_series, capsys, small_ct):
    (old_series / "notes.txt").write_text("mine")
    (old_series / "sub").mkdir()
    before = digest(old_series)
    code, _, err = run_cli(["enhance", dicom, "-o", old_series, "--overwrite", *RUN], capsys)
    assert_refused(code, err, r"replaces only a folder holding one DICOM series.*also holds notes\.txt, sub/")
    (old_series / "notes.txt").unlink()
    (old_series / "sub").rmdir()
    other = write_dicom_series(tmp_path / "other", small_ct[:1], stacked_positions(1, 2.5))
    (other / "img000.dcm").rename(old_series / "other.dcm")  # a slice of another series
    before = digest(old_series)
    code, _, err = run_cli(["enhance", dicom, "-o", old_series, "--overwrite", *RUN], capsys)
    assert_refused(code, err, "also holds 2 DICOM series")
    assert digest(old_series) == before and _left_over(tmp_path) == []


# ---- row 5: staging folders of dead runs recognised and cleaned; an old series moved aside is put back ---------------
def test_stale_staging_folders_are_cleaned_and_an_aside_series_restored(tmp_path, dicom, old_series, capsys):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    staging = tmp_path / f".new.sr4zct-{dead.pid}-3.partial"
    staging.mkdir()
    (staging / "00001.dcm").write_bytes(b"half a series")
    before = digest(old_series)
    aside = tmp_path / f".kept.sr4zct-{dead.pid}-4.old"
    old_series.rename(aside)  # killed between moving the old series aside and placing the new one
    code, _, err = run_cli(["enhance", dicom, "-o", tmp_path / "new", *RUN], capsys)
    assert code == 0, err
    assert not staging.exists() and f"removed {staging}" in err
    assert digest(tmp_path / "kept") == before and "restored" in err
    assert _left_over(tmp_path) == [] and len(_series_uids(tmp_path / "new")) == 1


# ---- row 13: disk full while writing the series: one error line, nothing published, the old series kept -----------
@pytest.mark.skipif(not hasattr(__import__("resource"), "RLIMIT_FSIZE"), reason="needs RLIMIT_FSIZE (POSIX)")
def test_disk_full_while_writing_dicom_is_one_error(tmp_path, dicom, old_series):
    before = digest(old_series)
    run = subprocess.run([sys.executable, "-c", LIMITED_WRITE, "600", "enhance", str(dicom), "-o", str(old_series),
                          "--overwrite", *RUN], capture_output=True, text=True, env=subprocess_env(), timeout=300)
    assert_refused(run.returncode, run.stderr, "writing .*out failed.*No output was published")
    assert digest(old_series) == before and _left_over(tmp_path) == []


# ---- row 14: odd output folders: the current folder, links (to an empty folder, dangling) --------------------------
def test_odd_output_folders_are_refused(tmp_path, dicom, capsys, monkeypatch):
    empty = tmp_path / "empty"
    empty.mkdir()
    (tmp_path / "link").symlink_to(empty)
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    for output, message in (("link", "is a symbolic link"), ("dangling", "is a symbolic link")):
        code, _, err = run_cli(["enhance", dicom, "-o", tmp_path / output, *RUN], capsys)
        assert_refused(code, err, message)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    code, _, err = run_cli(["enhance", dicom, "-o", ".", *RUN], capsys)
    assert_refused(code, err, "is the current folder")
    assert list(empty.iterdir()) == [] and list(work.iterdir()) == [] and _left_over(tmp_path) == []


# ---- row 12: float results (a RescaleSlope 0.5 input, a float volume with a template) verify and publish ------------
@pytest.mark.parametrize("kind", ["slope-half", "float-with-template"])
def test_float_results_publish_as_dicom(tmp_path, small_ct, capsys, kind):
    rng = np.random.default_rng(0)
    values = rng.normal(-550, 200, small_ct.shape).astype(np.float32)
    if kind == "slope-half":
        source = write_dicom_series(tmp_path / "src", values, stacked_positions(6, 2.5), thickness=2.5)
        for path in source.iterdir():
            ds = pydicom.dcmread(str(path))
            ds.RescaleSlope = 0.5
            ds.save_as(str(path))
        extra = []
    else:
        from SR4ZCTLib.io.volumes import write_volume

        source = write_volume(Volume(values + np.float32(0.3), MATRIX), tmp_path / "f.nrrd")
        extra = ["--dicom-template", write_dicom_series(tmp_path / "t", small_ct[:2], stacked_positions(2, 2.5))]
    code, _, err = run_cli(["enhance", source, "-o", tmp_path / "out", *extra, *RUN], capsys)
    assert code == 0, err
    assert len(_series_uids(tmp_path / "out")) == 1 and _left_over(tmp_path) == []


# ---- row 9: --axis across the DICOM slices: --thickness required, with a warning; no mislabelled DICOM series -------
def test_axis_across_the_dicom_slices(tmp_path, dicom, capsys):
    bare = ["--iterations", "2", "--device", "cpu", "--progress", "none"]
    code, _, err = run_cli(["enhance", dicom, "-o", tmp_path / "o.nrrd", "--axis", "i", *bare], capsys)
    assert_refused(code, err, "--axis i crosses the DICOM slices .*give --thickness")
    code, _, err = run_cli(["enhance", dicom, "-o", tmp_path / "out", "--axis", "i", *bare, "--thickness", "1.4"], capsys)
    assert_refused(code, err, "--axis i crosses the DICOM slices: a derived series .*write a volume file")
    assert not (tmp_path / "o.nrrd").exists() and not (tmp_path / "out").exists()
    code, _, err = run_cli(["enhance", dicom, "-o", tmp_path / "o.nrrd", "--axis", "i", *bare, "--thickness", "1.4",
                            "--increment", "0.8"], capsys)
    assert code == 0, err
    assert "warning: --axis i crosses the DICOM slices (stacked along k); using --thickness 1.4 mm" in err


# ---- row 20: the hints of DICOM output: a missing input, a template given as a file, a name with a dot -------------
def test_dicom_output_hints(tmp_path, ct, dicom, capsys):
    code, _, err = run_cli(["enhance", tmp_path / "missing.nrrd", "-o", tmp_path / "out", *RUN], capsys)
    assert_refused(code, err, "input .*missing.nrrd does not exist")
    code, _, err = run_cli(["enhance", ct, "-o", tmp_path / "out", "--dicom-template", next(dicom.iterdir()), *RUN],
                           capsys)
    assert_refused(code, err, "--dicom-template .* is a file; give the folder of a DICOM series")
    code, _, err = run_cli(["enhance", ct, "-o", tmp_path / "out.v2", *RUN], capsys)
    assert_refused(code, err, "unknown type; .*--format dicom")
    assert _left_over(tmp_path) == [] and not (tmp_path / "out").exists()


def test_positions_rounded_to_four_decimals_are_not_a_gap():
    from SR4ZCTLib.core.acquisition import Acquisition

    rounded = Acquisition(2.49996, 2.5)  # a DICOM header's numbers, rounded to 4 decimals: contiguous slices
    assert rounded.warnings_for(0.7) == [] and "gap" not in rounded.describe()
    assert "gap of 0.01 mm" in Acquisition(2.49, 2.5).warnings_for(0.7)[0]  # a real gap is still told
