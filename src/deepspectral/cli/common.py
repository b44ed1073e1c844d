"""What every command shares: exit statuses, the one error reporter, usage errors, the
help formatter and the exit status of a batch."""

from __future__ import annotations

import argparse
import sys
from typing import Callable

__all__ = [
    "EXIT_OK",
    "EXIT_FAILED",
    "EXIT_USAGE",
    "EXIT_INTERRUPTED",
    "UsageError",
    "report_error",
    "batch_status",
    "HelpFormatter",
]

#: Exit statuses: all done / some images (or downloads) failed (listed in OUT/errors.json) / bad
#: arguments or setup (as argparse uses) / Ctrl-C (128 + SIGINT).
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class UsageError(Exception):
    """A problem with the command's arguments or setup: reported in one line, exit 2."""


def report_error(message: str) -> None:
    """Print ``deepspectral: error: MESSAGE`` to stderr."""
    print(f"deepspectral: error: {message}", file=sys.stderr)


def batch_status(run: Callable, *, interrupted: str = "interrupted (rerun the same command to resume)") -> int:
    """Exit status of a batch: ``run()`` returns an object with a ``failed`` count.

    0 when every image was done, 1 when some failed, 2 when a
    :class:`~deepspectral.errors.SetupError` (e.g. the weights cannot be had), an
    ``ImportError`` (a missing optional dependency) or a :class:`UsageError` stopped it,
    130 on Ctrl-C; the message is printed by :func:`report_error`.
    """
    from ..errors import FATAL_ERRORS

    try:
        summary = run()
    except (*FATAL_ERRORS, UsageError) as error:
        report_error(str(error))
        return EXIT_USAGE
    except KeyboardInterrupt:
        report_error(interrupted)
        return EXIT_INTERRUPTED
    return EXIT_FAILED if summary.failed else EXIT_OK


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Show ``(default: ...)`` for options with a real default (not for flags / None)."""

    def _get_help_string(self, action):
        if action.default is None or isinstance(action.default, bool):
            return action.help
        return super()._get_help_string(action)
