"""``deepspectral data download NAME --root DIR``: fetch a benchmark's official archives.

Resumable (``<file>.part`` plus an HTTP Range request), MD5-checked where the official
checksum is known, with a progress bar; the archives are extracted into ``DIR`` in the
layout the ``eval`` loaders read.
"""

from __future__ import annotations

from pathlib import Path

from .common import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, report_error

__all__ = ["register"]


def register(commands, formatter) -> None:
    """Add ``deepspectral data {download,list}``."""
    from ..data.download import DOWNLOADS

    data = commands.add_parser("data", formatter_class=formatter, help="download the evaluation datasets")
    actions = data.add_subparsers(dest="data_action", metavar="ACTION", required=True)
    download = actions.add_parser(
        "download", formatter_class=formatter, help="fetch and extract a dataset's official archives",
        description="Downloads every archive of the dataset into --root (resuming interrupted downloads), "
        "checks the official MD5 where one is published, and extracts it.",
    )  # fmt: skip
    download.add_argument("name", choices=sorted(DOWNLOADS), metavar="NAME", help="one of: " + ", ".join(sorted(DOWNLOADS)))
    download.add_argument("--root", type=Path, required=True, metavar="DIR", help="where archives go and are extracted")
    download.add_argument("--mirror", default=None, metavar="URL", help="base URL serving the same file names")
    download.add_argument("--no-extract", dest="extract", action="store_false", help="keep the archives packed")
    download.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    download.set_defaults(run=_run_download)
    listing = actions.add_parser("list", formatter_class=formatter, help="the datasets and their archives")
    listing.set_defaults(run=_run_list)


def _run_download(args) -> int:
    from ..data.download import DownloadError, download_dataset

    try:
        paths = download_dataset(args.name, args.root, mirror=args.mirror, extract=args.extract, progress=not args.quiet)
    except (DownloadError, OSError, ValueError) as error:
        report_error(str(error))
        return EXIT_FAILED
    except KeyboardInterrupt:
        report_error("interrupted; run the same command again to resume")
        return EXIT_INTERRUPTED
    if not args.quiet:
        print(f"{args.name}: {len(paths)} archive(s) ready in {args.root}")
    return EXIT_OK


def _run_list(args) -> int:
    from ..data.download import DOWNLOADS

    for name, archives in sorted(DOWNLOADS.items()):
        for archive in archives:
            print(f"{name:10s} {archive.url}  md5={archive.md5 or '-'}")
    return EXIT_OK
