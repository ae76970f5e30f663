"""The `sr4zct` command line: info, enhance, simulate, demo, send, batch.

Errors: one `error:` line on stderr, exit 2. Cancel (Ctrl-C, SIGTERM or SIGHUP): exit 130. Either way
nothing is left behind: every output path is checked before any work, and every output is staged,
verified and published together at the end (io/publish.py).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import warnings
from typing import Optional

from .. import __version__
from ..errors import Cancelled, InputError, ResourceError, clear_cancel, request_cancel
from . import batch, enhance, send, volumes
from .common import EXIT_BROKEN_PIPE, EXIT_CANCELLED, EXIT_ERROR, Console, Parser

CANCEL_SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name))


def build_parser() -> argparse.ArgumentParser:
    """Every command; each module registers its own family."""
    parser = Parser(prog="sr4zct", description="Self-supervised through-plane resolution enhancement for thick-slice CT.")
    parser.add_argument("--version", action="version", version=f"sr4zct {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    volumes.register_info(commands)
    enhance.register_enhance(commands)
    volumes.register_simulate(commands)
    enhance.register_demo(commands)
    send.register(commands)
    batch.register(commands)
    return parser


def _raise_cancelled(signum, frame) -> None:
    raise request_cancel("terminated")  # remembered: raised again at the next check if Python swallows this one


def main(argv: Optional[list[str]] = None) -> int:
    """Entry point of `sr4zct`; returns the exit code (0, 2 on bad input, 130 when cancelled)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_request:  # --help, or a usage error already printed as one `error:` line
        return int(exit_request.code or 0)
    previous: dict = {}
    clear_cancel()
    for number in CANCEL_SIGNALS:  # terminal closed (SIGHUP) or kill: cancel like Ctrl-C
        try:
            previous[number] = signal.signal(number, _raise_cancelled)
        except ValueError:  # not the main thread (e.g. called from a test runner thread)
            pass
    console = Console(getattr(args, "progress", "bar"))
    try:
        with warnings.catch_warnings():  # Python warnings as the command's own warning lines (JSON objects too)
            warnings.showwarning = lambda message, *rest, **kw: console.warn([str(message)])
            code = int(args.handler(args, console) or 0)
        sys.stdout.flush()  # a closed pipe shows here, not at exit
        return code
    except (InputError, ResourceError) as error:
        sys.stderr.write(f"error: {error}\n")
        return EXIT_ERROR
    except (KeyboardInterrupt, Cancelled) as cancel:
        sys.stderr.write(f"cancelled: {getattr(cancel, 'kept', 'nothing was written')}\n")
        return EXIT_CANCELLED
    except BrokenPipeError:  # the reader went away (`sr4zct info --json X | head -1`): stop quietly
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
        clear_cancel()
