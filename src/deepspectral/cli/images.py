"""``deepspectral eigs / localize / segment``: one result per image of a folder.

::

    deepspectral eigs     INPUTS... -o OUT        # OUT/<name>.npz + OUT/<name>.eigs.png
    deepspectral localize INPUTS... -o OUT        # OUT/boxes.json (+ --save-viz pictures)
    deepspectral segment  INPUTS... -o OUT        # OUT/<name>.png masks, 0/255
"""

from __future__ import annotations

import argparse

from .common import batch_status
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
    output_path,
    require_crf,
)

__all__ = ["register", "FIGURE_MAX_HEIGHT", "BOXES_FILE"]

#: Height cap of the ``.eigs.png`` pictures (the eigenvectors themselves are saved in full).
FIGURE_MAX_HEIGHT = 768
BOXES_FILE = "boxes.json"


def register(commands, formatter) -> None:
    """Add ``eigs``, ``localize`` and ``segment``."""
    eigs = commands.add_parser(
        "eigs",
        formatter_class=formatter,
        help="eigenvectors of each image (.npz) and a picture of them",
        description="Per image: OUT/<name>.npz (eigenvalues, eigenvectors on the 1/8 grid, sizes, "
        "settings; see deepspectral.store.load_decomposition) and OUT/<name>.eigs.png "
        "(the image and its non-constant eigenvectors).",
    )
    localize = commands.add_parser(
        "localize",
        formatter_class=formatter,
        help="a box around the main object of each image (boxes.json)",
        description="Writes OUT/boxes.json: a list of {image, file, box_xyxy, image_size} with boxes "
        "[x1, y1, x2, y2] in pixels of the original image (x2, y2 exclusive) and image_size [W, H].",
    )
    segment = commands.add_parser(
        "segment",
        formatter_class=formatter,
        help="a full-resolution mask of the main object of each image",
        description="Per image: OUT/<name>.png, a mask (8-bit greyscale, 255 = object, 0 = background) "
        "of the original image's size, refined by a dense CRF.",
    )
    for parser, run in ((eigs, _run_eigs), (localize, _run_localize), (segment, _run_segment)):
        add_inputs(parser)
        add_backbone(parser)
        add_decomposition(parser)
        add_engine(parser)
        add_cluster(parser)
        parser.set_defaults(run=lambda args, run=run: _run(args, run))
    localize.add_argument("--save-viz", action="store_true", help="also write OUT/<name>.box.jpg with the box drawn")
    segment.add_argument(
        "--no-crf",
        dest="crf",
        action="store_false",
        help="skip the dense-CRF refinement (the coarse mask upsampled); no pydensecrf needed",
    )
    segment.add_argument("--save-viz", action="store_true", help="also write OUT/<name>.overlay.jpg with the mask drawn")


def _run(args: argparse.Namespace, command) -> int:
    check_weights_and_out(args)
    check_cluster_args(args)
    if getattr(args, "crf", False):
        require_crf()
    inputs = inputs_from_args(args)
    engine = engine_from_args(args, backbone_from_args(args), paths=[item.path for item in inputs])
    engine = cluster_engine_from_args(args, engine)
    return batch_status(lambda: command(args, engine, inputs))


def _run_eigs(args, engine, inputs):
    from ..files import save_png_atomic
    from ..store import save_decomposition
    from ..viz import eigenvector_figure

    def work(result) -> None:
        save_decomposition(output_path(args.out, result.item, ".npz"), result.decomposition)
        figure = eigenvector_figure(result.image, result.decomposition, max_height=FIGURE_MAX_HEIGHT)
        save_png_atomic(output_path(args.out, result.item, ".eigs.png"), figure)

    return engine.process(inputs, work, out_dir=args.out, desc="eigs", verbose=not args.quiet)


def _run_localize(args, engine, inputs):
    from ..files import atomic_write_json, save_image_atomic
    from ..tasks.localize import localize
    from ..viz import draw_box

    records = []

    def work(result) -> dict:  # may run in another process (--engine ray): returns its record
        box = [int(v) for v in localize(result.decomposition)]
        if args.save_viz:
            save_image_atomic(output_path(args.out, result.item, ".box.jpg"), draw_box(result.image, box), quality=90)
        height, width = result.image.shape[:2]
        return {
            "image": result.item.name,
            "file": str(result.item.path),
            "box_xyxy": box,
            "image_size": [int(width), int(height)],
        }

    try:
        summary = engine.process(
            inputs, work, out_dir=args.out, desc="localize", verbose=not args.quiet,
            collect=lambda item, record: records.append(record),
        )  # fmt: skip
    finally:  # boxes found before an interruption are kept
        atomic_write_json(args.out / BOXES_FILE, records)
    return summary


def _run_segment(args, engine, inputs):
    from ..files import save_image_atomic, save_png_atomic
    from ..tasks.segment import segment_object
    from ..viz import overlay_mask

    def work(result) -> None:
        mask = segment_object(result.decomposition, result.image, crf=args.crf)
        save_png_atomic(output_path(args.out, result.item, ".png"), mask.astype("uint8") * 255)
        if args.save_viz:
            save_image_atomic(output_path(args.out, result.item, ".overlay.jpg"), overlay_mask(result.image, mask), quality=90)

    return engine.process(inputs, work, out_dir=args.out, desc="segment", verbose=not args.quiet)
