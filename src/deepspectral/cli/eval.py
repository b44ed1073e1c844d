"""``deepspectral eval``: the paper's tables, one command each, with pictures.

::

    deepspectral eval localization --dataset voc07 --root DATA [--backbone dino_vitb8] [-o OUT]
    deepspectral eval localization --pred out/boxes.json --dataset voc07 --root DATA
    deepspectral eval segmentation --dataset ecssd --root DATA [--no-crf] [-o OUT]
    deepspectral eval semseg --dataset voc12 --root DATA --run RUN [-o OUT]
    deepspectral eval discovery --dataset coco-json --images DIR --annotations FILE [--resize 480] [-o OUT]
    deepspectral eval discovery --dataset coco-json --images DIR --annotations FILE --pred instances.json

``OUT/results.json`` holds the aggregate metrics at its top level (``corloc``; or
``miou``, ``accuracy``, ``max_fbeta``; or ``box_ap`` ... ``corloc_top`` for ``discovery``;
fractions in [0, 1]), ``per_image`` scores, the
settings, the paper's number for the same setting and the library version. The metrics are
over every image of the dataset: an image that failed, or has no prediction with
``--pred``, counts as a miss (no box; an empty mask), is listed in ``OUT/errors.json`` and
makes the exit status 1; the printed result says what the metrics are over;
``OUT/figure.png`` is a picture grid (image, Fiedler eigenvector, box green when correct /
red when not against the ground truth in blue, mask) and ``OUT/iou_histogram.png`` the
histogram of per-image IoU. ``--sweep knn_lambda=0,1,8,10`` runs a grid of settings
(``OUT/<setting>/results.json`` each, ``OUT/sweep.json``) and prints a Table 7-style table.

This module is the command line only (options, tables, files). The evaluators are in
:mod:`deepspectral.evaluation`, the pictures in :mod:`deepspectral.viz`, the paper's
numbers in :mod:`deepspectral.paper`.
"""

from __future__ import annotations

import argparse
import itertools
import math
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from .. import defaults
from ..evaluation import FIGURE_ROWS
from .common import EXIT_INTERRUPTED, EXIT_USAGE, UsageError, report_error
from .outputs import local_out_folder
from .options import (
    add_backbone,
    add_decomposition,
    add_engine,
    backbone_from_args,
    check_weights_and_out,
    device_type,
    non_negative_float,
    non_negative_int,
    number_type,
    positive_float,
    positive_int,
    require_crf,
    store_from_args,
)

if TYPE_CHECKING:  # pragma: no cover
    from ..evaluation import EvalResult
    from ..paper import PaperNumber

__all__ = ["register", "RESULTS_FILE", "SWEEP_KEYS"]

RESULTS_FILE = "results.json"
FIGURE_FILE = "figure.png"
HISTOGRAM_FILE = "iou_histogram.png"
SWEEP_FILE = "sweep.json"
#: Failed images named on stderr when there is no output folder to list them all.
_FAILED_NAMED = 5


def _choice(names: tuple[str, ...]):
    """An argparse ``type``: one of ``names``."""

    def parse(text: str) -> str:
        if text not in names:
            raise argparse.ArgumentTypeError(f"expected one of {', '.join(names)}, got {text!r}")
        return text

    return parse


def _backbone_name(text: str) -> str:
    """An argparse ``type``: a registered backbone (the registry is read when used)."""
    from ..backbones import BACKBONES

    return _choice(tuple(sorted(BACKBONES)))(text)


#: Settings a --sweep may vary, with the validated types of their options.
SWEEP_KEYS = {
    "knn_lambda": non_negative_float,
    "n_eigenvectors": number_type(int, 2),
    "max_size": non_negative_int,
    "block": int,
    "feature": _choice(defaults.FEATURE_KINDS),
    "backbone": _backbone_name,
    "knn_kernel": _choice(defaults.KNN_KERNELS),
    "method": _choice(defaults.METHOD_NAMES),
}


# ---------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------


def _sweep(text: str) -> tuple[str, list]:
    """An argparse ``type``: ``SETTING=V1,V2,...`` as ``(setting, [values])``, each value
    checked as its option would be."""
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected SETTING=V1,V2,..., got {text!r}")
    key, _, values = text.partition("=")
    key = key.strip().replace("-", "_")
    if key not in SWEEP_KEYS:
        raise argparse.ArgumentTypeError(f"setting {key!r} cannot be swept; choose from {', '.join(SWEEP_KEYS)}")
    try:
        parsed = [SWEEP_KEYS[key](v.strip()) for v in values.split(",") if v.strip()]
    except argparse.ArgumentTypeError as error:
        raise argparse.ArgumentTypeError(f"bad values for {key}: {error}") from None
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad values for {key}: {values!r}") from None
    if not parsed:
        raise argparse.ArgumentTypeError(f"no values given for {key}")
    return key, parsed


