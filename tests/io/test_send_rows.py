"""Reliability table, send (issue 17): DICOMDIR and odd files, presentation contexts, ASCII AE titles (row 15); a
cancel during `enhance --send` says the series was written and stays (row 19).

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


# ---- row 15: a DICOMDIR, a file without SOPClassUID, a file no context fits, a non-ASCII calling AE title -----------
def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _dicomdir_like(path):
    from pydicom.dataset import FileDataset, FileMetaDataset

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = "1.2.840.10008.1.3.10", "1.2.3.4.5.6"
    meta.TransferSyntaxUID = "1.2.840.10008.1.2.1"
    FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128).save_as(str(path), enforce_file_format=True)


def test_a_dicomdir_is_left_out_and_a_file_without_sop_class_refused(tmp_path, dicom, capsys):
    from reliability import assert_refused, run_cli

    _dicomdir_like(dicom / "DICOMDIR")
    code, _, err = run_cli(["send", dicom, "--to", f"PACS@127.0.0.1:{_free_port()}"], capsys)
    assert_refused(code, err, "nothing answers")  # the DICOMDIR was not the problem: the (absent) PACS was
    (dicom / "DICOMDIR").rename(dicom / "odd.dcm")
    import pydicom

    ds = pydicom.dcmread(str(dicom / "odd.dcm"))
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.save_as(str(dicom / "odd.dcm"))
    code, _, err = run_cli(["send", dicom, "--to", f"PACS@127.0.0.1:{_free_port()}"], capsys)
    assert_refused(code, err, "odd.dcm in .* has no SOPClassUID.*move it out of the folder")


def test_a_compressed_file_is_offered_in_its_own_syntax(tmp_path, dicom, capsys):
    import pydicom
    from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian
    from pynetdicom import AE, evt
    from pynetdicom.sop_class import CTImageStorage

    from reliability import run_cli

    first = sorted(dicom.iterdir())[0]
    ds = pydicom.dcmread(str(first))
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian  # a compressed file
    ds.save_as(str(first), enforce_file_format=True)
    scp = AE(ae_title="PACS")
    scp.add_supported_context(CTImageStorage, [ExplicitVRLittleEndian])  # uncompressed only
    port = _free_port()
    server = scp.start_server(("127.0.0.1", port), block=False,
                              evt_handlers=[(evt.EVT_C_STORE, lambda event: 0x0000)])
    try:
        code, _, err = run_cli(["send", dicom, "--to", f"PACS@127.0.0.1:{port}"], capsys)
    finally:
        server.shutdown()
    assert code == 0 and "Traceback" not in err, err  # offered as it is: pynetdicom sends it in an accepted context


def test_a_non_ascii_calling_ae_title_is_refused_before_the_run(tmp_path, dicom, capsys):
    from reliability import assert_refused, run_cli

    code, _, err = run_cli(["enhance", dicom, "-o", tmp_path / "out", "--send", f"PACS@127.0.0.1:{_free_port()}",
                            "--calling-aet", "SR4ZCTé", "--progress", "json", *FAST], capsys)
    assert_refused(code, err, "calling AE title 'SR4ZCTé' is not valid; use at most 16 ASCII")
    assert '"training"' not in err and not (tmp_path / "out").exists()
    code, _, err = run_cli(["send", dicom, "--to", "PACSé@127.0.0.1:104"], capsys)
    assert_refused(code, err, "is not a DICOM destination.*ASCII")


def test_a_compressed_file_no_context_fits_is_one_error_naming_it(tmp_path, dicom, capsys):
    import pydicom
    from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, RLELossless
    from pynetdicom import AE, evt
    from pynetdicom.sop_class import CTImageStorage

    from reliability import assert_refused, digest, run_cli

    last = sorted(dicom.iterdir())[-1]
    ds = pydicom.dcmread(str(last))
    ds.compress(RLELossless)  # compressed pixel data: cannot be re-encoded into an uncompressed context
    ds.save_as(str(last), enforce_file_format=True)
    before = digest(dicom)
    stored: list[str] = []
    scp = AE(ae_title="PACS")
    scp.add_supported_context(CTImageStorage, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])  # uncompressed only
    port = _free_port()

    def store(event):
        stored.append(str(event.request.AffectedSOPInstanceUID))
        return 0x0000

    server = scp.start_server(("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, store)])
    try:
        code, _, err = run_cli(["send", dicom, "--to", f"PACS@127.0.0.1:{port}"], capsys)
    finally:
        server.shutdown()
    count = len(list(dicom.iterdir()))
    assert_refused(code, err, f"accepts no presentation context for {last.name} .*RLE|accepts no presentation context "
                              f"for {last.name} .*1.2.840.10008.1.2.5")
    assert f"{count - 1} of {count} stored: decompress the file or configure the PACS" in err, err
    assert len(stored) == count - 1 and digest(dicom) == before  # the others stored, every file kept as it was
