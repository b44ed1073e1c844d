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
from pathlib import Path

from .common import UsageError, batch_status
from .options import (
    add_backbone,
    add_cluster,
    add_decomposition,
    add_engine,
    add_inputs,
    backbone_from_args,
    check_cluster_args,
    check_weights_and_out,
    cluster_engine_from_args,
    engine_from_args,
    inputs_from_args,
    non_negative_int,
    number_type,
    output_path,
)
from .outputs import publishing, uploading
from .resume import add_overwrite, finished_outputs

__all__ = ["register", "run", "parse_color"]

#: Output suffixes (appended to each image's output name).
ALPHA_SUFFIX = ".alpha.png"
CUTOUT_SUFFIX = ".fg.png"
COMPOSITE_SUFFIX = ".composite.png"
LAYER_SUFFIX = ".layer{index}.png"

#: The ``--mode`` choices (the same as ``deepspectral.tasks.matting.MATTING_MODES``).
MODE_CHOICES = ("fast", "full")


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


def register(commands, formatter) -> None:
    """Add the ``matte`` command (see :data:`deepspectral.cli.COMMAND_MODULES`)."""
    # literal copies of tasks.matting.MATTING_MODES (checked by the tests): importing the
    # task module here would load scipy on every `deepspectral --help`
    parser = commands.add_parser(
        "matte",
        formatter_class=formatter,
        help="soft alpha mattes, RGBA cut-outs, soft layers and composites (paper Sec. 4.4)",
        description="Per image, at the original size (EXIF orientation applied): OUT/<name>.alpha.png "
        "(8-bit alpha of the main object), OUT/<name>.fg.png (straight, non-premultiplied RGBA "
        "cut-out); with --layers N also OUT/<name>.layer{0..N-1}.png (RGBA layers whose alphas sum "
        "to 1, so adding them up rebuilds the image); with --background / --color also "
        "OUT/<name>.composite.png.",
    )
    add_inputs(parser)
    add_backbone(parser)
    add_decomposition(parser)
    add_engine(parser)
    add_overwrite(parser)
    add_cluster(parser)
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
    group.add_argument("--seed", type=non_negative_int, default=0, help="seeds the sampled affinities, eigensolver start and k-means")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Run ``deepspectral matte`` on parsed arguments; returns the exit status."""
    check_cluster_args(args)
    check_weights_and_out(args, url=True)
    background = None
    if args.background is not None:
        from ..data.images import ImageLoadError, load_image

        try:
            background = load_image(args.background)
        except (ImageLoadError, OSError, ValueError) as error:
            raise UsageError(f"--background: {error}") from None
    elif args.color is not None:
        background = tuple(args.color)
    inputs = inputs_from_args(args)

    import numpy as np

    from ..files import save_png_atomic
    from ..eigen import LOBPCG_GUARD
    from ..tasks.matting import GUIDED_RADIUS, MATTING_MODE, composite, cutout_rgba, matte

    mode = args.mode or MATTING_MODE
    n_eigenvectors = max(args.n_eigenvectors, (args.layers or 0) + 2)
    # in full mode the grid eigenvectors start LOBPCG: guard vectors included
    grid_eigenvectors = n_eigenvectors + (LOBPCG_GUARD if mode == "full" else 0)
    engine = engine_from_args(
        args, backbone_from_args(args), paths=[item.path for item in inputs], n_eigenvectors=grid_eigenvectors,
        keep_features=True,
    )  # fmt: skip
    engine = cluster_engine_from_args(args, engine)

    def outputs(item) -> list:
        suffixes = [ALPHA_SUFFIX, CUTOUT_SUFFIX]
        suffixes += [LAYER_SUFFIX.format(index=index) for index in range(args.layers or 0)]
        suffixes += [COMPOSITE_SUFFIX] if background is not None else []
        return [output_path(args.out, item, suffix) for suffix in suffixes]

    def work(result) -> None:
        image = result.image
        found = matte(
            image,
            features=result.features,
            decomposition=result.decomposition,
            mode=mode,
            n_layers=args.layers,
            knn_lambda=args.knn_lambda,
            n_eigenvectors=n_eigenvectors,
            radius=GUIDED_RADIUS if args.radius is None else args.radius,
            seed=args.seed,
        )
        alpha8 = np.round(np.clip(found.alpha, 0.0, 1.0) * 255.0).astype(np.uint8)
        save_png_atomic(output_path(args.out, result.item, ALPHA_SUFFIX), alpha8)
        cutout = cutout_rgba(image, found.alpha, decontaminate=args.decontaminate)
        save_png_atomic(output_path(args.out, result.item, CUTOUT_SUFFIX), cutout)
        if found.layers is not None:  # the image's own colours: the layers add up to it
            for index, layer in enumerate(found.layers):
                layer_rgba = cutout_rgba(image, layer, decontaminate=False)
                save_png_atomic(output_path(args.out, result.item, LAYER_SUFFIX.format(index=index)), layer_rgba)
        if background is not None:
            composited = composite(image, found.alpha, background, decontaminate=args.decontaminate)
            save_png_atomic(output_path(args.out, result.item, COMPOSITE_SUFFIX), composited)

    skip = finished_outputs(args, "matte", outputs, weights_id=engine.feature_settings()["weights"])
    return batch_status(lambda: publishing(args, lambda: engine.process(
        inputs, uploading(args, work), out_dir=args.out, desc="matte", verbose=not args.quiet, skip=skip,
    ), desc="matte"))  # fmt: skip