def _methods(text: str) -> list[str]:
    """An argparse ``type``: ``dsm``, ``tokencut`` or a comma-separated list of them."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in defaults.METHOD_NAMES]
    if not names or unknown:
        raise argparse.ArgumentTypeError(f"expected one or more of {', '.join(defaults.METHOD_NAMES)}, got {text!r}")
    return list(dict.fromkeys(names))


def _add_dataset_arguments(parser, datasets, *, masks: bool = True) -> None:
    group = parser.add_argument_group("dataset")
    group.add_argument("--dataset", required=True, choices=datasets, help="which benchmark (or your own data)")
    group.add_argument("--root", type=Path, default=None, metavar="DIR", help="folder holding the dataset")
    group.add_argument("--images", type=Path, default=None, metavar="DIR",
                       help="image folder (--dataset coco-json" + (" / masks)" if masks else ")"))  # fmt: skip
    if masks:
        group.add_argument("--masks", type=Path, default=None, metavar="DIR", help="mask folder (--dataset masks)")
    else:
        parser.set_defaults(masks=None)
    group.add_argument("--annotations", type=Path, default=None, metavar="FILE", help="COCO json (--dataset coco-json)")
    group.add_argument(
        "--image-list", type=Path, default=None, metavar="FILE",
        help="text file of image names to keep (COCO datasets; replaces the shipped COCO20k list)",
    )  # fmt: skip
    group.add_argument("--limit", type=positive_int, default=None, metavar="N", help="evaluate N images only")
    group.add_argument(
        "--seed", type=non_negative_int, default=None,
        help="with --limit: draw the N images at random with this seed (default: the first N)",
    )  # fmt: skip


def _add_run_arguments(parser) -> None:
    out = parser.add_argument_group("outputs")
    out.add_argument("-o", "--out", type=local_out_folder, default=None, metavar="OUT", help="write OUT/results.json and pictures")
    out.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    out.add_argument("--figure-rows", type=non_negative_int, default=FIGURE_ROWS,
                     help="images shown in OUT/figure.png (0: none)")  # fmt: skip
    add_backbone(parser)
    add_decomposition(parser)
    parser.add_argument("--knn-kernel", choices=defaults.KNN_KERNELS, default=defaults.KNN_KERNEL,
                        help="edge weights of the colour affinity (binary: the paper's code)")  # fmt: skip
    parser.add_argument(
        "--method", type=_methods, default=[defaults.METHOD], metavar="M[,M...]",
        help=f"recipe(s) to score ({', '.join(defaults.METHOD_NAMES)}); several, comma-separated, are scored on the "
        "same images in one run and compared in one table (OUT/sweep.json); each uses its own defaults "
        "(tokencut: tau, eps, and the bilateral solver for masks unless --no-crf)",
    )  # fmt: skip
    parser.add_argument(
        "--sweep", type=_sweep, action="append", default=[], metavar="SETTING=V1,V2",
        help=f"ablation grid over a setting ({', '.join(SWEEP_KEYS)}); repeat for several",
    )  # fmt: skip
    add_engine(parser)  # the cache defaults to OUT/.cache when -o is given, else none


def _add_discovery_arguments(parser) -> None:
    """``deepspectral discover``'s options, for ``eval discovery`` without ``--pred``."""
    from .discover import max_objects_type

    add_backbone(parser)
    parser.set_defaults(max_size=defaults.DISCOVER_MAX_SIZE)
    objects = parser.add_argument_group("discovery (without --pred; as deepspectral discover)")
    objects.add_argument("--max-objects", type=max_objects_type, default=defaults.MAX_OBJECTS, metavar="{N,auto}",
                         help=f"cuts per image; auto: up to {defaults.AUTO_MAX_OBJECTS}, stopping at the first cut "
                         "whose score is below --min-score")  # fmt: skip
    objects.add_argument("--min-score", type=non_negative_float, default=None,
                         help=f"stop below this cut score (default: {defaults.AUTO_MIN_SCORE} with auto, else never)")  # fmt: skip
    objects.add_argument("--resize", type=positive_int, default=None, metavar="S",
                         help="resize every image to S x S first (MaskCut: 480); default: keep the aspect ratio, "
                         "longest side --max-size")  # fmt: skip
    objects.add_argument("--refine", choices=defaults.DISCOVER_REFINEMENTS, default=defaults.DISCOVER_REFINE,
                         help="MaskCut's dense CRF on each mask (needs pydensecrf) or none")  # fmt: skip
    objects.add_argument("--tau", type=number_type(float, -1), default=defaults.MASKCUT_TAU,
                         help="cosine above which two patches are linked")  # fmt: skip
    objects.add_argument("--eps", type=positive_float, default=defaults.TOKENCUT_EPS,
                         help="weight of the other pairs of patches")  # fmt: skip
    objects.add_argument("--figure-rows", type=non_negative_int, default=FIGURE_ROWS,
                         help="images shown in OUT/figure.png: ground-truth boxes, discovered instances (0: none)")  # fmt: skip
    add_engine(parser)  # the cache defaults to OUT/.cache when -o is given, else none


