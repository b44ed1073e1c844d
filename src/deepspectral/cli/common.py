"""What every command shares: exit statuses, the one error reporter, usage errors, the
help formatter and the exit status of a batch.

The contract of every command (also in the README):

- 0: all done;
- 1: some images failed (each named in ``OUT/errors.json``, the rest complete), or an
  output could not be written mid-run (a full disk: said in one line);
- 2: bad arguments, an unusable output or cache folder, or the backbone unavailable —
  said in one line before any work;
- 130: interrupted (Ctrl-C); rerunning the command resumes;
- 70: a bug in deepspectral: the only case with a traceback, with a line asking to
  report it.
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable

__all__ = [
    "EXIT_OK",
    "EXIT_FAILED",
    "EXIT_USAGE",
    "EXIT_INTERRUPTED",
    "EXIT_BUG",
    "UsageError",
    "report_error",
    "batch_status",
    "report_bug",
    "HelpFormatter",
]

#: Exit statuses: all done / some images (or downloads) failed (listed in OUT/errors.json) / bad
#: arguments or setup (as argparse uses) / Ctrl-C (128 + SIGINT) / a bug (sysexits' EX_SOFTWARE).
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
EXIT_BUG = 70
#: Where bugs are reported.
ISSUES_URL = "https://github.com/deepspectral/deepspectral/issues"


class UsageError(Exception):
    """A problem with the command's arguments or setup: reported in one line, exit 2."""


def report_error(message: str) -> None:
    """Print ``deepspectral: error: MESSAGE`` to stderr."""
    print(f"deepspectral: error: {message}", file=sys.stderr)


def batch_status(run: Callable, *, interrupted: str = "interrupted (rerun the same command to resume)") -> int:
    """Exit status of a batch: ``run()`` returns an object with a ``failed`` count.

    0 when every image was done, 1 when some failed or an output of the whole run (e.g.
    ``boxes.json``) could not be written (``OSError``: a full disk, a folder made
    read-only mid-run), 2 when a :class:`~deepspectral.errors.SetupError` (e.g. the
    weights cannot be had), an ``ImportError`` (a missing optional dependency) or a
    :class:`UsageError` stopped it, 130 on Ctrl-C; the message is printed by
    :func:`report_error`.
    """
    from ..errors import FATAL_ERRORS, describe_os_error

    try:
        summary = run()
    except (*FATAL_ERRORS, UsageError) as error:
        report_error(str(error))
        return EXIT_USAGE
    except KeyboardInterrupt:
        report_error(interrupted)
        return EXIT_INTERRUPTED
    except OSError as error:
        report_error(describe_os_error(error))
        return EXIT_FAILED
    return EXIT_FAILED if summary.failed else EXIT_OK


def report_bug() -> None:
    """Print the traceback of the exception being handled and ask to report it."""
    import traceback

    from .._version import __version__

    traceback.print_exc()
    report_error(
        f"this is a bug in deepspectral {__version__}; please report it at {ISSUES_URL} "
        "with the command you ran and the traceback above"
    )


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Show ``(default: ...)`` for options with a real default (not for flags / None)."""

    def _get_help_string(self, action):
        if action.default is None or isinstance(action.default, bool):
            return action.help
        return super()._get_help_string(action)
