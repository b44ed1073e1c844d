"""The ``deepspectral`` command line.

::

    deepspectral eigs     INPUTS... -o OUT        # OUT/<name>.npz + OUT/<name>.eigs.png
    deepspectral localize INPUTS... -o OUT        # OUT/boxes.json (+ --save-viz pictures)
    deepspectral segment  INPUTS... -o OUT        # OUT/<name>.png masks, 0/255
    deepspectral discover INPUTS... -o OUT        # OUT/instances.json: several objects (COCO)
    deepspectral matte    INPUTS... -o OUT        # alpha mattes and RGBA cut-outs
    deepspectral semseg   fit / train / predict   # semantic segmentation of a collection
    deepspectral eval     localization / segmentation / semseg   # the paper's metrics
    deepspectral data     download / list         # the evaluation datasets
    deepspectral serve                            # a local web page and REST API

INPUTS are image files, folders (searched recursively) and ``.txt`` lists of paths. Output
names keep each image's path relative to the folder it came from.

One convention: every module of :data:`COMMAND_MODULES` has ``register(commands,
formatter)``, which adds its parsers and sets ``run=fn(args) -> exit status`` on each;
:func:`main` parses, calls ``run`` and reports a :class:`~deepspectral.cli.common.UsageError`
in one line with exit status 2 (see :mod:`deepspectral.cli.common` for the others).

Only ``argparse`` and the defaults are imported at start, so ``--help`` and ``--version``
answer without importing torch; the pipeline is imported inside the commands.
"""

from __future__ import annotations

import argparse
import importlib

from .._version import __version__
from .common import EXIT_BUG, EXIT_USAGE, HelpFormatter, UsageError, report_bug, report_error

__all__ = ["main", "build_parser", "COMMAND_MODULES"]

#: The modules adding the commands, in the order ``--help`` lists them.
COMMAND_MODULES: tuple[str, ...] = (
    "deepspectral.cli.images",
    "deepspectral.cli.discover",
    "deepspectral.cli.matte",
    "deepspectral.cli.semseg",
    "deepspectral.cli.eval",
    "deepspectral.cli.data",
    "deepspectral.cli.serve",
)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``deepspectral`` with every command."""
    parser = argparse.ArgumentParser(
        prog="deepspectral",
        description="Deep Spectral Methods: unsupervised object localization and segmentation "
        "from the eigenvectors of a self-supervised ViT's feature affinity.",
        epilog="Exit status: 0 all images done, 1 some images failed (see OUT/errors.json) or an "
        "output could not be written, 2 bad arguments, unusable output folder or backbone "
        "unavailable (before any work), 130 interrupted, 70 a bug (please report it).",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(commands, HelpFormatter)
    return parser


def main(argv=None) -> int:
    """Run the ``deepspectral`` command line; returns the exit status.

    Parameters
    ----------
    argv : list of str, optional
        Arguments without the program name (default: ``sys.argv[1:]``).
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # --help, --version, usage errors
        code = exit_.code
        return code if isinstance(code, int) else (0 if code is None else EXIT_USAGE)
    try:
        return args.run(args)
    except UsageError as error:
        report_error(str(error))
        return EXIT_USAGE
    except Exception:  # anything else is a bug: the one case with a traceback
        report_bug()
        return EXIT_BUG
