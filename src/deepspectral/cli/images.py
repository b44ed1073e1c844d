"""``deepspectral eigs / localize / segment``: one result per image of a folder.

::

    deepspectral eigs     INPUTS... -o OUT        # OUT/<name>.npz + OUT/<name>.eigs.png
    deepspectral localize INPUTS... -o OUT        # OUT/boxes.json (+ --save-viz pictures)
    deepspectral segment  INPUTS... -o OUT        # OUT/<name>.png masks, 0/255 (+ OUT/scores.json)

Each takes ``--method dsm|tokencut`` (the recipe, :mod:`deepspectral.recipes`); localize and
segment give every box / mask a score and take ``--min-score``; segment takes
``--refine none|crf|bilateral``.
"""

from __future__ import annotations

import argparse

from .. import defaults
from .common import UsageError, batch_status
from .options import (
    add_backbone,
    add_cluster,
    add_decomposition,
    add_engine,
    add_inputs,
    add_method,
    method_from_args,
    backbone_from_args,
    check_cluster_args,
    check_weights_and_out,
    cluster_engine_from_args,
    engine_from_args,
    inputs_from_args,
    output_path,
    require_crf,
)
from .outputs import publishing, read_outputs, uploading
from .resume import add_overwrite, finished_outputs

__all__ = ["register", "FIGURE_MAX_HEIGHT", "BOXES_FILE", "SCORES_FILE", "refine_from_args"]

#: Height cap of the ``.eigs.png`` pictures (the eigenvectors themselves are saved in full).
FIGURE_MAX_HEIGHT = 768
BOXES_FILE = "boxes.json"
#: ``segment``'s list of ``{image, file, score, empty}`` (the score of each mask).
SCORES_FILE = "scores.json"
#: The files of a whole run, by command (uploaded when it ends with -o URL: cli.outputs.publishing).
RUN_FILES = {"localize": (BOXES_FILE,), "segment": (SCORES_FILE,)}


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
        description="Writes OUT/boxes.json: a list of {image, file, box_xyxy, score, image_size} with boxes "
        "[x1, y1, x2, y2] in pixels of the original image (x2, y2 exclusive; null: no object, the score "
        "was below --min-score), the score in [0, 1] and image_size [W, H].",
    )
    segment = commands.add_parser(
        "segment",
        formatter_class=formatter,
        help="a full-resolution mask of the main object of each image",
        description="Per image: OUT/<name>.png, a mask (8-bit greyscale, 255 = object, 0 = background) "
        "of the original image's size, refined by a dense CRF (dsm) or the fast bilateral solver "
        "(tokencut); OUT/scores.json lists each mask's score.",
    )
    for parser, run in ((eigs, _run_eigs), (localize, _run_localize), (segment, _run_segment)):
        add_inputs(parser)
        add_backbone(parser)
        add_decomposition(parser)
        add_method(parser, scores=parser is not eigs)
        add_engine(parser)
        add_cluster(parser)
        parser.set_defaults(run=lambda args, run=run: _run(args, run))
    for parser in (eigs, segment):  # localize's boxes.json is remade from the cache on each run
        add_overwrite(parser)
    localize.add_argument("--save-viz", action="store_true", help="also write OUT/<name>.box.jpg with the box drawn")
    segment.add_argument(
        "--refine",
        choices=defaults.REFINEMENTS,
        default=None,
        help="refinement of the coarse mask: none, the dense CRF (needs pydensecrf) or the fast "
        "bilateral solver (default: crf for --method dsm, bilateral for tokencut)",
    )
    segment.add_argument(
        "--no-crf",
        dest="crf",
        action="store_false",
        help="same as --refine none: the coarse mask upsampled, no refinement",
    )
    segment.add_argument("--save-viz", action="store_true", help="also write OUT/<name>.overlay.jpg with the mask drawn")


def refine_from_args(args: argparse.Namespace) -> str:
    """``segment``'s refinement: ``--refine``, ``--no-crf`` (= none) or the method's default;
    a :class:`UsageError` when the two disagree."""
    refine = getattr(args, "refine", None)
    if not getattr(args, "crf", True):
        if refine not in (None, "none"):
            raise UsageError(f"--no-crf: contradicts --refine {refine} (--no-crf is --refine none)")
        return "none"
    return refine or defaults.REFINE[getattr(args, "method", defaults.METHOD)]


