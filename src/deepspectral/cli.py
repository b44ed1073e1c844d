"""The ``deepspectral`` command line.

::

    deepspectral eigs     INPUTS... -o OUT        # OUT/<name>.npz + OUT/<name>.eigs.png
    deepspectral localize INPUTS... -o OUT        # OUT/boxes.json (+ --save-viz pictures)
    deepspectral segment  INPUTS... -o OUT        # OUT/<name>.png masks, 0/255

INPUTS are image files, folders (searched recursively) and ``.txt`` lists of paths. Output
names keep each image's path relative to the folder it came from.

Exit status: 0 when every image was processed, 1 when some failed (listed in
``OUT/errors.json``), 2 on bad arguments or when the backbone cannot be loaded.

Only ``argparse`` and the defaults are imported at start, so ``--help`` and ``--version``
answer without importing torch; the pipeline is imported inside the commands.
"""

from __future__ import annotations

import argparse
import importlib
import math
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from . import defaults
from ._version import __version__

if TYPE_CHECKING:  # pragma: no cover
    from .runner import RunSummary

__all__ = [
    "main",
    "build_parser",
    "backbone_from_args",
    "inputs_from_args",
    "run_images",
    "number_type",
    "non_negative_float",
    "positive_int",
    "non_negative_int",
    "device_type",
    "UsageError",
]

#: Exit status when some images failed / on usage and setup errors (as argparse uses).
EXIT_FAILED_IMAGES = 1
EXIT_USAGE = 2

#: Height cap of the ``.eigs.png`` pictures (the eigenvectors themselves are saved in full).
FIGURE_MAX_HEIGHT = 768
BOXES_FILE = "boxes.json"

