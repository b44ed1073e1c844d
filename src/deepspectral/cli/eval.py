"""``deepspectral eval``: the paper's tables, one command each, with pictures.

::

    deepspectral eval localization --dataset voc07 --root DATA [--backbone dino_vitb8] [-o OUT]
    deepspectral eval localization --pred out/boxes.json --dataset voc07 --root DATA
    deepspectral eval segmentation --dataset ecssd --root DATA [--no-crf] [-o OUT]
    deepspectral eval semseg --dataset voc12 --root DATA --run RUN [-o OUT]

``OUT/results.json`` holds the aggregate metrics at its top level (``corloc``; or
``miou``, ``accuracy``, ``max_fbeta``; fractions in [0, 1]), ``per_image`` scores, the
settings, the paper's number for the same setting and the library version;
``OUT/figure.png`` is a picture grid (image, Fiedler eigenvector, box green when correct /
red when not against the ground truth in blue, mask) and ``OUT/iou_histogram.png`` the
histogram of per-image IoU. ``--sweep knn_lambda=0,1,8,10`` runs a grid of settings
(``OUT/<setting>/results.json`` each, ``OUT/sweep.json``) and prints a Table 7-style table.

The library functions :func:`evaluate_localization` and :func:`evaluate_segmentation`
take any ``decompose_fn(image, sample) -> Decomposition`` (the tests pass oracle features).
"""

from __future__ import annotations

import argparse
import itertools
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from .options import number_type

__all__ = [
    "register",
    "EvalResult",
    "evaluate_localization",
    "evaluate_segmentation",
    "score_box_predictions",
    "score_mask_predictions",
    "evaluate_semseg",
    "mask_boxes",
    "picture_grid",
    "iou_histogram",
    "RESULTS_FILE",
    "SWEEP_KEYS",
]

RESULTS_FILE = "results.json"
FIGURE_FILE = "figure.png"
HISTOGRAM_FILE = "iou_histogram.png"
#: Rows of the picture grid (first images of the run).
FIGURE_ROWS = 8
#: Height of one row of the picture grid, pixels.
FIGURE_ROW_HEIGHT = 160
#: Settings a --sweep may vary, with their parsers.
SWEEP_KEYS = {
    "knn_lambda": float,
    "n_eigenvectors": int,
    "max_size": int,
    "block": int,
    "feature": str,
    "backbone": str,
    "knn_kernel": str,
}
_GREEN, _RED, _BLUE = (0, 200, 0), (230, 0, 0), (40, 90, 255)


# ---------------------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------------------


@dataclass
class EvalResult:
    """What one evaluation produced.

    Attributes
    ----------
    task : str
    dataset : str
    metrics : dict
        ``{"corloc": ...}`` or ``{"miou": ..., "accuracy": ..., "max_fbeta": ...}``.
    per_image : list of dict
    errors : list of dict
        ``{"image": id, "error": message}`` for the images that failed.
    seconds : float
    figure_rows : list
        Up to :data:`FIGURE_ROWS` picture rows (for :func:`picture_grid`).
    """

    task: str
    dataset: str
    metrics: dict
    per_image: list
    errors: list = field(default_factory=list)
    seconds: float = 0.0
    figure_rows: list = field(default_factory=list, repr=False)

    def to_json(self, *, settings: dict, paper=None) -> dict:
        from .._version import __version__

        out = {key: _finite(value) for key, value in self.metrics.items()}
        out.update(
            {
                "task": self.task,
                "dataset": self.dataset,
                "n_images": len(self.per_image),
                "n_failed": len(self.errors),
                "seconds": round(self.seconds, 3),
                "settings": settings,
                "paper": None
                if paper is None
                else {"value": paper.value, "table": paper.table, "metric": paper.metric, "note": paper.note, "std": paper.std},
                "version": __version__,
                "per_image": self.per_image,
                "errors": self.errors,
            }
        )
        return out


