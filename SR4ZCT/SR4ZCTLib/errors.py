"""Exceptions the user sees: a problem with the input and its fix, or a cancelled run."""


class InputError(ValueError):
    """Bad input or parameters. The message names the problem and what to do about it."""


class Cancelled(Exception):
    """The user cancelled the run; nothing was written."""


class ResourceError(RuntimeError):
    """Not enough memory (host or GPU) for the job; the message gives the figure and the fix."""