def register(commands, formatter) -> None:
    """Add ``deepspectral eval {localization,segmentation,semseg,discovery}``."""
    from ..data.datasets import LOCALIZATION_DATASETS, SEGMENTATION_DATASETS

    evaluate = commands.add_parser(
        "eval", formatter_class=formatter, help="reproduce the paper's tables on a dataset",
        description="Evaluate on a benchmark and print our numbers next to the paper's.",
    )  # fmt: skip
    tasks = evaluate.add_subparsers(dest="eval_task", metavar="TASK", required=True)

    loc = tasks.add_parser("localization", formatter_class=formatter, help="CorLoc (Tables 1, 2, 7)",
                           description="CorLoc: share of images whose box has IoU >= 0.5 with any ground-truth box.")  # fmt: skip
    _add_dataset_arguments(loc, LOCALIZATION_DATASETS + SEGMENTATION_DATASETS)
    loc.add_argument("--pred", type=Path, default=None, metavar="FILE", help="score existing boxes (boxes.json) instead")
    _add_run_arguments(loc)
    loc.set_defaults(run=_run_eval)

    seg = tasks.add_parser("segmentation", formatter_class=formatter, help="mIoU, accuracy, max F-beta (Table 3)",
                           description="Single-object segmentation: mean per-image IoU, pixel accuracy, max F_beta.")  # fmt: skip
    _add_dataset_arguments(seg, SEGMENTATION_DATASETS + ("coco-json",))
    seg.add_argument("--no-crf", dest="crf", action="store_false", help="skip the dense CRF (coarse mask upsampled)")
    seg.add_argument("--pred", type=Path, default=None, metavar="DIR", help="score existing masks (DIR/<image>.png) instead")
    _add_run_arguments(seg)
    seg.set_defaults(run=_run_eval)

    sem = tasks.add_parser("semseg", formatter_class=formatter, help="semantic mIoU after Hungarian matching (Table 4)",
                           description="Semantic segmentation of a run made by deepspectral semseg, on VOC12 val.")  # fmt: skip
    sem.add_argument("--dataset", required=True, choices=("voc12",))
    sem.add_argument("--root", type=Path, required=True, metavar="DIR")
    sem.add_argument("--split", default="val", help="ImageSets/Segmentation list")
    sem.add_argument("--run", dest="run_dir", type=Path, required=True, metavar="RUN",
                     help="folder of a semantic-segmentation run (deepspectral semseg)")  # fmt: skip
    sem.add_argument("--majority", action="store_true", help="majority-vote mapping (over-clustering, Table 11)")
    sem.add_argument("--use", choices=("auto", "clusters", "model"), default="auto",
                     help="predict with the self-trained model or the clustering (auto: the model when the run has one)")
    sem.add_argument("--weights", type=Path, default=None, metavar="FILE", help="weights of the run's backbone (offline)")
    sem.add_argument("--device", type=device_type, default="auto", metavar="{auto,cpu,cuda,cuda:N,mps}",
                     help="where the backbone / model runs")  # fmt: skip
    sem.add_argument("--limit", type=positive_int, default=None, metavar="N", help="evaluate N images only")
    sem.add_argument("--seed", type=non_negative_int, default=None, help="with --limit: draw the N images at random")
    sem.add_argument("-o", "--out", type=local_out_folder, default=None, metavar="OUT")
    sem.add_argument("-q", "--quiet", action="store_true")
    sem.set_defaults(run=_run_semseg)

    disc = tasks.add_parser(
        "discovery", formatter_class=formatter, help="class-agnostic AP / AR and CorLoc of several objects per image",
        description="Object discovery (several objects per image, deepspectral discover): class-agnostic box and mask "
        "AP, AP50, AP75, AR@1/3/10/100 by pycocotools' COCOeval (every category merged into one, crowd regions "
        "ignored), multi-object CorLoc (share of ground-truth objects hit by a predicted box with IoU >= 0.5) and "
        "the top box's CorLoc (share of images whose highest-scored box has IoU >= 0.5 with an object). VOC has "
        "boxes only: no mask metrics. Needs pycocotools (pip install \"deepspectral[coco]\").",
    )  # fmt: skip
    _add_dataset_arguments(disc, LOCALIZATION_DATASETS, masks=False)
    disc.add_argument("--pred", type=Path, default=None, metavar="FILE",
                      help="score a COCO instances file (deepspectral discover's OUT/instances.json), its images "
                      "matched to the dataset's by file name, instead of running the discovery")  # fmt: skip
    disc.add_argument("-o", "--out", type=local_out_folder, default=None, metavar="OUT",
                      help="write OUT/results.json (and, when the discovery runs, its OUT/instances.json)")  # fmt: skip
    disc.add_argument("-q", "--quiet", action="store_true", help="no progress bar, no notes on stderr")
    _add_discovery_arguments(disc)
    disc.set_defaults(run=_run_discovery)