def _finite(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _loop(samples, fn: Callable, *, desc: str, verbose: bool, errors: list) -> None:
    """Call ``fn(sample)`` on every sample with a progress bar (rate and ETA); expected
    per-image errors are recorded and skipped."""
    from tqdm.auto import tqdm

    from ..runner import _expected_errors, _fatal_errors

    expected, fatal = _expected_errors(), _fatal_errors()
    progress = tqdm(samples, desc=desc, unit="img", disable=(not verbose) or None, file=sys.stderr, dynamic_ncols=True)
    try:
        for sample in progress:
            try:
                fn(sample)
            except fatal:
                raise
            except expected as error:
                message = f"{type(error).__name__}: {error}"
                errors.append({"image": sample.image_id, "error": message})
                if verbose:
                    progress.write(f"{desc}: failed on {sample.image_id}: {message}", file=sys.stderr)
    finally:
        progress.close()


def mask_boxes(mask: np.ndarray) -> np.ndarray:
    """Ground-truth boxes of a mask: the box of the whole mask and of each 8-connected
    component, ``(M, 4)`` continuous ``xyxy``. For CorLoc on mask datasets."""
    from scipy import ndimage

    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        return np.zeros((0, 4))
    labels, count = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
    boxes = []
    for region in [slice(None)] + list(ndimage.find_objects(labels)):
        if isinstance(region, slice):
            ys, xs = np.nonzero(mask)
            boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
        else:
            sy, sx = region
            boxes.append([sx.start, sy.start, sx.stop, sy.stop])
    return np.asarray(boxes, dtype=np.float64)


def _gt_boxes(sample, image_shape) -> np.ndarray:
    if sample.boxes_xyxy is not None:
        return sample.boxes_xyxy
    return mask_boxes(sample.load_mask())


# ---------------------------------------------------------------------------------------
# Evaluations
# ---------------------------------------------------------------------------------------


def evaluate_localization(
    dataset,
    decompose_fn: Callable,
    *,
    verbose: bool = True,
    figure_rows: int = FIGURE_ROWS,
) -> EvalResult:
    """CorLoc of :func:`deepspectral.localize` on a dataset.

    Parameters
    ----------
    dataset : deepspectral.data.datasets.Dataset
        With boxes (or masks: then the boxes of the mask and of its components).
    decompose_fn : callable
        ``decompose_fn(image, sample) -> Decomposition`` for the ``(H, W, 3) uint8``
        image of a sample.
    verbose : bool
        Progress bar with ETA, failures reported.
    figure_rows : int
        Picture rows kept for the grid (first images).

    Returns
    -------
    EvalResult
        ``metrics = {"corloc": ...}`` over every image of the dataset (one that failed
        counts as a miss); per image ``box_xyxy``, ``iou`` (best over the ground-truth
        boxes) and ``correct``.
    """
    from ..metrics import box_iou, corloc_hit
    from ..tasks.localize import coarse_mask, localize

    per_image, errors, rows = [], [], []
    start = time.perf_counter()

    def one(sample) -> None:
        image = sample.load_image()
        gt = _gt_boxes(sample, image.shape)
        decomposition = decompose_fn(image, sample)
        box = [int(v) for v in localize(decomposition)]
        best = float(box_iou(box, gt).max()) if len(gt) else 0.0
        correct = corloc_hit(box, gt)
        per_image.append({"image": sample.image_id, "box_xyxy": box, "iou": best, "correct": bool(correct)})
        if len(rows) < figure_rows:
            rows.append(_localization_row(image, decomposition, box, gt, correct, coarse_mask(decomposition)))

    _loop(dataset, one, desc=f"localization {dataset.name}", verbose=verbose, errors=errors)
    # an image that failed gave no box: it counts as a miss (CorLoc over the whole dataset)
    attempted = len(per_image) + len(errors)
    corloc = sum(r["correct"] for r in per_image) / attempted if attempted else float("nan")
    return EvalResult(
        "localization", dataset.name, {"corloc": corloc}, per_image, errors, time.perf_counter() - start, rows
    )


def _segmentation_scores(per_image: list, curves: list) -> dict:
    from ..metrics import max_fbeta

    if not per_image:
        return {"miou": float("nan"), "accuracy": float("nan"), "max_fbeta": float("nan")}
    return {
        "miou": float(np.mean([r["iou"] for r in per_image])),
        "accuracy": float(np.mean([r["accuracy"] for r in per_image])),
        "max_fbeta": max_fbeta([c[0] for c in curves], [c[1] for c in curves]),
    }


def evaluate_segmentation(
    dataset,
    decompose_fn: Callable,
    *,
    crf: bool = True,
    verbose: bool = True,
    figure_rows: int = FIGURE_ROWS,
) -> EvalResult:
    """mIoU (mean per-image IoU), pixel accuracy and max F_β of
    :func:`deepspectral.tasks.segment.segment_object` on a mask dataset.

    The soft map for F_β is the CRF's foreground marginal (``crf=True``) or the binary
    coarse mask (``crf=False``). Arguments as for :func:`evaluate_localization`. The
    means are over the images scored; the ones that failed are listed in ``errors``.
    """
    from ..metrics import mask_iou, pixel_accuracy, precision_recall_curve
    from ..tasks.localize import coarse_mask
    from ..tasks.segment import segment_object_probability

    per_image, errors, rows, curves = [], [], [], []
    start = time.perf_counter()

    def one(sample) -> None:
        image = sample.load_image()
        gt = sample.load_mask()
        if gt.shape != image.shape[:2]:
            raise ValueError(f"mask size {gt.shape[::-1]} differs from the image size {image.shape[1::-1]}")
        decomposition = decompose_fn(image, sample)
        probability = segment_object_probability(decomposition, image, crf=crf)
        mask = probability > 0.5
        curves.append(precision_recall_curve(probability, gt))
        per_image.append(
            {"image": sample.image_id, "iou": mask_iou(mask, gt), "accuracy": pixel_accuracy(mask, gt)}
        )
        if len(rows) < figure_rows:
            rows.append(_segmentation_row(image, decomposition, mask, gt, coarse_mask(decomposition)))

    _loop(dataset, one, desc=f"segmentation {dataset.name}", verbose=verbose, errors=errors)
    return EvalResult(
        "segmentation", dataset.name, _segmentation_scores(per_image, curves), per_image, errors,
        time.perf_counter() - start, rows,
    )  # fmt: skip


def _prediction_key(name: str) -> list[str]:
    from pathlib import PurePosixPath

    path = PurePosixPath(str(name).replace("\\", "/"))
    stem = path.with_suffix("") if path.suffix.lower() in (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff") else path
    return [stem.as_posix(), stem.name]


def score_box_predictions(dataset, predictions, *, verbose: bool = True) -> EvalResult:
    """CorLoc of existing boxes (``deepspectral localize``'s ``boxes.json``: a list of
    ``{"image": name, "box_xyxy": [x1, y1, x2, y2]}``), matched to the dataset's images by
    relative name or stem. Dataset images without a prediction count as failures."""
    from ..metrics import box_iou, corloc_hit

    table = {}
    for record in predictions:
        for key in _prediction_key(record.get("image") or record.get("file", "")):
            table.setdefault(key, record)
    per_image, errors = [], []
    start = time.perf_counter()

    def one(sample) -> None:
        record = table.get(sample.image_id) or table.get(_prediction_key(sample.image_id)[1])
        if record is None:
            raise ValueError("no prediction for this image")
        box = [float(v) for v in record["box_xyxy"]]
        gt = sample.boxes_xyxy if sample.boxes_xyxy is not None else mask_boxes(sample.load_mask())
        per_image.append(
            {
                "image": sample.image_id,
                "box_xyxy": box,
                "iou": float(box_iou(box, gt).max()) if len(gt) else 0.0,
                "correct": corloc_hit(box, gt),
            }
        )

    _loop(dataset, one, desc=f"score {dataset.name}", verbose=verbose, errors=errors)
    # a missing prediction is a wrong one: CorLoc over every image of the dataset
    n = len(per_image) + len(errors)
    corloc = sum(r["correct"] for r in per_image) / n if n else float("nan")
    return EvalResult("localization", dataset.name, {"corloc": float(corloc)}, per_image, errors, time.perf_counter() - start)


def score_mask_predictions(dataset, pred_dir, *, verbose: bool = True) -> EvalResult:
    """mIoU, accuracy and max F_β of existing masks: ``pred_dir/<image id>.png`` (or the
    stem), 8-bit, foreground >= 128 (``deepspectral segment``'s output); a greyscale map
    is used as the soft map for F_β."""
    from PIL import Image

    from ..metrics import mask_iou, pixel_accuracy, precision_recall_curve

    pred_dir = Path(pred_dir)
    per_image, errors, curves = [], [], []
    start = time.perf_counter()

    def one(sample) -> None:
        candidates = [pred_dir / f"{sample.image_id}.png", pred_dir / f"{Path(sample.image_id).name}.png"]
        path = next((p for p in candidates if p.is_file()), None)
        if path is None:
            raise ValueError(f"no predicted mask {candidates[0]}")
        gt = sample.load_mask()
        with Image.open(path) as handle:
            soft = np.asarray(handle.convert("L"), dtype=np.float32) / 255.0
        if soft.shape != gt.shape:
            raise ValueError(f"predicted mask {soft.shape[::-1]} differs from the ground truth {gt.shape[::-1]}")
        mask = soft >= 128 / 255.0
        curves.append(precision_recall_curve(soft, gt))
        per_image.append({"image": sample.image_id, "iou": mask_iou(mask, gt), "accuracy": pixel_accuracy(mask, gt)})

    _loop(dataset, one, desc=f"score {dataset.name}", verbose=verbose, errors=errors)
    return EvalResult(
        "segmentation", dataset.name, _segmentation_scores(per_image, curves), per_image, errors, time.perf_counter() - start
    )


def evaluate_semseg(dataset, predict: Callable, *, majority: bool = False, verbose: bool = True):
    """Semantic mIoU of ``predict(image) -> (H, W) uint8`` labels (0 = background,
    1..K clusters) on a label-map dataset: one confusion matrix over the dataset, then
    Hungarian matching (or majority vote when ``majority``).

    Returns
    -------
    (EvalResult, MatchedScores)
    """
    from ..metrics import confusion_matrix, hungarian_miou, majority_vote_miou

    n_classes = 21
    confusion = np.zeros((256, n_classes), dtype=np.int64)
    per_image_confusion, per_image, errors = [], [], []
    start = time.perf_counter()

    def one(sample) -> None:
        image = sample.load_image()
        gt = sample.load_labels()
        labels = np.asarray(predict(image))
        if labels.shape != gt.shape:
            raise ValueError(f"prediction {labels.shape} differs from the label map {gt.shape}")
        if labels.min() < 0 or labels.max() > 255:
            raise ValueError("prediction labels must lie in 0..255")
        valid = gt[gt != 255]
        if valid.size and valid.max() >= n_classes:
            raise ValueError(f"label map has class {int(valid.max())} >= {n_classes}")
        matrix = confusion_matrix(labels.astype(np.int64), gt, 256, n_classes)
        confusion[...] += matrix
        per_image_confusion.append((sample.image_id, matrix))

    _loop(dataset, one, desc=f"semseg {dataset.name}", verbose=verbose, errors=errors)
    used = int(np.nonzero(confusion.sum(axis=1))[0].max()) + 1 if confusion.any() else n_classes
    trimmed = confusion[: max(used, 1)]
    scores = (majority_vote_miou if majority else hungarian_miou)(trimmed)
    for image_id, matrix in per_image_confusion:
        matrix = matrix[: trimmed.shape[0]]
        hit = sum(int(matrix[c, k]) for c, k in enumerate(scores.mapping) if k >= 0)
        total = int(matrix.sum())
        per_image.append({"image": image_id, "accuracy": hit / total if total else None})
    metrics = {"miou": scores.miou, "accuracy": scores.pixel_accuracy}
    result = EvalResult("semantic", dataset.name, metrics, per_image, errors, time.perf_counter() - start)
    return result, scores


# ---------------------------------------------------------------------------------------
# Pictures
# ---------------------------------------------------------------------------------------


def _fit_height(image: np.ndarray, height: int) -> np.ndarray:
    from ..data.images import resize_image

    h, w = image.shape[:2]
    return resize_image(image, (height, max(1, round(w * height / h))))


def _eigen_panel(decomposition, shape) -> np.ndarray:
    from ..data.images import resize_image
    from ..viz import colormap

    vectors = decomposition.eigenvectors
    vector = vectors[1] if vectors.shape[0] > 1 else vectors[0]
    scale = np.abs(vector).max() or 1.0
    rgb = colormap(np.clip(0.5 + 0.5 * vector / scale, 0, 1))
    return resize_image(np.ascontiguousarray(rgb), shape[:2])


def _coarse_overlay(image, coarse) -> np.ndarray:
    from ..viz import overlay_mask

    return overlay_mask(image, coarse, color=(255, 64, 64))


def _localization_row(image, decomposition, box, gt, correct, coarse) -> list:
    from ..viz import draw_box

    picture = image
    for g in gt:
        picture = draw_box(picture, [int(round(v)) for v in g], color=_BLUE)
    picture = draw_box(picture, box, color=_GREEN if correct else _RED)
    return [image, _eigen_panel(decomposition, image.shape), picture, _coarse_overlay(image, coarse)]


def _segmentation_row(image, decomposition, mask, gt, coarse) -> list:
    from ..viz import overlay_mask

    return [
        image,
        _eigen_panel(decomposition, image.shape),
        overlay_mask(image, mask, color=(255, 64, 64)),
        overlay_mask(image, gt, color=_BLUE),
    ]


def picture_grid(rows: list, *, row_height: int = FIGURE_ROW_HEIGHT) -> np.ndarray:
    """Tile rows of panels (``(H, W, 3) uint8`` each) into one ``uint8`` picture, every
    panel scaled to ``row_height`` pixels high, rows padded to the widest."""
    if not rows:
        raise ValueError("rows: expected at least one row of panels")
    gap = 4
    lines = []
    for panels in rows:
        scaled = [_fit_height(np.asarray(p, dtype=np.uint8), row_height) for p in panels]
        parts = []
        for index, panel in enumerate(scaled):
            if index:
                parts.append(np.full((row_height, gap, 3), 255, np.uint8))
            parts.append(panel)
        lines.append(np.concatenate(parts, axis=1))
    width = max(line.shape[1] for line in lines)
    out = []
    for index, line in enumerate(lines):
        if index:
            out.append(np.full((gap, width, 3), 255, np.uint8))
        pad = np.full((row_height, width - line.shape[1], 3), 255, np.uint8)
        out.append(np.concatenate([line, pad], axis=1))
    return np.ascontiguousarray(np.concatenate(out, axis=0))


def iou_histogram(values, *, bins: int = 20, size: tuple[int, int] = (200, 400)) -> np.ndarray:
    """A bar chart of per-image IoU over ``[0, 1]`` (``bins`` bars) as ``(H, W, 3) uint8``
    (numpy only; tick marks every 0.1, a red line at 0.5)."""
    values = np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=np.float64)
    height, width = size
    margin = 10
    canvas = np.full((height, width, 3), 255, np.uint8)
    counts, _ = np.histogram(np.clip(values, 0, 1), bins=bins, range=(0.0, 1.0))
    top = max(int(counts.max()) if counts.size else 0, 1)
    plot_w, plot_h = width - 2 * margin, height - 2 * margin
    bar_w = plot_w / bins
    for index, count in enumerate(counts):
        bar_h = int(round(plot_h * count / top))
        x1 = margin + int(round(index * bar_w)) + 1
        x2 = margin + int(round((index + 1) * bar_w)) - 1
        if bar_h:
            canvas[height - margin - bar_h : height - margin, x1:x2] = (70, 110, 200)
    canvas[height - margin, margin : width - margin] = 0
    for tick in range(11):
        x = margin + int(round(tick * plot_w / 10))
        canvas[height - margin : height - margin + 5, max(x - 1, 0) : x + 1] = 0
    x_half = margin + plot_w // 2
    canvas[margin : height - margin, x_half : x_half + 1] = _RED
    return canvas


# ---------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------


def _sweep(text: str) -> tuple[str, list]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected SETTING=V1,V2,..., got {text!r}")
    key, _, values = text.partition("=")
    key = key.strip().replace("-", "_")
    if key not in SWEEP_KEYS:
        raise argparse.ArgumentTypeError(f"setting {key!r} cannot be swept; choose from {', '.join(SWEEP_KEYS)}")
    try:
        parsed = [SWEEP_KEYS[key](v.strip()) for v in values.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad values for {key}: {values!r}") from None
    if not parsed:
        raise argparse.ArgumentTypeError(f"no values given for {key}")
    return key, parsed


def _add_dataset_arguments(parser, datasets) -> None:
    group = parser.add_argument_group("dataset")
    group.add_argument("--dataset", required=True, choices=datasets, help="which benchmark (or your own data)")
    group.add_argument("--root", type=Path, default=None, metavar="DIR", help="folder holding the dataset")
    group.add_argument("--images", type=Path, default=None, metavar="DIR", help="image folder (--dataset masks / coco-json)")
    group.add_argument("--masks", type=Path, default=None, metavar="DIR", help="mask folder (--dataset masks)")
    group.add_argument("--annotations", type=Path, default=None, metavar="FILE", help="COCO json (--dataset coco-json)")
    group.add_argument(
        "--image-list", type=Path, default=None, metavar="FILE",
        help="text file of image names to keep (COCO datasets; replaces the shipped COCO20k list)",
    )  # fmt: skip
    group.add_argument("--limit", type=number_type(int, 1), default=None, metavar="N", help="evaluate N images only")
    group.add_argument(
        "--seed", type=int, default=None, help="with --limit: draw the N images at random with this seed (default: the first N)"
    )


def _add_run_arguments(parser) -> None:
    from .. import defaults
    from ..backbones import BACKBONES

    out = parser.add_argument_group("outputs")
    out.add_argument("-o", "--out", type=Path, default=None, metavar="OUT", help="write OUT/results.json and pictures")
    out.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    out.add_argument("--figure-rows", type=int, default=FIGURE_ROWS, help="images shown in OUT/figure.png (0: none)")
    model = parser.add_argument_group("backbone and decomposition")
    model.add_argument("--backbone", choices=sorted(BACKBONES), default=defaults.BACKBONE, metavar="NAME",
                       help="feature extractor, one of: " + ", ".join(sorted(BACKBONES)))  # fmt: skip
    model.add_argument("--weights", type=Path, default=None, metavar="FILE", help="checkpoint file (offline use)")
    model.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    model.add_argument("--block", type=int, default=defaults.BLOCK, help="transformer block of the features")
    model.add_argument("--feature", choices=defaults.FEATURE_KINDS, default=defaults.FEATURE)
    model.add_argument("--precision", choices=defaults.PRECISIONS, default=defaults.PRECISION,
                       help="arithmetic of the backbone (fp16: CUDA only)")  # fmt: skip
    model.add_argument("--max-size", type=int, default=defaults.MAX_SIZE, help="longest image side used (0: no limit)")
    model.add_argument("--knn-lambda", type=float, default=defaults.KNN_LAMBDA, help="weight of the colour affinity")
    model.add_argument("--n-eigenvectors", type=number_type(int, 1), default=defaults.N_EIGENVECTORS)
    model.add_argument("--knn-kernel", choices=defaults.KNN_KERNELS, default=defaults.KNN_KERNEL)
    model.add_argument("--cache", type=Path, default=None, metavar="DIR",
                       help="cache of features and eigenvectors (default: OUT/.cache when -o is given)")  # fmt: skip
    model.add_argument("--no-cache", action="store_true", help="cache nothing")
    model.add_argument(
        "--sweep", type=_sweep, action="append", default=[], metavar="SETTING=V1,V2",
        help=f"ablation grid over a setting ({', '.join(SWEEP_KEYS)}); repeat for several",
    )  # fmt: skip


def register(commands, formatter) -> None:
    """Add ``deepspectral eval {localization,segmentation,semseg}``."""
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
    sem.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")  # fmt: skip
    sem.add_argument("--limit", type=number_type(int, 1), default=None, metavar="N")
    sem.add_argument("--seed", type=int, default=None)
    sem.add_argument("-o", "--out", type=Path, default=None, metavar="OUT")
    sem.add_argument("-q", "--quiet", action="store_true")
    sem.set_defaults(run=_run_semseg)


def _error(message: str) -> int:
    print(f"deepspectral: error: {message}", file=sys.stderr)
    return 2


def _load(args):
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


class _Decomposer:
    """Backbone + decomposition settings + cache, as ``decompose_fn(image, sample)``."""

    def __init__(self, settings: dict, *, weights, device, cache_dir) -> None:
        from ..backbones import Backbone
        from ..store import Store

        self.settings = settings
        self.backbone = Backbone(
            settings["backbone"], weights=weights, device=device, block=settings["block"], feature=settings["feature"],
            precision=settings.get("precision", "fp32"),
        )
        self.weights = weights
        self.store = Store(cache_dir) if cache_dir is not None else None

    def _content(self, sample) -> str:
        from ..store import file_digest

        return f"{file_digest(sample.image_path)}:{sample.crop_xyxy}:{sample.image_size}"

    _weights_id: str | None = None

    def __call__(self, image, sample):
        from ..spectral import decompose
        from ..store import cache_key, file_digest

        s = self.settings
        max_size = s["max_size"] or None
        if self._weights_id is None:  # the weights' content, as the pipeline's cache keys use
            self._weights_id = "hub" if self.weights is None else f"sha256:{file_digest(self.weights)}"
        feature_settings = {
            "backbone": s["backbone"], "block": s["block"], "feature": s["feature"],
            "precision": s.get("precision", "fp32"), "max_size": max_size, "weights": self._weights_id,
        }  # fmt: skip
        eig_settings = dict(feature_settings, knn_lambda=s["knn_lambda"], n_eigenvectors=s["n_eigenvectors"],
                            knn_kernel=s["knn_kernel"])  # fmt: skip
        if self.store is None:
            features = self.backbone.extract(image, max_size=max_size)
        else:
            content = self._content(sample)
            eig_key = cache_key(content, eig_settings)
            cached = self.store.load_decomposition(eig_key)
            if cached is not None:
                return cached
            feat_key = cache_key(content, feature_settings)
            features = self.store.load_features(feat_key)
            if features is None:
                features = self.store.save_features(feat_key, self.backbone.extract(image, max_size=max_size))
        decomposition = decompose(
            features, image, knn_lambda=s["knn_lambda"], n_eigenvectors=s["n_eigenvectors"], knn_kernel=s["knn_kernel"]
        )
        if self.store is not None:
            self.store.save_decomposition(eig_key, decomposition)
        return decomposition


def _settings(args) -> dict:
    return {
        "backbone": args.backbone, "block": args.block, "feature": args.feature, "precision": args.precision,
        "max_size": args.max_size,
        "knn_lambda": args.knn_lambda, "n_eigenvectors": args.n_eigenvectors, "knn_kernel": args.knn_kernel,
    }  # fmt: skip


def _paper_for(task: str, dataset: str, settings: dict):
    from ..paper import paper_number

    return paper_number(
        task, dataset, backbone=settings.get("backbone", ""), knn_lambda=settings.get("knn_lambda"),
        feature=settings.get("feature", "k"), block=settings.get("block", -1),
    )  # fmt: skip


def _fmt(value, percent: bool) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{100 * value:.1f}" if percent else f"{value:.3f}"


def _print_table(header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(str(r[i])) for r in [header] + rows) for i in range(len(header))]
    line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths))  # noqa: E731
    print(line(header))
    print("  ".join("-" * w for w in widths))
    for row in rows:
        print(line(row))


