"""The exceptions that decide what a batch does when something goes wrong.

A dataset run processes images one by one; a per-image failure (an unreadable file, an
image too small or too large, out of memory: ``ValueError``, ``OSError``, ``RuntimeError``,
``MemoryError``, ``EOFError``) is recorded and the run goes on. A :class:`SetupError`
concerns every image alike (the backbone's weights cannot be had, an optional dependency
is missing), so it stops the run, as do ``ImportError`` and ``KeyboardInterrupt``.
"""

from __future__ import annotations

__all__ = ["SetupError", "PER_IMAGE_ERRORS", "FATAL_ERRORS", "describe_error", "describe_os_error"]


class SetupError(RuntimeError):
    """A problem that concerns every image alike: reported once, it stops the batch."""


#: Per-image errors: recorded (``errors.json``) and skipped; anything else is a bug and raises.
PER_IMAGE_ERRORS: tuple[type[BaseException], ...] = (ValueError, OSError, RuntimeError, MemoryError, EOFError)
#: Errors that stop a batch (checked before :data:`PER_IMAGE_ERRORS`: a SetupError is a RuntimeError).
FATAL_ERRORS: tuple[type[BaseException], ...] = (SetupError, ImportError)


def describe_error(error: BaseException) -> str:
    """One line: ``TypeName: message``."""
    message = str(error).strip() or "(no message)"
    return f"{type(error).__name__}: {message}"


def describe_os_error(error: OSError) -> str:
    """One line for a file-system error, naming the file: ``'out/boxes.json': No space left
    on device``."""
    reason = error.strerror or str(error).strip() or type(error).__name__
    if error.filename is not None:
        return f"'{error.filename}': {reason}"
    return reason