# ---------------------------------------------------------------------------------------
# Running the evaluations
# ---------------------------------------------------------------------------------------


def _error(message: str) -> int:
    """Report ``message`` (:func:`report_error`); the usage exit status."""
    report_error(message)
    return EXIT_USAGE


def _load(args):
    """The dataset the options name, limited / drawn as asked; ``ValueError`` when it has
    no images."""
    from ..data.datasets import load_dataset

    dataset = load_dataset(
        args.dataset, root=args.root, images=args.images, masks=args.masks, annotations=args.annotations,
        image_list=args.image_list,
    )  # fmt: skip
    if args.eval_task == "segmentation" and args.dataset == "coco-json":
        dataset.task = "segmentation"  # the largest non-crowd instance is the object
    dataset = dataset.subset(limit=args.limit, seed=args.seed)
    if not len(dataset):
        raise ValueError(f"--dataset {args.dataset}: no images found")
    return dataset


def _settings(args) -> dict:
    """The backbone and decomposition settings of a run (what a --sweep varies)."""
    return {
        "backbone": args.backbone, "block": args.block, "feature": args.feature, "precision": args.precision,
        "max_size": args.max_size,
        "knn_lambda": args.knn_lambda, "n_eigenvectors": args.n_eigenvectors, "knn_kernel": args.knn_kernel,
        "method": args.method[0],
    }  # fmt: skip