def _summary_rows(result: EvalResult, paper) -> list[list[str]]:
    percent = result.task in ("localization", "semantic")
    rows = []
    for key, value in result.metrics.items():
        theirs = paper.value if (paper is not None and paper.metric == key) else None
        source = f"{paper.table} ({paper.note})" if theirs is not None else ""
        rows.append([key, _fmt(value, percent), _fmt(theirs, percent), source])
    return rows


def _write_outputs(out: Path, result: EvalResult, settings: dict, paper, figure_rows: int) -> None:
    from ..runner import atomic_write_json, save_png_atomic

    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / RESULTS_FILE, result.to_json(settings=settings, paper=paper))
    if result.figure_rows and figure_rows > 0:
        save_png_atomic(out / FIGURE_FILE, picture_grid(result.figure_rows[:figure_rows]))
    ious = [r.get("iou") for r in result.per_image if r.get("iou") is not None]
    if ious:
        save_png_atomic(out / HISTOGRAM_FILE, iou_histogram(ious))


def _setting_name(combo: dict) -> str:
    return ",".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in combo.items())


def _run_eval(args) -> int:
    from ..backbones import WeightsUnavailableError

    if args.weights is not None and not args.weights.is_file():
        return _error(f"--weights: no such file: '{args.weights}'")
    try:
        dataset = _load(args)
    except ValueError as error:
        return _error(str(error))
    verbose = not args.quiet
    for note in dataset.notes:
        print(f"{dataset.name}: {note}", file=sys.stderr)
    task = args.eval_task
    if task == "segmentation" and args.crf and args.pred is None:
        import importlib.util

        if importlib.util.find_spec("pydensecrf") is None:
            return _error('the dense CRF needs pydensecrf: pip install "deepspectral[crf]" (or pass --no-crf)')

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
        print(f"\n{task} on {dataset.name}: {len(result.per_image)} images scored, {len(result.errors)} without prediction")
        _print_table(["metric", "ours", "paper", "source"], _summary_rows(result, None))
        if args.out is not None:
            _write_outputs(args.out, result, settings, None, 0)
        return 0

    base = _settings(args)
    sweep_keys = [k for k, _ in args.sweep]
    combos = [dict(zip(sweep_keys, values)) for values in itertools.product(*[v for _, v in args.sweep])] or [{}]
    cache_dir = None
    if not args.no_cache:
        cache_dir = args.cache if args.cache is not None else (args.out / ".cache" if args.out is not None else None)
    decomposer = None
    summary = []
    for combo in combos:
        settings = dict(base, **combo)
        model_keys = ("backbone", "block", "feature")
        try:
            if decomposer is None or any(decomposer.settings[k] != settings[k] for k in model_keys):
                decomposer = _Decomposer(settings, weights=args.weights, device=args.device, cache_dir=cache_dir)
            decomposer.settings = settings
            if task == "localization":
                result = evaluate_localization(dataset, decomposer, verbose=verbose, figure_rows=args.figure_rows)
            else:
                result = evaluate_segmentation(dataset, decomposer, crf=args.crf, verbose=verbose,
                                               figure_rows=args.figure_rows)  # fmt: skip
        except WeightsUnavailableError as error:
            return _error(str(error))
        except (ImportError, ValueError, OSError, RuntimeError) as error:
            return _error(f"cannot run the backbone '{settings['backbone']}': {error}")
        except KeyboardInterrupt:
            return _error("interrupted") and 130
        paper = _paper_for(task, dataset.name, settings)
        if task == "segmentation":
            settings["crf"] = bool(args.crf)
        settings.update({"dataset": dataset.name, "limit": args.limit, "seed": args.seed})
        label = _setting_name(combo) if combo else ""
        heading = f"{task} on {dataset.name}" + (f" [{label}]" if label else "")
        print(
            f"\n{heading}: {len(result.per_image)} images, {len(result.errors)} failed, "
            f"{result.seconds / max(len(result.per_image) + len(result.errors), 1):.2f} s per image "
            f"({settings['backbone']}, knn_lambda={settings['knn_lambda']:g})"
        )
        _print_table(["metric", "ours", "paper", "source"], _summary_rows(result, paper))
        if args.out is not None:
            target = args.out if not combo else args.out / label.replace("=", "-").replace(",", "_")
            _write_outputs(target, result, settings, paper, args.figure_rows)
        summary.append((combo, result, paper))

    if combo and len(combos) > 1:
        _print_sweep(task, summary, args.out)
    failed = any(result.errors for _, result, _ in summary)
    return 1 if failed else 0


