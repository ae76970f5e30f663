"""Reliability table, send (issue 17): a cancel during `enhance --send` says the series was written and stays (row 19).

Each case checks the exit code, the one message line, and that the written series is kept whole."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys

from reliability import FAST, dicom, subprocess_env  # noqa: F401 (fixtures among them)


def test_sigterm_while_sending_says_the_series_stays(tmp_path, dicom):
    silent = socket.socket()  # a PACS that accepts the connection and never answers the association request
    silent.bind(("127.0.0.1", 0))
    silent.listen(1)
    port = silent.getsockname()[1]
    try:
        process = subprocess.Popen([sys.executable, "-m", "SR4ZCTLib.cli", "enhance", str(dicom), "-o",
                                    str(tmp_path / "out"), "--send", f"PACS@127.0.0.1:{port}", "--progress", "none",
                                    *FAST], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                   env=subprocess_env())
        assert process.stdout.readline().startswith("wrote")  # the series is published; the send begins
        connection, _ = silent.accept()
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=60)
        connection.close()
    finally:
        silent.close()
    assert process.returncode == 130, err
    assert f"cancelled: the series was written and stays in {tmp_path / 'out'}" in err and "sr4zct send" in err, err
    assert "nothing was written" not in err and len(list((tmp_path / "out").iterdir())) > 0