def _run_eval(args: argparse.Namespace) -> int:
    """``eval localization`` / ``eval segmentation``: exit status 0, 1 when an image failed,
    2 on bad arguments or an unavailable backbone, 130 on Ctrl-C."""
    from ..engine import Engine
    from ..errors import FATAL_ERRORS
    from ..evaluation import evaluate_localization, evaluate_segmentation, score_box_predictions, score_mask_predictions

    check_weights_and_out(args)
    try:
        dataset = _load(args)
    except ValueError as error:
        return _error(str(error))
    verbose = not args.quiet
    for note in dataset.notes:
        print(f"{dataset.name}: {note}", file=sys.stderr)
    task = args.eval_task
    if task == "segmentation" and args.crf and args.pred is None:
        require_crf()

    if args.pred is not None:  # score existing predictions
        try:
            if task == "localization":
                import json

                predictions = json.loads(Path(args.pred).read_text(encoding="utf-8"))
                result = score_box_predictions(dataset, predictions, verbose=verbose)
            else:
                if not Path(args.pred).is_dir():
                    return _error(f"--pred: no such folder: '{args.pred}'")
                result = score_mask_predictions(dataset, args.pred, verbose=verbose)
        except (OSError, ValueError) as error:
            return _error(f"--pred: {error}")
        settings = {"pred": str(args.pred)}
        print(f"\n{task} on {dataset.name}: {len(dataset)} images, {len(result.per_image)} scored, "
              f"{len(result.errors)} failed (no usable prediction)")  # fmt: skip
        _print_scope(result)
        _print_table(["metric", "ours", "paper", "source"], _summary_rows(result, None))
        if args.out is not None:
            _write_outputs(args.out, result, settings, None, 0)
        _print_failed(result, args.out)
        return 1 if result.errors else 0

    base = _settings(args)
    sweeps = ([("method", args.method)] if len(args.method) > 1 else []) + list(args.sweep)
    sweep_keys = [k for k, _ in sweeps]
    combos = [dict(zip(sweep_keys, values)) for values in itertools.product(*[v for _, v in sweeps])] or [{}]
    backbone, store, summary = None, None, []
    for combo in combos:
        settings = dict(base, **combo)
        try:
            loaded = None if backbone is None else (backbone.name, backbone.block, backbone.feature)
            if loaded != (settings["backbone"], settings["block"], settings["feature"]):
                backbone = _backbone(args, settings)
                if store is None and (args.cache is not None or args.out is not None) and not args.no_cache:
                    store = store_from_args(args, backbone)
            engine = Engine(
                backbone, max_size=settings["max_size"] or None, knn_lambda=settings["knn_lambda"],
                n_eigenvectors=settings["n_eigenvectors"], knn_kernel=settings["knn_kernel"], store=store,
                batch_size=args.batch_size, workers=args.workers, eigen_backend=args.eigen_backend,
                method=settings["method"], use="boxes" if task == "localization" else "masks",
            )  # fmt: skip
            if task == "localization":
                result = evaluate_localization(dataset, engine, verbose=verbose, figure_rows=args.figure_rows)
            else:
                # the paper's recipe: the CRF as asked; another recipe: its own refinement unless --no-crf
                crf = args.crf if settings["method"] == defaults.METHOD or not args.crf else None
                result = evaluate_segmentation(dataset, engine, crf=crf, verbose=verbose,
                                               figure_rows=args.figure_rows)  # fmt: skip
        except ValueError as error:  # settings that do not go together (e.g. a recipe and a backend)
            return _error(str(error))
        except (*FATAL_ERRORS, UsageError) as error:
            return _error(str(error))
        except KeyboardInterrupt:
            _error("interrupted (rerun the same command: what was computed is cached)")
            return EXIT_INTERRUPTED
        paper = _paper_for(task, dataset.name, settings)
        if task == "segmentation":
            settings["crf"] = bool(args.crf)
        settings.update({"dataset": dataset.name, "limit": args.limit, "seed": args.seed})
        label = _setting_name(combo) if combo else ""
        heading = f"{task} on {dataset.name}" + (f" [{label}]" if label else "")
        print(
            f"\n{heading}: {len(result.per_image)} images, {len(result.errors)} failed, "
            f"{result.seconds / max(len(result.per_image) + len(result.errors), 1):.2f} s per image "
            + (f"({settings['backbone']}, knn_lambda={settings['knn_lambda']:g})" if settings["method"] == defaults.METHOD
               else f"({settings['backbone']}, {settings['method']})")
        )
        _print_scope(result)
        _print_table(["metric", "ours", "paper", "source"], _summary_rows(result, paper))
        target = None
        if args.out is not None:
            target = args.out if not combo else args.out / label.replace("=", "-").replace(",", "_")
            _write_outputs(target, result, settings, paper, args.figure_rows)
        _print_failed(result, target)
        summary.append((combo, result, paper))

    if combo and len(combos) > 1:
        _print_sweep(task, summary, args.out)
    failed = any(result.errors for _, result, _ in summary)
    return 1 if failed else 0


