"""Send a DICOM series folder to a PACS with C-STORE (pynetdicom); the files always stay on disk."""

from __future__ import annotations

import os
import re
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from ..errors import Cancelled, InputError
from .dicom import has_dicm_preamble

DEFAULT_CALLING_AET = "SR4ZCT"
DESTINATION = re.compile(r"^(?P<aet>[^@]{1,16})@(?P<host>[^:@]+|\[[0-9a-fA-F:]+\]):(?P<port>\d{1,5})$")
TIMEOUT_S = 30.0


class SendError(InputError):
    """The PACS could not be reached, refused the association or rejected files; reported as an `error:` line."""


@dataclass(frozen=True)
class Destination:
    """A DICOM node: called AE title, host and port."""

    aet: str
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.aet}@{self.host}:{self.port}"


def parse_destination(text: str) -> Destination:
    """AET@HOST:PORT, e.g. ORTHANC@pacs.example.org:4242."""
    match = DESTINATION.match(text.strip())
    if not match or not 0 < int(match["port"]) < 65536 or not _valid_aet(match["aet"]):
        raise InputError(f"{text!r} is not a DICOM destination; write AET@HOST:PORT, e.g. ORTHANC@localhost:4242 "
                         "(AE title: at most 16 ASCII characters, no backslash)")
    return Destination(match["aet"], match["host"].strip("[]"), int(match["port"]))


def check_calling_aet(aet: str) -> str:
    if not _valid_aet(aet):
        raise InputError(f"calling AE title {aet!r} is not valid; use at most 16 ASCII characters, no backslash")
    return aet


def _valid_aet(aet: str) -> bool:
    """An AE title: 1 to 16 printable ASCII characters (DICOM's default repertoire), no backslash."""
    return 0 < len(aet.strip()) <= 16 and "\\" not in aet and aet.isascii() and aet.isprintable()


