"""`sr4zct send`: a DICOM series folder to a PACS by C-STORE (io/send.py); the files always stay."""

from __future__ import annotations

import argparse

from .common import Console


def register(commands) -> None:
    """Add `send DIR --to AET@HOST:PORT [--calling-aet NAME]`."""
    from ..io.send import DEFAULT_CALLING_AET

    send = commands.add_parser("send", help="send a DICOM series folder to a PACS (C-STORE)")
    send.add_argument("folder", help="DICOM series folder (e.g. written by `sr4zct enhance --format dicom`)")
    send.add_argument("--to", required=True, help="destination AET@HOST:PORT, e.g. ORTHANC@localhost:4242")
    send.add_argument("--calling-aet", default=DEFAULT_CALLING_AET, help=f"our AE title (default {DEFAULT_CALLING_AET})")
    send.set_defaults(handler=run_send)


def run_send(args: argparse.Namespace, console: Console) -> int:
    from ..io.send import check_calling_aet, parse_destination, send_series

    destination = parse_destination(args.to)
    count = send_series(args.folder, destination, check_calling_aet(args.calling_aet))
    print(f"sent {count} files from {args.folder} to {destination}")
    return 0