def _run_semseg(args: argparse.Namespace) -> int:
    """``eval semseg``: exit status 0, 1 when an image failed, 2 on bad arguments or a run
    that cannot be loaded."""
    from ..backbones import WeightsUnavailableError
    from ..data.datasets import VOC_CLASSES, load_voc_segmentation
    from ..evaluation import evaluate_semseg
    from ..files import atomic_write_json
    from ..paper import paper_number

    check_weights_and_out(args)
    try:
        dataset = load_voc_segmentation(args.root, year=2012, split=args.split).subset(limit=args.limit, seed=args.seed)
    except ValueError as error:
        return _error(str(error))
    if not args.run_dir.is_dir():
        return _error(f"--run: no such folder: '{args.run_dir}'")
    try:
        from ..tasks.semantic import load_run
    except ImportError as error:
        return _error(f"semantic segmentation is not available in this installation: {error}")
    try:
        run = load_run(args.run_dir, device=args.device, weights=args.weights, use=args.use)
        if hasattr(run, "prepare"):
            run.prepare()  # load the backbone / network now: a missing or changed file is a usage error
    except WeightsUnavailableError as error:
        return _error(str(error))
    except (OSError, ValueError, KeyError, RuntimeError) as error:
        return _error(f"--run: cannot load '{args.run_dir}': {error}")
    result, scores = evaluate_semseg(dataset, run.predict, majority=args.majority, verbose=not args.quiet)
    n_clusters = int(scores.confusion.shape[0]) - 1
    self_trained = getattr(run, "use", args.use) == "model"
    method = getattr(getattr(run, "settings", None), "method", "spectral")  # semseg fit --method
    paper = paper_number(
        "semantic", "voc12", backbone="", n_clusters=n_clusters, self_training=self_trained, method=method
    )
    print(f"\nsemantic segmentation on VOC12 {args.split}: {len(result.per_image)} images, {len(result.errors)} failed, "
          f"{scores.method} matching")  # fmt: skip
    _print_scope(result)
    _print_table(["metric", "ours", "paper", "source"], _summary_rows(result, paper))
    print("\nIoU per class:")
    _print_table(["class", "IoU"], [[name, _fmt(float(v), True)] for name, v in zip(VOC_CLASSES, scores.iou_per_class)])
    if args.out is not None:
        payload = result.to_json(settings={"run": str(args.run_dir), "split": args.split, "limit": args.limit,
                                           "seed": args.seed, "matching": scores.method,
                                           "method": method, "self_training": self_trained},
                                 paper=paper)  # fmt: skip
        payload.update({"iou_per_class": scores.to_dict(VOC_CLASSES)["iou_per_class"],
                        "mapping": scores.to_dict()["mapping"]})  # fmt: skip
        atomic_write_json(args.out / RESULTS_FILE, payload)
        _write_errors(args.out, result)
    _print_failed(result, args.out)
    return 1 if result.errors else 0


