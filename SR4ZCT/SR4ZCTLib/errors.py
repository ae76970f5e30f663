"""Exceptions the user sees: a problem with the input and its fix, or a cancelled run."""


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
