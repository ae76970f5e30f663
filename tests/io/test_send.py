"""Sending to a real PACS: Orthanc (Debian package `orthanc`) started per test on loopback ports.

Orthanc gets a configuration written into tmp_path: its own storage, DICOM and HTTP ports, AE title
checking on, only our calling AE title from 127.0.0.1 allowed to store, remote HTTP access off.
The tests send, then ask Orthanc's REST API what arrived.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pydicom
import pytest

from SR4ZCTLib.errors import InputError
from SR4ZCTLib.io.send import parse_destination

from conftest import run_cli, stacked_positions, write_dicom_series

ORTHANC = shutil.which("Orthanc")
PACS_AET, OUR_AET = "SR4ZCTPACS", "SR4ZCTTEST"
RUN = ["--iterations", "2", "--device", "cpu", "--progress", "none"]
STARTUP_S = 30.0
needs_orthanc = pytest.mark.skipif(ORTHANC is None, reason="Orthanc not installed (Debian package orthanc; "
                                   ".ci/run installs it with apt-get where it can)")


_GIVEN: set[int] = set()


def free_port() -> int:
    """A loopback port nothing listens on, never the same one twice in a session."""
    while True:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        if port not in _GIVEN:
            _GIVEN.add(port)
            return port


class OrthancServer:
    def __init__(self, dicom_port: int, http_port: int) -> None:
        self.dicom_port, self.http_port = dicom_port, http_port

    def get(self, path: str):
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}{path}", timeout=10) as response:
            return json.loads(response.read())

    def series(self) -> list[dict]:
        return [self.get(f"/series/{uid}") for uid in self.get("/series")]


@pytest.fixture
def orthanc(tmp_path):
    """A fresh Orthanc on free loopback ports; stopped (then killed if it must be) after the test."""
    if ORTHANC is None:
        pytest.skip("Orthanc not installed (Debian package orthanc)")
    dicom_port, http_port = free_port(), free_port()
    storage = tmp_path / "orthanc-storage"
    config = {
        "Name": "sr4zct-test", "StorageDirectory": str(storage), "IndexDirectory": str(storage),
        "DicomAet": PACS_AET, "DicomPort": dicom_port, "HttpPort": http_port, "DicomServerEnabled": True,
        "RemoteAccessAllowed": False, "AuthenticationEnabled": False, "HttpsVerifyPeers": False,
        "DicomCheckCalledAet": True, "DicomAlwaysAllowStore": False, "DicomCheckModalityHost": True,
        "DicomModalities": {"sr4zct": [OUR_AET, "127.0.0.1", 104]}, "Plugins": [], "ConcurrentJobs": 1,
        "HttpThreadsCount": 4, "SaveJobs": False, "StableAge": 1,
    }
    config_path = tmp_path / "orthanc.json"
    config_path.write_text(json.dumps(config))
    log = open(tmp_path / "orthanc.log", "w")
    process = subprocess.Popen([ORTHANC, str(config_path)], stdout=log, stderr=subprocess.STDOUT)
    server = OrthancServer(dicom_port, http_port)
    try:
        deadline = time.monotonic() + STARTUP_S
        while True:
            try:
                server.get("/system")
                break
            except (urllib.error.URLError, ConnectionError, OSError):
                if process.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"Orthanc did not start: {(tmp_path / 'orthanc.log').read_text()[-2000:]}")
                time.sleep(0.2)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)
        log.close()


@pytest.fixture
def source(tmp_path, small_ct) -> Path:
    return write_dicom_series(tmp_path / "source", small_ct, stacked_positions(6, 2.5), thickness=2.5)


@needs_orthanc
def test_enhance_send_stores_the_series_in_orthanc(tmp_path, source, orthanc, capsys):
    output = tmp_path / "series"
    code, out, err = run_cli(["enhance", source, "-o", output, "--send", f"{PACS_AET}@127.0.0.1:{orthanc.dicom_port}",
                              "--calling-aet", OUR_AET, *RUN], capsys)
    assert code == 0, err
    assert "sent 16 files" in out
    series = orthanc.series()
    assert len(series) == 1 and len(series[0]["Instances"]) == 16
    tags = series[0]["MainDicomTags"]
    written = pydicom.dcmread(str(sorted(output.iterdir())[0]))
    assert tags["SeriesInstanceUID"] == written.SeriesInstanceUID
    assert "SR4ZCT" in tags["SeriesDescription"] and tags["Modality"] == "CT"
    study = orthanc.get(f"/studies/{series[0]['ParentStudy']}")
    assert study["MainDicomTags"]["StudyInstanceUID"] == pydicom.dcmread(str(next(source.iterdir()))).StudyInstanceUID
    instance = orthanc.get(f"/instances/{series[0]['Instances'][0]}/simplified-tags")
    assert instance["ImageType"].startswith("DERIVED\\SECONDARY")
    assert len(list(output.iterdir())) == 16  # the files stay


@needs_orthanc
def test_send_command_then_the_pacs_holds_every_instance(tmp_path, source, orthanc, capsys):
    code, out, err = run_cli(["send", source, "--to", f"{PACS_AET}@localhost:{orthanc.dicom_port}",
                              "--calling-aet", OUR_AET], capsys)
    assert code == 0, err
    assert [len(s["Instances"]) for s in orthanc.series()] == [6]


@needs_orthanc
@pytest.mark.parametrize("case", ["wrong-called-aet", "unknown-calling-aet", "pacs-down"])
def test_send_failures_give_one_error_line_and_keep_the_files(tmp_path, source, orthanc, capsys, case):
    called, calling, port = PACS_AET, OUR_AET, orthanc.dicom_port
    if case == "wrong-called-aet":
        called, message = "NOTTHEPACS", "called AE title 'NOTTHEPACS'"  # Orthanc rejects or aborts: either names it
    elif case == "unknown-calling-aet":
        calling, message = "STRANGER", "accepts storage from 'STRANGER'"
    else:
        port, message = free_port(), "nothing answers"  # nothing listens there
    before = sorted(p.name for p in source.iterdir())
    code, out, err = run_cli(["send", source, "--to", f"{called}@127.0.0.1:{port}", "--calling-aet", calling], capsys)
    assert code == 2 and err.startswith("error:") and len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err and message in err, err
    assert sorted(p.name for p in source.iterdir()) == before
    assert orthanc.series() == [] or [len(s["Instances"]) for s in orthanc.series()] == [0]


@needs_orthanc
def test_enhance_send_failure_keeps_the_written_series(tmp_path, source, capsys):
    output = tmp_path / "series"
    code, _, err = run_cli(["enhance", source, "-o", output, "--send", f"PACS@127.0.0.1:{free_port()}", *RUN], capsys)
    assert code == 2 and err.startswith("error:") and "stays in" in err, err
    assert len(list(output.iterdir())) == 16


@pytest.mark.parametrize("text", ["ORTHANC@localhost", "localhost:4242", "@host:1", "A@host:0", "A@host:99999",
                                  "WAYTOOLONGAETITLE17@h:1", "A\\B@h:1"])
def test_bad_destinations_are_refused(text):
    with pytest.raises(InputError, match="AET@HOST:PORT"):
        parse_destination(text)


def test_send_needs_dicom_output_and_is_checked_before_the_run(tmp_path, source, capsys):
    code, _, err = run_cli(["enhance", source, "-o", tmp_path / "o.nrrd", "--send", "A@h:1", *RUN], capsys)
    assert code == 2 and "--send needs DICOM output" in err and not (tmp_path / "o.nrrd").exists()
    code, _, err = run_cli(["enhance", source, "-o", tmp_path / "series", "--send", "nonsense", *RUN], capsys)
    assert code == 2 and "AET@HOST:PORT" in err and not (tmp_path / "series").exists()
