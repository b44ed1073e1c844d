"""Where a dataset command's outputs go: ``-o`` a local folder, or an fsspec URL.

With ``-o URL`` (``eigs``, ``localize``, ``segment``, ``matte``, ``discover``; see
:mod:`deepspectral.remote`) the command runs unchanged on a local staging folder:
:func:`use_url_out` (called by :func:`~deepspectral.cli.options.check_weights_and_out`,
before any work) checks the URL, sets ``args.out`` to the staging folder and
``args.out_url`` to the :class:`~deepspectral.remote.RemoteFolder`; :func:`uploading` wraps
the per-image ``work`` so that each image's files are uploaded once written;
:func:`publishing` uploads the run-level files (``boxes.json``, ``errors.json``...) when
the run ends; :func:`read_outputs` reads back files of earlier runs (``scores.json``,
``discover``'s records) from wherever the outputs are. Without a URL each is a no-op.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Callable

from .common import UsageError

__all__ = ["out_folder", "local_out_folder", "use_url_out", "uploading", "publishing", "read_outputs", "URL_COMMANDS"]

#: The commands that take ``-o`` as a URL.
URL_COMMANDS = ("eigs", "localize", "segment", "matte", "discover")


def out_folder(text: str):
    """An argparse ``type`` for ``-o``: a URL (``scheme://...``) kept as a string, anything
    else a :class:`~pathlib.Path`."""
    from ..data.images import is_url

    return text if is_url(text) else Path(text)


def local_out_folder(text: str) -> Path:
    """An argparse ``type`` for the ``-o`` of commands that write only local folders
    (``eval``, ``semseg predict``): a :class:`~pathlib.Path`; a URL is refused (exit 2)
    rather than taken for a local folder named ``s3:``."""
    from ..data.images import is_url

    if is_url(text):
        raise argparse.ArgumentTypeError(
            f"'{text}': a URL is not supported here (only by {', '.join(URL_COMMANDS)}); give a local folder"
        )
    return Path(text)


def use_url_out(args: argparse.Namespace) -> None:
    """``-o URL``: check that fsspec and the protocol's package are there and that a file
    can be written at the URL, then point ``args.out`` at the local staging folder (and
    ``--cache``, when not given, at the local cache of that URL's runs); a one-line
    :class:`UsageError` otherwise."""
    from ..remote import RemoteFolder, run_folder

    url = args.out
    folder = RemoteFolder(url)
    if folder.protocol == "memory" and getattr(args, "engine", "local") == "ray":
        raise UsageError(
            f"-o: '{url}': memory:// lives in this process and the Ray workers cannot write there; "
            "use a store every machine reaches (s3://, gs://, file:// on a shared file system)"
        )
    try:
        folder.check_writable()
    except ValueError as error:  # fsspec or the protocol's package missing: names the pip install
        raise UsageError(str(error)) from None
    except OSError as error:
        raise UsageError(f"-o: {error} (check the URL, that it exists and the credentials fsspec finds)") from None
    args.out_url = folder
    args.out = folder.staging
    if getattr(args, "cache", None) is None and not getattr(args, "no_cache", False):
        args.cache = run_folder(url) / "cache"


def uploading(args: argparse.Namespace, work: Callable) -> Callable:
    """``work`` itself, or with ``-o URL`` ``work`` followed by the upload of the files it
    wrote (:class:`~deepspectral.remote.UploadingWork`)."""
    folder = getattr(args, "out_url", None)
    if folder is None:
        return work
    from ..remote import UploadingWork

    return UploadingWork(work, folder)


def publishing(args: argparse.Namespace, run: Callable, files: tuple = (), *, desc: str):
    """``run()`` (a command's batch), then with ``-o URL`` the upload of its run-level
    ``files`` (names in the output folder) and of ``errors.json`` (or its removal from the
    URL when nothing failed). When ``run`` raised (Ctrl-C, a setup error), the ``files``
    written are uploaded all the same and the error goes on."""
    from ..engine import ERRORS_FILE

    folder = getattr(args, "out_url", None)
    if folder is None:
        return run()
    try:
        summary = run()
    except BaseException:
        try:
            folder.upload(args.out / name for name in files if (args.out / name).is_file())
        except OSError:
            pass
        raise
    names = [name for name in (*files, ERRORS_FILE) if (args.out / name).is_file()]
    folder.upload(args.out / name for name in names)  # an OSError: exit 1, said in one line
    if ERRORS_FILE not in names:
        folder.remove([ERRORS_FILE])
    if not getattr(args, "quiet", False):
        failures = f"; failures listed in {folder.url_of(ERRORS_FILE)}" if ERRORS_FILE in names else ""
        print(f"{desc}: outputs in {folder.url}{failures}", flush=True)
    return summary


def read_outputs(args: argparse.Namespace, paths: list) -> dict:
    """The bytes of the output files ``paths`` (under ``args.out``) that exist: from the
    local folder, or with ``-o URL`` from the URL (one call)."""
    folder = getattr(args, "out_url", None)
    if folder is None:
        found = {}
        for path in paths:
            try:
                found[path] = Path(path).read_bytes()
            except OSError:
                continue
        return found
    relatives = {folder.relative(path): path for path in paths}
    return {relatives[relative]: data for relative, data in folder.read_many(relatives).items()}
