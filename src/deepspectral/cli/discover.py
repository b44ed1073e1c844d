"""``deepspectral discover``: several objects per image (MaskCut), as COCO pseudo-labels.

::

    deepspectral discover INPUTS... -o OUT        # OUT/instances.json (COCO, RLE masks)
    deepspectral discover photos/ -o OUT --resize 480 --max-objects 3    # MaskCut's settings
    deepspectral discover photos/ -o OUT --max-objects auto --save-masks --save-viz

Per image the engine gives the features (cached), :func:`deepspectral.tasks.discover.discover`
the instances; each image's record is written to ``OUT/.discover/<name>.json`` (and its
masks / picture when asked), and ``OUT/instances.json`` is assembled from the records of
every input in input order when the run ends, so a killed run, rerun, gives the same file
as an uninterrupted one (the rerun skips the images whose record is there: see
:mod:`deepspectral.cli.resume`). A broken image fails alone (``OUT/errors.json``, exit 1).
"""

from __future__ import annotations

import argparse

from .. import defaults
from .common import UsageError, batch_status
from .options import (
    add_backbone,
    add_cluster,
    add_engine,
    add_inputs,
    backbone_from_args,
    check_cluster_args,
    check_weights_and_out,
    cluster_engine_from_args,
    inputs_from_args,
    non_negative_float,
    number_type,
    output_path,
    positive_float,
    positive_int,
    require_crf,
    store_from_args,
)
from .outputs import publishing, read_outputs, uploading
from .resume import add_overwrite, finished_outputs

__all__ = ["register", "check_cut_args", "INSTANCES_FILE", "RECORDS_DIR", "max_objects_type", "PALETTE"]

#: The COCO file of the whole run, in the output folder.
INSTANCES_FILE = "instances.json"
#: Folder of the per-image records, in the output folder.
RECORDS_DIR = ".discover"
#: Colours of the instances in the ``--save-viz`` pictures, in turn.
PALETTE = ((255, 64, 64), (64, 160, 255), (80, 220, 80), (255, 200, 40), (200, 80, 255), (40, 220, 220))
#: The recipes discover can repeat: MaskCut repeats TokenCut's cut.
APPLIES_TO = ("tokencut",)