def _print_sweep(task: str, summary: list, out: Path | None) -> None:
    from ..runner import atomic_write_json

    metric = "corloc" if task == "localization" else "miou"
    percent = task == "localization"
    keys = list(summary[0][0])
    print(f"\nSweep ({metric}, Table 7 style):")
    header = keys + ["ours", "paper", "source"]
    rows = []
    for combo, result, paper in summary:
        theirs = paper.value if paper is not None and paper.metric == metric else None
        rows.append(
            [f"{combo[k]:g}" if isinstance(combo[k], float) else str(combo[k]) for k in keys]
            + [_fmt(result.metrics.get(metric), percent), _fmt(theirs, percent), paper.table if theirs is not None else ""]
        )
    _print_table(header, rows)
    if out is not None:
        atomic_write_json(
            out / "sweep.json",
            [
                {"settings": combo, metric: _finite(result.metrics.get(metric)),
                 "paper": None if paper is None else paper.value}
                for combo, result, paper in summary
            ],
        )  # fmt: skip


def _run_semseg(args) -> int:
    from ..data.datasets import VOC_CLASSES, load_voc_segmentation
    from ..paper import paper_number
    from ..runner import atomic_write_json

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
    except (OSError, ValueError, KeyError) as error:
        return _error(f"--run: cannot load '{args.run_dir}': {error}")
    result, scores = evaluate_semseg(dataset, run.predict, majority=args.majority, verbose=not args.quiet)
    n_clusters = int(scores.confusion.shape[0]) - 1
    self_trained = getattr(run, "use", args.use) == "model"
    paper = paper_number("semantic", "voc12", backbone="", n_clusters=n_clusters, self_training=self_trained)
    print(f"\nsemantic segmentation on VOC12 {args.split}: {len(result.per_image)} images, {len(result.errors)} failed, "
          f"{scores.method} matching")  # fmt: skip
    _print_table(["metric", "ours", "paper", "source"], _summary_rows(result, paper))
    print("\nIoU per class:")
    _print_table(["class", "IoU"], [[name, _fmt(float(v), True)] for name, v in zip(VOC_CLASSES, scores.iou_per_class)])
    if args.out is not None:
        payload = result.to_json(settings={"run": str(args.run_dir), "split": args.split, "limit": args.limit,
                                           "seed": args.seed, "matching": scores.method,
                                           "self_training": self_trained}, paper=paper)  # fmt: skip
        payload.update({"iou_per_class": scores.to_dict(VOC_CLASSES)["iou_per_class"],
                        "mapping": scores.to_dict()["mapping"]})  # fmt: skip
        atomic_write_json(args.out / RESULTS_FILE, payload)
    return 1 if result.errors else 0