def _run(args: argparse.Namespace, command) -> int:
    check_cluster_args(args)
    method_from_args(args)  # refuse options of another recipe before any work
    check_weights_and_out(args, url=True)
    use = "boxes"
    if command is _run_segment:
        args.refine = refine_from_args(args)
        if args.refine == "crf":
            require_crf()
        use = "masks"
    inputs = inputs_from_args(args)
    engine = engine_from_args(args, backbone_from_args(args), paths=[item.path for item in inputs], use=use)
    engine = cluster_engine_from_args(args, engine)
    name = command.__name__.removeprefix("_run_")
    return batch_status(lambda: publishing(args, lambda: command(args, engine, inputs), RUN_FILES.get(name, ()), desc=name))


def _run_eigs(args, engine, inputs):
    from ..files import save_png_atomic
    from ..store import save_decomposition
    from ..viz import eigenvector_figure

    def outputs(item) -> list:
        return [output_path(args.out, item, ".npz"), output_path(args.out, item, ".eigs.png")]

    def work(result) -> None:
        npz, figure_png = outputs(result.item)
        save_decomposition(npz, result.decomposition)
        figure = eigenvector_figure(result.image, result.decomposition, max_height=FIGURE_MAX_HEIGHT)
        save_png_atomic(figure_png, figure)

    skip = finished_outputs(args, "eigs", outputs, weights_id=engine.feature_settings()["weights"])
    return engine.process(inputs, uploading(args, work), out_dir=args.out, desc="eigs", verbose=not args.quiet, skip=skip)


def _run_localize(args, engine, inputs):
    from ..files import atomic_write_json, save_image_atomic
    from ..tasks.localize import detect
    from ..viz import draw_box

    records = []

    def work(result) -> dict:  # may run in another process (--engine ray): returns its record
        found = detect(result.decomposition, min_score=args.min_score)
        box = None if found.box is None else [int(v) for v in found.box]
        if args.save_viz:
            picture = result.image if box is None else draw_box(result.image, box)
            save_image_atomic(output_path(args.out, result.item, ".box.jpg"), picture, quality=90)
        height, width = result.image.shape[:2]
        return {
            "image": result.item.name,
            "file": str(result.item.path),
            "box_xyxy": box,
            "score": round(found.score, 6),
            "image_size": [int(width), int(height)],
        }

    try:
        summary = engine.process(
            inputs, uploading(args, work), out_dir=args.out, desc="localize", verbose=not args.quiet,
            collect=lambda item, record: records.append(record),
        )  # fmt: skip
    finally:  # boxes found before an interruption are kept
        atomic_write_json(args.out / BOXES_FILE, records)
    return summary


def _run_segment(args, engine, inputs):
    from ..files import atomic_write_json, save_image_atomic, save_png_atomic
    from ..recipes.scores import spectral_score
    from ..tasks.segment import segment_object
    from ..viz import overlay_mask

    def outputs(item) -> list:
        suffixes = [".png", ".overlay.jpg"] if args.save_viz else [".png"]
        return [output_path(args.out, item, suffix) for suffix in suffixes]

    records = {}

    def work(result) -> dict:  # may run in another process (--engine ray): returns its record
        mask = segment_object(result.decomposition, result.image, refine=args.refine, min_score=args.min_score)
        save_png_atomic(output_path(args.out, result.item, ".png"), mask.astype("uint8") * 255)
        if args.save_viz:
            save_image_atomic(output_path(args.out, result.item, ".overlay.jpg"), overlay_mask(result.image, mask), quality=90)
        score = spectral_score(result.decomposition)
        return {"image": result.item.name, "file": str(result.item.path), "score": round(score, 6), "empty": not bool(mask.any())}

    def collect(item, record) -> None:
        records[item.name] = record

    # a rerun skips a finished mask only when its score is in scores.json too (a killed run
    # wrote its masks but not its scores.json: those images are redone)
    earlier = _records_by_image(read_outputs(args, [args.out / SCORES_FILE]).get(args.out / SCORES_FILE))
    finished = finished_outputs(args, "segment", outputs, weights_id=engine.feature_settings()["weights"])

    done = {item.name for item in inputs if item.name in earlier and finished(item)}
    try:
        return engine.process(
            inputs, uploading(args, work), out_dir=args.out, desc="segment", verbose=not args.quiet,
            skip=lambda item: item.name in done, collect=collect,
        )  # fmt: skip
    finally:  # scores of the masks written before an interruption are kept
        kept = [records.get(item.name) or (earlier[item.name] if item.name in done else None) for item in inputs]
        atomic_write_json(args.out / SCORES_FILE, [record for record in kept if record is not None])


def _records_by_image(data: bytes | None) -> dict:
    """The records of an earlier run's JSON list (``scores.json``, its bytes) by image name;
    empty when there is none (None) or it cannot be read."""
    import json

    if data is None:
        return {}
    try:
        records = json.loads(data.decode("utf-8"))
        return {record["image"]: record for record in records}
    except (OSError, ValueError, TypeError, KeyError):
        return {}