def max_objects_type(text: str):
    """An argparse ``type``: ``auto`` or an integer >= 1."""
    if text == "auto":
        return "auto"
    try:
        return positive_int(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1 or 'auto', got {text!r}") from None


max_objects_type.__name__ = "auto or int >= 1"


def register(commands, formatter) -> None:
    """Add ``discover``."""
    parser = commands.add_parser(
        "discover",
        formatter_class=formatter,
        help="several objects per image (MaskCut): COCO instances.json with RLE masks",
        description="Per image, up to --max-objects instance masks by MaskCut's repeated normalised cut "
        "(CutLER): TokenCut's binary graph of the patch keys at --tau, the second eigenvector, the found "
        "object's patches zeroed for the next cut, each mask refined by MaskCut's dense CRF. Writes "
        "OUT/instances.json (COCO: images, annotations with bbox [x, y, w, h], RLE segmentation, area, "
        "score, category 1 'object'), loadable by pycocotools and detectron2.",
    )
    add_inputs(parser)
    add_backbone(parser)
    parser.set_defaults(max_size=defaults.DISCOVER_MAX_SIZE)
    objects = parser.add_argument_group("objects (MaskCut)")
    objects.add_argument(
        "--max-objects",
        type=max_objects_type,
        default=defaults.MAX_OBJECTS,
        metavar="{N,auto}",
        help=f"cuts per image (MaskCut's N); auto: up to {defaults.AUTO_MAX_OBJECTS}, stopping at the first cut "
        "whose score is below --min-score",
    )
    objects.add_argument(
        "--min-score",
        type=non_negative_float,  # and <= 1: checked in _run
        default=None,
        help="stop at the first cut whose score (1 - l1, the cut's relaxed normalised-cut value "
        f"subtracted from 1) is below this (default: {defaults.AUTO_MIN_SCORE} with --max-objects auto, else never)",
    )
    objects.add_argument(
        "--resize",
        type=positive_int,
        default=None,
        metavar="S",
        help="resize every image to S x S first, ignoring its aspect ratio (MaskCut: 480); default: keep the "
        "aspect ratio, longest side --max-size (then ignored)",
    )
    objects.add_argument(
        "--refine", choices=defaults.DISCOVER_REFINEMENTS, default=defaults.DISCOVER_REFINE,
        help="MaskCut's dense CRF on each mask (needs pydensecrf) or none",
    )  # fmt: skip
    objects.add_argument(
        "--method",
        choices=defaults.METHOD_NAMES,
        default="tokencut",
        help="the graph cut repeated: tokencut (MaskCut's); dsm does not apply (its graph lives on a 1/8 grid "
        "with a colour term and has no rule for taking an object out)",
    )
    objects.add_argument(
        "--tau",
        type=number_type(float, -1),  # and < 1: checked with the recipe
        default=defaults.MASKCUT_TAU,
        help="cosine above which two patches are linked",
    )
    objects.add_argument("--eps", type=positive_float, default=defaults.TOKENCUT_EPS, help="weight of the other pairs of patches")
    objects.add_argument(
        "--sign", choices=defaults.MASKCUT_SIGNS, default=defaults.MASKCUT_SIGN,
        help="when MaskCut's corner rule hangs on the eigenvector's arbitrary sign (3 corners on the seed's side): "
        "seed = never take the side with the corners; lapack = the side MaskCut's dense LAPACK solve gives "
        "(CutLER's output; one dense solve per such cut)",
    )  # fmt: skip
    outputs = parser.add_argument_group("extra outputs")
    outputs.add_argument("--save-masks", action="store_true", help="also write OUT/<name>.mask<K>.png (0/255) per instance")
    outputs.add_argument("--save-viz", action="store_true", help="also write OUT/<name>.instances.jpg with the instances drawn")
    add_engine(parser)
    add_cluster(parser)
    add_overwrite(parser)
    parser.set_defaults(run=_run)


def _check(args: argparse.Namespace) -> None:
    """Refuse what does not apply, in one line, before any work."""
    if args.method not in APPLIES_TO:
        raise UsageError(
            f"--method {args.method}: does not apply to discover (MaskCut repeats TokenCut's cut; use --method tokencut)"
        )
    check_cut_args(args)


def check_cut_args(args: argparse.Namespace) -> None:
    """``--tau``, ``--eps`` and ``--min-score`` of the cuts (``discover`` and ``eval
    discovery``), refused in one line (:class:`UsageError`)."""
    from ..recipes.tokencut import check_parameters

    try:
        check_parameters(tau=args.tau, eps=args.eps)
    except ValueError as error:
        name, _, message = str(error).partition(": ")
        raise UsageError(f"--{name}: {message}") from None
    if args.min_score is not None and args.min_score > 1:
        raise UsageError(f"--min-score: expected a number in [0, 1], got {args.min_score!r}")


def _run(args: argparse.Namespace) -> int:
    check_cluster_args(args)
    _check(args)
    if args.refine == "crf":
        require_crf()
    check_weights_and_out(args, url=True)
    inputs = inputs_from_args(args)
    engine = _engine(args, inputs)
    engine = cluster_engine_from_args(args, engine)
    return batch_status(lambda: publishing(args, lambda: _discover(args, engine, inputs), (INSTANCES_FILE,), desc="discover"))


def _engine(args: argparse.Namespace, inputs: list):
    """Features only (``fit="resize"``, MaskCut's), through the square with ``--resize``."""
    from ..engine import Engine
    from ..tasks.discover import SquareInput

    backbone = backbone_from_args(args)
    source = SquareInput(backbone, args.resize) if args.resize else backbone
    engine = Engine(
        source,
        max_size=None if args.resize else (args.max_size or None),
        decompose=False,
        keep_features=True,
        batch_size=args.batch_size,
        workers=args.workers,
        method="tokencut",  # its fit for masks: each side resized to a multiple of the patch
        method_params={"tau": args.tau, "eps": args.eps},
        use="masks",
    )
    engine.store = store_from_args(args, backbone, paths=[item.path for item in inputs], n_eigenvectors=0)
    return engine


def _file_name(item) -> str:
    """The image's name in instances.json: its path relative to the folder it was found in."""
    suffix = getattr(item, "path", None)
    return item.relative.as_posix() + (suffix.suffix if suffix is not None else "")


def _picture(image, instances):
    from ..viz import draw_box, overlay_mask

    canvas = image
    for index, instance in enumerate(instances):
        colour = PALETTE[index % len(PALETTE)]
        canvas = draw_box(overlay_mask(canvas, instance.mask, colour, alpha=0.45), instance.box, colour)
    return canvas


def _discover(args, engine, inputs):
    import json

    from ..files import atomic_write_json, save_image_atomic, save_png_atomic
    from ..instances import annotation, image_record, write_instances
    from ..tasks.discover import discover

    def record_path(item):
        return output_path(args.out / RECORDS_DIR, item, ".json")

    def outputs(item) -> list:
        return [record_path(item)] + ([output_path(args.out, item, ".instances.jpg")] if args.save_viz else [])

    def work(result) -> None:  # may run in another process (--engine ray): writes its files only
        item = result.item
        instances = discover(
            result.features, result.image, max_objects=args.max_objects, min_score=args.min_score,
            tau=args.tau, eps=args.eps, refine=args.refine, sign=args.sign,
        )  # fmt: skip
        masks = []
        if args.save_masks:
            for number, instance in enumerate(instances, 1):
                path = output_path(args.out, item, f".mask{number}.png")
                save_png_atomic(path, instance.mask.astype("uint8") * 255)
                masks.append(path.relative_to(args.out).as_posix())
        if args.save_viz:
            save_image_atomic(output_path(args.out, item, ".instances.jpg"), _picture(result.image, instances), quality=90)
        record = image_record(_file_name(item), result.image.shape[:2], [annotation(i.mask, i.score) for i in instances])
        record.update(image=item.name, masks=masks)
        atomic_write_json(record_path(item), record)  # last: a record means the image is finished

    finished = finished_outputs(args, "discover", outputs, weights_id=engine.feature_settings()["weights"])
    try:
        return engine.process(
            inputs, uploading(args, work), out_dir=args.out, desc="discover", verbose=not args.quiet, skip=finished
        )
    finally:  # assembled from the records written (at -o URL: there): the same file however many runs made them
        finished.refresh()
        found = read_outputs(args, [record_path(item) for item in inputs if finished(item)])
        records = []
        for item in inputs:
            try:
                records.append(json.loads(found[record_path(item)].decode("utf-8")))
            except (KeyError, ValueError):
                continue
        write_instances(args.out / INSTANCES_FILE, records)
