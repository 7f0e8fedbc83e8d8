"""The user-facing error classes.

A ``DyconvError`` is a problem with the user's input or environment: the CLI prints its
message as one line on stderr and exits with ``exit_code`` (2), without a traceback unless
``-v`` is given. Anything else is a bug and always shows its traceback.
"""


class DyconvError(Exception):
    """Bad input or environment; the message says what is wrong and what to do."""

    exit_code = 2


class MissingDependency(DyconvError):
    """An optional package (tensorrt, matplotlib, ...) is needed but not installed."""


class VerificationError(DyconvError):
    """Outputs differ from the reference by more than the tolerance."""

    exit_code = 1
