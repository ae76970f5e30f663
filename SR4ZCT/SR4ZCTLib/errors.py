"""Exceptions the user sees: a problem with the input and its fix, or a cancelled run."""

from __future__ import annotations

from typing import Optional


class InputError(ValueError):
    """Bad input or parameters. The message names the problem and what to do about it."""


class Cancelled(BaseException):
    """The user cancelled the run; `kept` says what stays (by default: nothing was written).

    A BaseException, as KeyboardInterrupt is: no `except Exception` on the way (a reader's, a verifier's) can turn a
    cancel into a different error."""

    def __init__(self, message: str = "cancelled", kept: str = "nothing was written") -> None:
        super().__init__(message)
        self.kept = kept


class ResourceError(RuntimeError):
    """Not enough memory (host or GPU) for the job; the message gives the figure and the fix."""


_requested: Optional[str] = None  # a cancel asked for by a signal, until the command ends


def request_cancel(message: str = "terminated") -> Cancelled:
    """Remember a cancel (from a signal handler) and return it to raise. Remembered, because Python can swallow an
    exception raised in a handler (a finaliser running at that moment; a library turning it into OSError), so the
    next check_cancelled raises it again."""
    global _requested
    _requested = message
    return Cancelled(message)


def check_cancelled() -> None:
    """Raise Cancelled if a cancel was requested and not yet cleared."""
    if _requested is not None:
        raise Cancelled(_requested)


def clear_cancel() -> None:
    """Forget a requested cancel (a command's start and end)."""
    global _requested
    _requested = None