def _run_discovery(args: argparse.Namespace) -> int:
    """``eval discovery``: exit status 0, 1 when a dataset image had no usable prediction,
    2 on bad arguments, an unreadable or non-matching prediction file or no pycocotools."""
    import json

    from ..discovery_eval import check_pycocotools_available
    from ..evaluation import score_instance_predictions

    check_weights_and_out(args)
    try:
        check_pycocotools_available()
    except ImportError as error:
        return _error(str(error))
    if args.pred is not None and not args.pred.is_file():
        return _error(f"--pred: no such file: '{args.pred}'")
    if args.pred is None:
        try:
            _check_discovery_args(args)
        except UsageError as error:
            return _error(str(error))
    try:
        dataset = _load(args)
    except ValueError as error:
        return _error(str(error))
    instances = None
    if args.pred is not None:
        try:
            predictions = json.loads(args.pred.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            return _error(f"--pred: cannot read '{args.pred}' as json: {error}")
        try:
            result = score_instance_predictions(dataset, predictions, verbose=not args.quiet)
        except ValueError as error:
            return _error(f"--pred: '{args.pred}': {error}")
        settings = {"pred": str(args.pred)}
        what = f"{len(result.errors)} without a usable prediction (class-agnostic, {args.pred})"
    else:
        for note in dataset.notes:
            print(f"{dataset.name}: {note}", file=sys.stderr)
        try:
            result, instances, settings = _run_discovery_on(args, dataset)
        except (UsageError, ValueError) as error:
            return _error(str(error))
        except KeyboardInterrupt:
            _error("interrupted (rerun the same command: what was computed is cached)")
            return EXIT_INTERRUPTED
        what = (f"{len(result.errors)} failed, {result.seconds / max(len(dataset), 1):.2f} s per image "
                f"(class-agnostic; {settings['backbone']}, --max-objects {settings['max_objects']})")  # fmt: skip
    if args.pred is not None:
        for note in dataset.notes:  # after the checks: a refused file is refused in one line
            print(f"{dataset.name}: {note}", file=sys.stderr)
    print(f"\ndiscovery on {dataset.name}: {len(dataset)} images, {what}")
    _print_scope(result)
    _print_discovery_table(result)
    if args.out is not None:
        from ..files import atomic_write_json

        args.out.mkdir(parents=True, exist_ok=True)
        settings.update({"dataset": dataset.name, "limit": args.limit, "seed": args.seed})
        atomic_write_json(args.out / RESULTS_FILE, result.to_json(settings=settings))
        if instances is not None:
            from ..files import save_png_atomic
            from ..viz import picture_grid
            from .discover import INSTANCES_FILE

            atomic_write_json(args.out / INSTANCES_FILE, instances)
            if result.figure_rows:
                save_png_atomic(args.out / FIGURE_FILE, picture_grid(result.figure_rows))
        _write_errors(args.out, result)
    _print_failed(result, args.out)
    return 1 if result.errors else 0


def _check_discovery_args(args: argparse.Namespace) -> None:
    """The discovery's settings, refused in one line (:class:`UsageError`) before any work."""
    from .discover import check_cut_args

    check_cut_args(args)
    if args.refine == "crf":
        require_crf()


def _run_discovery_on(args: argparse.Namespace, dataset) -> tuple:
    """Run ``deepspectral discover``'s pipeline on the dataset's images (the engine as that
    command builds it: features only, MaskCut's square with ``--resize``) and score it:
    ``(EvalResult, instances dict, settings)``."""
    from ..engine import Engine
    from ..evaluation import evaluate_discovery
    from ..tasks.discover import SquareInput

    backbone = backbone_from_args(args)
    store = None
    if (args.cache is not None or args.out is not None) and not args.no_cache:
        store = store_from_args(args, backbone, paths=[sample.image_path for sample in dataset], n_eigenvectors=0)
    engine = Engine(
        SquareInput(backbone, args.resize) if args.resize else backbone,
        max_size=None if args.resize else (args.max_size or None), decompose=False, keep_features=True,
        batch_size=args.batch_size, workers=args.workers, method="tokencut",
        method_params={"tau": args.tau, "eps": args.eps}, use="masks", store=store,
    )  # fmt: skip
    options = {"max_objects": args.max_objects, "min_score": args.min_score, "tau": args.tau, "eps": args.eps,
               "refine": args.refine}  # fmt: skip
    result, instances = evaluate_discovery(dataset, engine, verbose=not args.quiet, figure_rows=args.figure_rows, **options)
    settings = {"backbone": args.backbone, "block": args.block, "feature": args.feature, "precision": args.precision,
                "max_size": None if args.resize else args.max_size, "resize": args.resize, **options}  # fmt: skip
    return result, instances, settings


def _print_discovery_table(result: EvalResult) -> None:
    """Box and mask AP / AR side by side (percent; ``n/a`` where there are no masks), then
    the two CorLocs."""
    from ..discovery_eval import METRIC_NAMES

    metrics = result.metrics
    has_masks = any(metrics.get(f"mask_{name}") is not None for name in METRIC_NAMES)
    label = lambda name: name.upper() if name.startswith("ap") else f"AR@{name[2:]}"  # noqa: E731
    rows = [
        [label(name), _fmt(metrics[f"box_{name}"], True), _fmt(metrics[f"mask_{name}"], True) if has_masks else "n/a"]
        for name in METRIC_NAMES
    ]
    rows.append(["CorLoc, objects", _fmt(metrics["corloc_objects"], True), ""])
    rows.append(["CorLoc, top box", _fmt(metrics["corloc_top"], True), ""])
    _print_table(["metric", "box", "mask"], rows)


# ---------------------------------------------------------------------------------------
# Tables and files
# ---------------------------------------------------------------------------------------


def _paper_for(task: str, dataset: str, settings: dict) -> PaperNumber | None:
    """The paper's number for a localization / segmentation run's settings (None for
    another recipe than the paper's)."""
    from ..paper import paper_number

    if settings.get("method", defaults.METHOD) != defaults.METHOD:
        return None

    return paper_number(
        task, dataset, backbone=settings.get("backbone", ""), knn_lambda=settings.get("knn_lambda"),
        feature=settings.get("feature", "k"), block=settings.get("block", -1),
    )  # fmt: skip


def _fmt(value, percent: bool) -> str:
    """A metric as printed: percent with one decimal, or a fraction with three; ``-``
    when there is none."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{100 * value:.1f}" if percent else f"{value:.3f}"


def _print_table(header: list[str], rows: list[list[str]]) -> None:
    """Print a table with left-aligned columns."""
    widths = [max(len(str(r[i])) for r in [header] + rows) for i in range(len(header))]
    line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths))  # noqa: E731
    print(line(header))
    print("  ".join("-" * w for w in widths))
    for row in rows:
        print(line(row))


def _summary_rows(result: EvalResult, paper: PaperNumber | None) -> list[list[str]]:
    """``[metric, ours, paper, source]`` rows; the paper's column only for its metric."""
    percent = result.task in ("localization", "semantic")
    rows = []
    for key, value in result.metrics.items():
        theirs = paper.value if (paper is not None and paper.metric == key) else None
        source = f"{paper.table} ({paper.note})" if theirs is not None else ""
        rows.append([key, _fmt(value, percent), _fmt(theirs, percent), source])
    return rows


def _print_scope(result: EvalResult) -> None:
    """The line saying what the metrics are over (their denominator) and how failed images
    count."""
    if result.scope:
        print(f"({result.scope})")


def _print_failed(result: EvalResult, out: Path | None) -> None:
    """On stderr: how many images failed and where they are listed (the first few named
    when there is no output folder)."""
    from ..engine import ERRORS_FILE

    if not result.errors:
        return
    if out is not None:
        where = f"listed in {out / ERRORS_FILE}"
    else:
        names = ", ".join(record["image"] for record in result.errors[:_FAILED_NAMED])
        more = f", ... ({len(result.errors)} in all)" if len(result.errors) > _FAILED_NAMED else ""
        where = f"{names}{more} (-o OUT lists them all in OUT/{ERRORS_FILE})"
    print(f"{len(result.errors)} image(s) failed: {where}", file=sys.stderr)


def _write_errors(out: Path, result: EvalResult) -> None:
    """``OUT/errors.json``: the failed images, ``{"image", "error"}`` each, as every
    command writes it; an ``errors.json`` left by an earlier run is removed when none
    failed."""
    from ..engine import ERRORS_FILE
    from ..files import atomic_write_json

    path = out / ERRORS_FILE
    if result.errors:
        atomic_write_json(path, result.errors)
    elif path.exists():
        path.unlink()


def _write_outputs(out: Path, result: EvalResult, settings: dict, paper: PaperNumber | None, figure_rows: int) -> None:
    """``OUT/results.json``, ``OUT/errors.json`` (when an image failed),
    ``OUT/figure.png`` (when there are picture rows) and ``OUT/iou_histogram.png`` (when
    there are per-image IoUs), written atomically."""
    from ..files import atomic_write_json, save_png_atomic
    from ..viz import iou_histogram, picture_grid

    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / RESULTS_FILE, result.to_json(settings=settings, paper=paper))
    _write_errors(out, result)
    if result.figure_rows and figure_rows > 0:
        save_png_atomic(out / FIGURE_FILE, picture_grid(result.figure_rows[:figure_rows]))
    ious = [r.get("iou") for r in result.per_image if r.get("iou") is not None]
    if ious:
        save_png_atomic(out / HISTOGRAM_FILE, iou_histogram(ious))


