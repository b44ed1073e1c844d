"""``deepspectral matte``: alpha mattes, RGBA cut-outs, soft layers and composites (paper Sec. 4.4).

::

    deepspectral matte photo.jpg -o out/                       # out/photo.fg.png + out/photo.alpha.png
    deepspectral matte photos/ -o out/ --layers 4              # + out/<name>.layer{0..3}.png
    deepspectral matte photo.jpg -o out/ --background beach.jpg   # + out/photo.composite.png
    deepspectral matte photo.jpg -o out/ --color 0,177,64          # composite on a flat colour

Nothing heavy is imported at module level (the CLI's ``--help`` stays fast).
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from ..cli import number_type

__all__ = ["register", "run", "parse_color"]

#: Output suffixes (appended to each image's output name).
ALPHA_SUFFIX = ".alpha.png"
CUTOUT_SUFFIX = ".fg.png"
COMPOSITE_SUFFIX = ".composite.png"
LAYER_SUFFIX = ".layer{index}.png"

#: The ``--mode`` choices (the same as ``deepspectral.tasks.matting.MATTING_MODES``).
MODE_CHOICES = ("fast", "full")

EXIT_USAGE = 2
EXIT_FAILED_IMAGES = 1


def parse_color(text: str) -> tuple[int, int, int]:
    """``"r,g,b"`` (0..255 each) or ``"#rrggbb"`` → ``(r, g, b)``; ``argparse`` type."""
    text = text.strip()
    match = re.fullmatch(r"#?([0-9a-fA-F]{6})", text)
    if match and (text.startswith("#") or "," not in text):
        value = match.group(1)
        return (int(value[0:2], 16), int(value[2:4], 16), int(value[4:6], 16))
    parts = text.split(",")
    try:
        rgb = tuple(int(part) for part in parts)
    except ValueError:
        rgb = ()
    if len(rgb) != 3 or any(v < 0 or v > 255 for v in rgb):
        raise argparse.ArgumentTypeError(f"expected R,G,B with values 0..255 or #RRGGBB, got {text!r}")
    return rgb  # type: ignore[return-value]


def register(commands, common, formatter) -> None:
    """Add the ``matte`` command to the CLI's subparsers (see ``cli.COMMAND_MODULES``)."""
    # literal copies of tasks.matting.MATTING_MODES (checked by the tests): importing the
    # task module here would load scipy on every `deepspectral --help`
    parser = commands.add_parser(
        "matte",
        parents=[common],
        formatter_class=formatter,
        help="soft alpha mattes, RGBA cut-outs, soft layers and composites (paper Sec. 4.4)",
        description="Per image, at the original size (EXIF orientation applied): OUT/<name>.alpha.png "
        "(8-bit alpha of the main object), OUT/<name>.fg.png (straight, non-premultiplied RGBA "
        "cut-out); with --layers N also OUT/<name>.layer{0..N-1}.png (RGBA layers whose alphas sum "
        "to 1, so adding them up rebuilds the image); with --background / --color also "
        "OUT/<name>.composite.png.",
    )
    group = parser.add_argument_group("matting")
    group.add_argument(
        "--mode",
        choices=MODE_CHOICES,
        default=None,
        help="fast (default): eigenvectors on the 1/8 grid, normalised-cut split, guided filter at "
        "full resolution; full: the paper's decomposition at full resolution (sparsified feature "
        "affinity), much slower",
    )
    group.add_argument("--layers", type=number_type(int, 2), default=None, metavar="N", help="also write N soft RGBA layers")
    back = group.add_mutually_exclusive_group()
    back.add_argument(
        "--background",
        type=Path,
        default=None,
        metavar="FILE",
        help="composite the foreground onto this image (resized to cover, centre-cropped)",
    )
    back.add_argument(
        "--color",
        type=parse_color,
        default=None,
        metavar="R,G,B",
        help="composite the foreground onto a flat colour (R,G,B in 0..255 or #RRGGBB)",
    )
    group.add_argument(
        "--radius",
        type=number_type(int, 0),
        default=None,
        help="fast mode: radius in pixels of the guided filter that refines the coarse mask "
        "(default: one cell of the 1/8 grid, 8; 0 keeps the blocky coarse mask)",
    )
    group.add_argument(
        "--no-decontaminate",
        dest="decontaminate",
        action="store_false",
        help="keep the image's own colours in the cut-out and composite (default: foreground colours "
        "estimated where alpha is soft, so no halo of the old background)",
    )
    group.add_argument("--seed", type=int, default=0, help="seeds the sampled affinities, eigensolver start and k-means")
    parser.set_defaults(run=run)


def _error(message: str) -> None:
    print(f"deepspectral: error: {message}", file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    """Run ``deepspectral matte`` on parsed arguments; returns the exit status."""
    from ..cli import check_weights_and_out

    check_weights_and_out(args)  # UsageError: reported by cli.main
    if args.n_eigenvectors < 2:
        _error(f"--n-eigenvectors: matting needs at least 2, got {args.n_eigenvectors}")
        return EXIT_USAGE

    from ..data.images import ImageLoadError, load_image

    background = None
    if args.background is not None:
        try:
            background = load_image(args.background)
        except (ImageLoadError, OSError, ValueError) as error:
            _error(f"--background: {error}")
            return EXIT_USAGE
    elif args.color is not None:
        background = tuple(args.color)
    from ..cli import backbone_from_args, inputs_from_args, run_images

    inputs = inputs_from_args(args)  # UsageError: reported by cli.main
    backbone = backbone_from_args(args)

    from ..runner import save_png_atomic
    from ..tasks.matting import GUIDED_RADIUS, MATTING_MODE, composite, cutout_rgba, matte

    max_size = args.max_size or None

    def output(item, suffix: str) -> Path:
        return args.out.joinpath(*item.relative.parts[:-1], item.relative.name + suffix)

    def process(item) -> None:
        image = load_image(item.path)
        result = matte(
            image,
            backbone=backbone,
            max_size=max_size,
            mode=args.mode or MATTING_MODE,
            n_layers=args.layers,
            knn_lambda=args.knn_lambda,
            n_eigenvectors=max(args.n_eigenvectors, (args.layers or 0) + 2),
            radius=GUIDED_RADIUS if args.radius is None else args.radius,
            seed=args.seed,
        )
        import numpy as np

        alpha8 = np.round(np.clip(result.alpha, 0.0, 1.0) * 255.0).astype(np.uint8)
        save_png_atomic(output(item, ALPHA_SUFFIX), alpha8)
        save_png_atomic(output(item, CUTOUT_SUFFIX), cutout_rgba(image, result.alpha, decontaminate=args.decontaminate))
        if result.layers is not None:  # the image's own colours: the layers add up to it
            for index, layer in enumerate(result.layers):
                save_png_atomic(output(item, LAYER_SUFFIX.format(index=index)), cutout_rgba(image, layer, decontaminate=False))
        if background is not None:
            composited = composite(image, result.alpha, background, decontaminate=args.decontaminate)
            save_png_atomic(output(item, COMPOSITE_SUFFIX), composited)

    return run_images(inputs, process, out_dir=args.out, desc="matte", quiet=args.quiet)