#: Modules adding command families; each has ``register(commands, common, formatter)``
#: (``commands``: the subparsers, ``common``: the shared backbone/decomposition options
#: parser to use as a parent) and must import nothing heavy at module level. A command
#: that sets ``run=fn`` in its defaults is run as ``fn(args) -> exit status``.
COMMAND_MODULES: tuple[str, ...] = (
    "deepspectral.commands.data",
    "deepspectral.commands.eval",
    "deepspectral.commands.matte",
    "deepspectral.commands.semseg",
)


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Show ``(default: ...)`` for options with a real default (not for flags / None)."""

    def _get_help_string(self, action):
        if action.default is None or isinstance(action.default, bool):
            return action.help
        return super()._get_help_string(action)


def _backbone_names() -> list[str]:
    # backbones.py keeps torch out of its module level, so this stays light.
    from .backbones import BACKBONES

    return sorted(BACKBONES)


def number_type(kind: type = int, minimum: float = 0):
    """An argparse ``type``: a finite ``int`` or ``float`` at least ``minimum``, with a
    clear message otherwise."""
    noun = "an integer" if kind is int else "a number"

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {noun}, got {text!r}") from None
        if not math.isfinite(value) or value < minimum:
            raise argparse.ArgumentTypeError(f"expected {noun} >= {minimum}, got {text!r}")
        return value

    parse.__name__ = f"{kind.__name__} >= {minimum}"  # how argparse names it in errors
    return parse


#: Validated argparse types shared by every command's options.
non_negative_float = number_type(float, 0)
positive_int = number_type(int, 1)
non_negative_int = number_type(int, 0)


def device_type(text: str) -> str:
    """An argparse ``type``: ``auto``, ``cpu``, ``mps``, ``cuda`` or ``cuda:N``."""
    if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", text):
        raise argparse.ArgumentTypeError(f"expected auto, cpu, cuda, cuda:N or mps, got {text!r}")
    return text


def _common_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    io = common.add_argument_group("inputs and outputs")
    io.add_argument(
        "inputs",
        nargs="+",
        metavar="INPUT",
        help="image files, folders (searched recursively) and .txt files listing paths (one a line)",
    )
    io.add_argument("-o", "--out", required=True, type=Path, metavar="OUT", help="output folder (created if missing)")
    io.add_argument("-q", "--quiet", action="store_true", help="no progress bar, no summary line")
    model = common.add_argument_group("backbone")
    names = _backbone_names()
    model.add_argument(
        "--backbone",
        choices=names,
        default=defaults.BACKBONE,
        metavar="NAME",
        help="feature extractor, one of: " + ", ".join(names),
    )
    model.add_argument(
        "--weights",
        type=Path,
        default=None,
        metavar="FILE",
        help="checkpoint file to load instead of downloading the pretrained weights "
        "(a DINO .pth as published, or a timm / safetensors state dict); use it offline",
    )
    model.add_argument(
        "--device",
        type=device_type,
        default="auto",
        metavar="{auto,cpu,cuda,cuda:N,mps}",
        help="where the backbone runs (auto: CUDA when available, else the CPU)",
    )
    model.add_argument("--block", type=int, default=defaults.BLOCK, help="transformer block the features come from")
    model.add_argument("--feature", choices=defaults.FEATURE_KINDS, default=defaults.FEATURE, help="which features of that block")
    model.add_argument(
        "--precision",
        choices=defaults.PRECISIONS,
        default=defaults.PRECISION,
        help="arithmetic of the backbone (fp16: CUDA only; mixed precision can move boxes slightly)",
    )
    model.add_argument(
        "--max-size",
        type=non_negative_int,
        default=defaults.MAX_SIZE,
        help="longest image side (pixels) used for the features and eigenvectors; larger images are "
        "downscaled and results mapped back to the original pixels (0: no limit)",
    )
    spectral = common.add_argument_group("spectral decomposition")
    spectral.add_argument(
        "--knn-lambda",
        type=non_negative_float,
        default=defaults.KNN_LAMBDA,
        help="weight of the colour (KNN-matting) affinity; 0 uses the features only",
    )
    spectral.add_argument(
        "--n-eigenvectors",
        type=positive_int,
        default=defaults.N_EIGENVECTORS,
        help="eigenvectors computed, the constant one included",
    )
    speed = common.add_argument_group("speed and caching")
    speed.add_argument(
        "--batch-size", type=positive_int, default=defaults.BATCH_SIZE, help="images per backbone forward pass"
    )
    speed.add_argument(
        "--workers",
        type=positive_int,
        default=defaults.WORKERS,
        help="threads for the eigen-step; 2 or more overlap it with the backbone's next batch",
    )
    speed.add_argument(
        "--cache",
        type=Path,
        default=None,
        metavar="DIR",
        help="cache of features and eigenvectors, keyed by image content and settings; a rerun "
        "resumes from it (default: OUT/.cache)",
    )
    speed.add_argument("--no-cache", action="store_true", help="compute everything, cache nothing")
    return common


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``deepspectral`` (subcommands ``eigs``, ``localize``, ``segment``)."""
    formatter = _HelpFormatter
    parser = argparse.ArgumentParser(
        prog="deepspectral",
        description="Deep Spectral Methods: unsupervised object localization and segmentation "
        "from the eigenvectors of a self-supervised ViT's feature affinity.",
        epilog="Exit status: 0 all images done, 1 some images failed (see OUT/errors.json), "
        "2 bad arguments or backbone unavailable.",
        formatter_class=formatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    common = _common_parser()

    eigs = commands.add_parser(
        "eigs",
        parents=[common],
        formatter_class=formatter,
        help="eigenvectors of each image (.npz) and a picture of them",
        description="Per image: OUT/<name>.npz (eigenvalues, eigenvectors on the 1/8 grid, sizes, "
        "settings; see deepspectral.Decomposition.load_npz) and OUT/<name>.eigs.png "
        "(the image and its non-constant eigenvectors).",
    )
    eigs.set_defaults(handler=_run_eigs)

    localize = commands.add_parser(
        "localize",
        parents=[common],
        formatter_class=formatter,
        help="a box around the main object of each image (boxes.json)",
        description="Writes OUT/boxes.json: a list of {image, file, box_xyxy, image_size} with boxes "
        "[x1, y1, x2, y2] in pixels of the original image (x2, y2 exclusive) and image_size [W, H].",
    )
    localize.add_argument("--save-viz", action="store_true", help="also write OUT/<name>.box.jpg with the box drawn")
    localize.set_defaults(handler=_run_localize)

    segment = commands.add_parser(
        "segment",
        parents=[common],
        formatter_class=formatter,
        help="a full-resolution mask of the main object of each image",
        description="Per image: OUT/<name>.png, a mask (8-bit greyscale, 255 = object, 0 = background) "
        "of the original image's size, refined by a dense CRF.",
    )
    segment.add_argument(
        "--no-crf",
        dest="crf",
        action="store_false",
        help="skip the dense-CRF refinement (the coarse mask upsampled); no pydensecrf needed",
    )
    segment.add_argument("--save-viz", action="store_true", help="also write OUT/<name>.overlay.jpg with the mask drawn")
    segment.set_defaults(handler=_run_segment)

    for module_name in COMMAND_MODULES:  # further command families, each in its own module
        importlib.import_module(module_name).register(commands, common, formatter)
    return parser


# ---------------------------------------------------------------------------------------
# Commands
# ---------------------------------------------------------------------------------------


def _error(message: str) -> None:
    print(f"deepspectral: error: {message}", file=sys.stderr)


class UsageError(Exception):
    """A problem with the command's arguments or setup: reported in one line, exit 2."""


def check_weights_and_out(args: argparse.Namespace) -> None:
    """Raise :class:`UsageError` when ``--weights`` names no file or ``-o/--out`` exists
    and is not a folder (either option may be absent or None)."""
    weights = getattr(args, "weights", None)
    if weights is not None and not weights.is_file():
        raise UsageError(f"--weights: no such file: '{weights}'")
    out = getattr(args, "out", None)
    if out is not None and out.exists() and not out.is_dir():
        raise UsageError(f"-o/--out: '{out}' exists and is not a folder")


def backbone_from_args(args: argparse.Namespace):
    """The :class:`~deepspectral.Backbone` the shared backbone options ask for; a failure
    to load it (no weights offline, bad file, ...) is a :class:`UsageError`."""
    from .backbones import Backbone, WeightsUnavailableError

    try:
        return Backbone(
            args.backbone,
            weights=args.weights,
            device=args.device,
            block=args.block,
            feature=args.feature,
            precision=args.precision,
        )
    except WeightsUnavailableError as error:
        raise UsageError(str(error)) from None
    except (ImportError, ValueError, OSError, RuntimeError) as error:
        raise UsageError(f"cannot load the backbone '{args.backbone}': {error}") from None


def batch_status(run, *, also: tuple = (), interrupted: str = "interrupted", report=None) -> int:
    """Exit status of a batch: ``run()`` returns an object with a ``failed`` count; 0, 1 when
    an image failed, 2 when the backbone or an optional dependency (or one of the
    exception types ``also``) is unavailable — raised on first use, it stops the batch —,
    130 on Ctrl-C, the message printed by ``report`` (default: the ``deepspectral:
    error:`` prefix)."""
    from .backbones import WeightsUnavailableError

    report = report or _error
    try:
        summary = run()
    except (WeightsUnavailableError, ImportError, *also) as error:
        report(str(error))
        return EXIT_USAGE
    except KeyboardInterrupt:
        report(interrupted)
        return 130
    return EXIT_FAILED_IMAGES if summary.failed else 0


def run_images(inputs: list, process, *, out_dir: Path, desc: str, quiet: bool) -> int:
    """:func:`deepspectral.runner.run_batch` for a command: its exit status, see
    :func:`batch_status`."""
    from .runner import run_batch

    return batch_status(lambda: run_batch(inputs, process, out_dir=out_dir, desc=desc, verbose=not quiet))


def inputs_from_args(args: argparse.Namespace) -> list:
    """The images named by ``args.inputs`` (see :func:`deepspectral.data.images.collect_inputs`);
    a missing path is a :class:`UsageError`."""
    from .data.images import collect_inputs

    try:
        return collect_inputs(args.inputs)
    except ValueError as error:
        raise UsageError(str(error)) from None


def _make_pipeline(args: argparse.Namespace):
    """The backbone and settings shared by the image commands, with the cache."""
    from .pipeline import Pipeline, default_cache_dir, estimate_cache_bytes
    from .store import Store

    backbone = backbone_from_args(args)
    store = None
    if not args.no_cache:
        cache_dir = args.cache or default_cache_dir(args.out)
        store = Store(cache_dir)
        if not args.quiet:
            need = estimate_cache_bytes(
                [item.path for item in args.inputs_found],
                patch_size=backbone.patch_size,
                embed_dim=backbone.embed_dim,
                n_eigenvectors=args.n_eigenvectors,
                max_size=args.max_size or None,
            )
            print(f"cache: {cache_dir} (up to about {need / 1e6:.0f} MB for {len(args.inputs_found)} images)", file=sys.stderr)
    return Pipeline(
        backbone,
        max_size=args.max_size or None,
        knn_lambda=args.knn_lambda,
        n_eigenvectors=args.n_eigenvectors,
        store=store,
        batch_size=args.batch_size,
        workers=args.workers,
    )


def _out_path(out_dir: Path, item, suffix: str) -> Path:
    return out_dir.joinpath(*item.relative.parts[:-1], item.relative.name + suffix)


def _run_eigs(args, pipeline, inputs) -> "RunSummary":
    from .runner import run_batch, save_png_atomic
    from .viz import eigenvector_figure

    results = pipeline.run(inputs)  # in input order, as run_batch walks them

    def process(item) -> None:
        image, decomposition = next(results).get()
        npz_path = _out_path(args.out, item, ".npz")
        npz_path.parent.mkdir(parents=True, exist_ok=True)
        decomposition.save_npz(npz_path)
        figure = eigenvector_figure(image, decomposition, max_height=FIGURE_MAX_HEIGHT)
        save_png_atomic(_out_path(args.out, item, ".eigs.png"), figure)

    return run_batch(inputs, process, out_dir=args.out, desc="eigs", verbose=not args.quiet)


def _run_localize(args, pipeline, inputs) -> "RunSummary":
    from .runner import atomic_write_json, run_batch, save_image_atomic
    from .tasks.localize import localize
    from .viz import draw_box

    results = pipeline.run(inputs)  # in input order, as run_batch walks them
    records = []

    def process(item) -> None:
        image, decomposition = next(results).get()
        box = [int(v) for v in localize(decomposition)]
        if args.save_viz:
            save_image_atomic(_out_path(args.out, item, ".box.jpg"), draw_box(image, box), quality=90)
        height, width = image.shape[:2]
        records.append(
            {
                "image": item.relative.as_posix(),
                "file": str(item.path),
                "box_xyxy": box,
                "image_size": [int(width), int(height)],
            }
        )

    try:
        summary = run_batch(inputs, process, out_dir=args.out, desc="localize", verbose=not args.quiet)
    finally:  # boxes found before an interruption are kept
        atomic_write_json(args.out / BOXES_FILE, records)
    return summary


def _run_segment(args, pipeline, inputs) -> "RunSummary":
    from .runner import run_batch, save_image_atomic, save_png_atomic
    from .tasks.segment import segment_object
    from .viz import overlay_mask

    results = pipeline.run(inputs)  # in input order, as run_batch walks them

    def process(item) -> None:
        image, decomposition = next(results).get()
        mask = segment_object(decomposition, image, crf=args.crf)
        save_png_atomic(_out_path(args.out, item, ".png"), mask.astype("uint8") * 255)
        if args.save_viz:
            save_image_atomic(_out_path(args.out, item, ".overlay.jpg"), overlay_mask(image, mask), quality=90)

    return run_batch(inputs, process, out_dir=args.out, desc="segment", verbose=not args.quiet)


def _check_crf_available() -> str | None:
    import importlib.util

    if importlib.util.find_spec("pydensecrf") is None:
        return (
            "the dense CRF needs pydensecrf: pip install \"deepspectral[crf]\" "
            "(or pass --no-crf to use the coarse mask upsampled)"
        )
    return None


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
    if getattr(args, "run", None) is not None:  # a command module that runs itself
        try:
            return args.run(args)
        except UsageError as error:
            _error(str(error))
            return EXIT_USAGE

    try:
        check_weights_and_out(args)
    except UsageError as error:
        _error(str(error))
        return EXIT_USAGE
    if args.command == "segment" and args.crf:
        problem = _check_crf_available()
        if problem:
            _error(problem)
            return EXIT_USAGE

    try:
        inputs = args.inputs_found = inputs_from_args(args)
        pipeline = _make_pipeline(args)
    except UsageError as error:
        _error(str(error))
        return EXIT_USAGE
    return batch_status(lambda: args.handler(args, pipeline, inputs))