def _setting_name(combo: dict) -> str:
    """``knn_lambda=0,backbone=dino_vits16``: a sweep setting's label."""
    return ",".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in combo.items())


def _print_sweep(task: str, summary: list, out: Path | None) -> None:
    """Print one table of a sweep (one row a setting: every metric, ms per image, the
    paper's number where it has one) and write ``OUT/sweep.json``."""
    from ..files import atomic_write_json

    metric = "corloc" if task == "localization" else "miou"
    keys = list(summary[0][0])
    names = list(summary[0][1].metrics)
    print(f"\nComparison, Table 7 style ({', '.join(names)}; the paper's {metric} where it has one):")
    header = keys + names + ["ms per image", "paper", "source"]
    rows, records = [], []
    for combo, result, paper in summary:
        theirs = paper.value if paper is not None and paper.metric == metric else None
        count = len(result.per_image) + len(result.errors)
        ms = 1000.0 * result.seconds / count if count else float("nan")
        rows.append(
            [f"{combo[k]:g}" if isinstance(combo[k], float) else str(combo[k]) for k in keys]
            + [_fmt(result.metrics.get(name), name == "corloc") for name in names]
            + [f"{ms:.0f}", _fmt(theirs, metric == "corloc"), paper.table if theirs is not None else ""]
        )
        records.append(
            {"settings": combo, **{name: _json_number(result.metrics.get(name)) for name in names},
             "ms_per_image": _json_number(ms), "paper": None if paper is None else paper.value}
        )  # fmt: skip
    _print_table(header, rows)
    if out is not None:
        atomic_write_json(out / SWEEP_FILE, records)


def _json_number(value):
    """``value``, or ``None`` for a non-finite float (JSON has no NaN)."""
    return None if isinstance(value, float) and not math.isfinite(value) else value


def _backbone(args: argparse.Namespace, settings: dict):
    """The backbone of one (sweep) setting; a failure to load it is a :class:`UsageError`."""
    return backbone_from_args(argparse.Namespace(
        backbone=settings["backbone"], weights=args.weights, device=args.device, block=settings["block"],
        feature=settings["feature"], precision=settings["precision"],
    ))  # fmt: skip