def series_files(folder: str | os.PathLike) -> list[Path]:
    """The DICOM files of a folder (those with a DICM preamble), sorted; refuses an empty or missing folder."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder} is not a folder; give the DICOM series folder written by `sr4zct enhance`")
    files = [path for path in sorted(p for p in folder.iterdir() if p.is_file()) if has_dicm_preamble(path)]
    if not files:
        raise InputError(f"no DICOM files in {folder}; give the DICOM series folder written by `sr4zct enhance`")
    return files


def send_series(folder: str | os.PathLike, destination: Destination, calling_aet: str = DEFAULT_CALLING_AET,
                on_file: Optional[Callable[[int, int], None]] = None) -> int:
    """C-STORE every DICOM file of folder in one association; returns the number stored, raises SendError."""
    from pynetdicom import AE
    from pynetdicom.sop_class import CTImageStorage
    from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

    files, datasets = storable_instances(series_files(folder))
    ae = AE(ae_title=calling_aet)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = TIMEOUT_S
    syntaxes: dict[str, set] = {str(CTImageStorage): set()}
    for ds in datasets:  # each file's own transfer syntax too (a compressed file is sent as it is)
        syntaxes.setdefault(str(ds.SOPClassUID), set()).add(str(ds.file_meta.TransferSyntaxUID))
    for sop_class, own in sorted(syntaxes.items()):
        ae.add_requested_context(sop_class, [ExplicitVRLittleEndian, ImplicitVRLittleEndian,
                                             *sorted(own - {ExplicitVRLittleEndian, ImplicitVRLittleEndian})])
    check_reachable(destination)
    try:
        association = ae.associate(destination.host, destination.port, ae_title=destination.aet)
    except Cancelled:
        raise
    except Exception as error:  # e.g. the host name does not resolve
        raise SendError(f"cannot reach {destination}: {error}; check the host and port") from None
    if not association.is_established:
        raise SendError(_refusal(association, destination, calling_aet))
    failed: list[str] = []
    try:
        for index, (path, ds) in enumerate(zip(files, datasets)):
            if not association.is_established:  # the PACS aborted (e.g. it does not accept stores from us)
                raise SendError(f"{destination} ended the association after {index} of {len(files)} files; check that "
                                f"the PACS accepts storage from the calling AE title {calling_aet!r} at this address")
            try:
                status = association.send_c_store(ds)
            except ValueError as error:  # no accepted presentation context for this file's class and syntax
                raise SendError(f"{destination} accepts no presentation context for {path.name} (SOP class "
                                f"{ds.SOPClassUID}, transfer syntax {ds.file_meta.TransferSyntaxUID}: {error}); "
                                f"{index} of {len(files)} stored: decompress the file or configure the PACS") from None
            code = int(status.Status) if status and "Status" in status else None
            if code is None:  # no answer: the PACS dropped us (e.g. it refuses stores from this AE title)
                raise SendError(f"{destination} did not answer the store of {path.name} ({index} of {len(files)} "
                                f"stored); check that the PACS accepts storage from {calling_aet!r} at this address")
            if not (code == 0 or code in (0xB000, 0xB007, 0xB006)):
                failed.append(f"{path.name} (status 0x{code:04X})")
            if on_file is not None:
                on_file(index + 1, len(files))
    except BaseException:
        association.abort()  # a release would wait for a peer that has stopped answering
        raise
    association.release()
    if failed:
        raise SendError(f"{destination} did not store {len(failed)} of {len(files)} files ({', '.join(failed[:3])}); "
                        f"the files stay in {folder}: check the PACS log, then run `sr4zct send` again")
    return len(files)


MEDIA_DIRECTORY = "1.2.840.10008.1.3.10"  # a DICOMDIR: an index of files, not an instance to store


def storable_instances(files: list[Path]) -> tuple[list[Path], list]:
    """The files to C-STORE and their datasets: a DICOMDIR is left out; a file without SOPClassUID/SOPInstanceUID or
    that cannot be read is refused, by name, before anything is sent."""
    import pydicom

    kept, datasets = [], []
    for path in files:
        try:
            ds = pydicom.dcmread(str(path))
        except Exception as error:
            raise InputError(f"{path} cannot be read as DICOM ({error.__class__.__name__}); move it out of the "
                             "folder") from None
        if str(getattr(ds.file_meta, "MediaStorageSOPClassUID", "")) == MEDIA_DIRECTORY:
            continue
        if "SOPClassUID" not in ds or "SOPInstanceUID" not in ds or "TransferSyntaxUID" not in ds.file_meta:
            raise InputError(f"{path.name} in {path.parent} has no SOPClassUID, SOPInstanceUID or transfer syntax: "
                             "not an instance a PACS can store; move it out of the folder")
        kept.append(path)
        datasets.append(ds)
    if not kept:
        raise InputError(f"no DICOM instances to send in {files[0].parent} (only a DICOMDIR); give the series folder")
    return kept, datasets


def check_reachable(destination: Destination) -> None:
    """A plain TCP connection first, so that 'nothing listens there' is told apart from a refused association."""
    try:
        with socket.create_connection((destination.host, destination.port), timeout=TIMEOUT_S):
            pass
    except socket.gaierror as error:
        raise SendError(f"cannot resolve the host of {destination}: {error.strerror}; check the host name") from None
    except OSError as error:
        raise SendError(f"nothing answers at {destination.host}:{destination.port} ({error.strerror or error}); "
                        "check that the PACS is running and the host and port") from None


def _refusal(association, destination: Destination, calling_aet: str) -> str:
    if association.is_rejected:
        return (f"{destination} rejected the association (called AE title {destination.aet!r}, calling AE title "
                f"{calling_aet!r}); check both AE titles and that the PACS knows this sender")
    if association.is_aborted:  # some PACS (Orthanc, under load) abort rather than reject an unknown called AE title
        return (f"{destination} aborted the association (called AE title {destination.aet!r}, calling AE title "
                f"{calling_aet!r}); check both AE titles and the PACS log")
    return f"cannot connect to {destination}: no DICOM service answered; check that the PACS is running, host and port"
