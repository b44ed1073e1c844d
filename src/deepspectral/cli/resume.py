"""Which images a rerun skips: the run record of an output folder.

A command that writes files per image (``eigs``, ``segment``, ``matte``) writes
``OUT/.deepspectral-run.json`` before its first image: the command, every option that
changes an output, the backbone's weights and the library version. A rerun with the
same record skips each image whose output files all exist and are newer than the record
(written by a run with these settings, whole: every file is written atomically); a rerun
with other settings — or ``--overwrite`` — writes a new record, so every older output is
recomputed, even when that run is killed and resumed in turn.

With ``-o URL`` (:mod:`deepspectral.cli.outputs`) the record is the one at the URL
(``URL/.deepspectral-run.json``) and the URL is listed once: an image is skipped when each of
its output files is there, modified after the record (times as the store records them, and
strictly after: a store that keeps whole seconds recomputes rather than keep a stale file).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Callable

from .._version import __version__

__all__ = ["RUN_RECORD", "NEUTRAL_OPTIONS", "add_overwrite", "finished_outputs"]

#: The run record, in the output folder.
RUN_RECORD = ".deepspectral-run.json"
#: Options that never change an output file (left out of the run record): where inputs and
#: outputs are, the progress display, and the speed / caching / cluster knobs (tested to
#: give byte-identical outputs).
NEUTRAL_OPTIONS = frozenset(
    {"inputs", "out", "quiet", "batch_size", "workers", "cache", "no_cache", "overwrite", "run",
     "engine", "ray_address", "ray_actors", "out_url"}
)  # fmt: skip


def add_overwrite(parser: argparse.ArgumentParser) -> None:
    """``--overwrite``: recompute the outputs a rerun would skip."""
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="recompute and rewrite every output (default: a rerun with the same settings skips "
        "the images whose outputs it finished)",
    )


def _record(args: argparse.Namespace, command: str, weights_id: str) -> dict:
    options = {
        name: (str(value) if isinstance(value, Path) else value)
        for name, value in sorted(vars(args).items())
        if name not in NEUTRAL_OPTIONS and not callable(value)
    }
    return {"command": command, "options": options, "weights": weights_id, "version": __version__}


def finished_outputs(
    args: argparse.Namespace, command: str, outputs: Callable[[object], list[Path]], *, weights_id: str
) -> Callable[[object], bool]:
    """Write the run record of ``args.out`` when it changed and return ``skip(item)``: true
    when every file of ``outputs(item)`` exists and is newer than the record.

    Parameters
    ----------
    args : argparse.Namespace
        The command's options (``args.out`` the output folder, ``args.overwrite``;
        ``args.out_url`` with ``-o URL``: then the record and the outputs are those at the URL).
    command : str
        Name of the command (part of the record).
    outputs : callable
        The output files of one item.
    weights_id : str
        Identity of the backbone's weights (e.g. ``Engine.feature_settings()["weights"]``).

    Returns
    -------
    callable
        ``skip(item)``; its ``refresh()`` looks again (at a URL: lists it again) after a run,
        to tell which images are finished now.
    """
    from ..files import atomic_write_json

    path = args.out / RUN_RECORD
    record = json.loads(json.dumps(_record(args, command, weights_id), default=str))
    folder = getattr(args, "out_url", None)
    if folder is not None:
        return _FinishedAtUrl(args, folder, record, outputs)
    try:
        previous = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        previous = None
    if args.overwrite or previous != record:
        atomic_write_json(path, record)
    since = path.stat().st_mtime_ns

    def skip(item) -> bool:
        try:
            return all(output.stat().st_mtime_ns >= since for output in outputs(item))
        except FileNotFoundError:
            return False

    skip.refresh = lambda: None  # type: ignore[attr-defined]
    return skip


class _FinishedAtUrl:
    """``skip(item)`` for an output folder at a URL: the record there is compared (and
    rewritten, staged then uploaded, when it changed); the URL is listed once, lazily."""

    def __init__(self, args: argparse.Namespace, folder, record: dict, outputs: Callable) -> None:
        from ..files import atomic_write_json

        self.folder = folder
        self.outputs = outputs
        try:
            previous = json.loads(folder.read_bytes(RUN_RECORD) or b"null")
        except ValueError:
            previous = None
        self.times: dict | None = None
        self.listed = False
        if args.overwrite or previous != record:
            folder.upload([atomic_write_json(args.out / RUN_RECORD, record)])
            self.times = {}  # a new record: nothing is finished yet (no listing needed)
            self.listed = True  # (a later listing may come while uploads run: it removes nothing)

    def refresh(self) -> None:
        self.times = None

    def __call__(self, item) -> bool:
        if self.times is None:  # the first listing comes before any upload of this run
            self.times = self.folder.modified_times(remove_temporary=not self.listed)
            self.listed = True
        since = self.times.get(RUN_RECORD)
        if since is None:
            return False
        for output in self.outputs(item):
            modified = self.times.get(self.folder.relative(output))
            if modified is None or modified <= since:
                return False
        return True
