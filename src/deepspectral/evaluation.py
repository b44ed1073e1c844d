"""Scoring on benchmark datasets: the library side of ``deepspectral eval``.

Every evaluator walks a :class:`deepspectral.data.datasets.Dataset`, runs the method (or
reads existing predictions), and returns an :class:`EvalResult`: the aggregate metrics,
per-image scores, the images that failed and picture rows for
:func:`deepspectral.viz.picture_grid`. Nothing here parses arguments, prints tables or
writes files (:mod:`deepspectral.cli.eval` does); the only output is the optional
progress bar on stderr.

- :func:`evaluate_localization`, :func:`evaluate_segmentation`: run the method through an
  :class:`~deepspectral.engine.Engine` (what ``deepspectral eval`` does) or any
  ``decompose(image, sample) -> Decomposition`` (e.g. the tests' oracle features) and
  score CorLoc / mIoU, pixel accuracy, max F_β.
- :func:`score_box_predictions`, :func:`score_mask_predictions`: score what
  ``deepspectral localize`` / ``deepspectral segment`` wrote.
- :func:`score_instance_predictions`: class-agnostic box / mask AP, AR@N and CorLoc of
  what ``deepspectral discover`` wrote (``instances.json``;
  :mod:`deepspectral.discovery_eval`); :func:`evaluate_discovery` runs the discovery
  (:func:`deepspectral.tasks.discover.discover`) on a dataset's images and scores it so.
- :func:`evaluate_semseg`: semantic mIoU of ``predict(image) -> labels`` after Hungarian
  matching (or majority vote) of clusters to classes.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Callable, Iterable

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from .metrics import MatchedScores
    from .paper import PaperNumber

__all__ = [
    "EvalResult",
    "FIGURE_ROWS",
    "MASK_THRESHOLD",
    "evaluate_localization",
    "evaluate_segmentation",
    "score_box_predictions",
    "score_mask_predictions",
    "score_instance_predictions",
    "evaluate_discovery",
    "DISCOVERY_METRICS",
    "evaluate_semseg",
    "mask_boxes",
]

#: Picture rows an evaluation keeps by default (its first images), for the figure.
FIGURE_ROWS = 8
#: Predicted masks are 8-bit greyscale; a pixel at least this is foreground (what
#: ``deepspectral segment`` writes: 0 / 255).
MASK_THRESHOLD = 128
#: Rows of the semantic confusion matrix before trimming: ``predict`` returns uint8 labels,
#: so every value 0..255 may occur as a cluster id.
_PREDICTED_LABEL_VALUES = 256
#: File extensions stripped from a prediction's image name to match it to a dataset id.
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


# ---------------------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------------------


@dataclass
class EvalResult:
    """What one evaluation produced.

    Attributes
    ----------
    task : {"localization", "segmentation", "semantic", "discovery"}
    dataset : str
        The dataset's name.
    metrics : dict
        ``{"corloc": ...}``, ``{"miou": ..., "accuracy": ..., "max_fbeta": ...}`` or
        ``{"miou": ..., "accuracy": ...}`` (semantic), :data:`DISCOVERY_METRICS`
        (discovery: ``None`` for the mask metrics of a dataset without masks); fractions
        in [0, 1], NaN when no image was scored.
    per_image : list of dict
        One record per scored image, ``{"image": id, ...scores}``.
    errors : list of dict
        ``{"image": id, "error": message}`` for the images that failed.
    seconds : float
        Wall time of the evaluation.
    figure_rows : list of list of (H, W, 3) uint8
        Up to ``figure_rows`` picture rows (for :func:`deepspectral.viz.picture_grid`).
    n_counted : int or None
        Images the metrics are taken over (their denominator): the images scored plus the
        failed ones counted as misses; ``None``: the images scored.
    scope : str
        One sentence saying what the metrics are over and how failed images count (printed
        by ``deepspectral eval``, stored in ``results.json``).
    """

    task: str
    dataset: str
    metrics: dict
    per_image: list
    errors: list = field(default_factory=list)
    seconds: float = 0.0
    figure_rows: list = field(default_factory=list, repr=False)
    n_counted: int | None = None
    scope: str = ""

    def to_json(self, *, settings: dict, paper: PaperNumber | None = None) -> dict:
        """The result as ``results.json`` holds it.

        Parameters
        ----------
        settings : dict
            The settings of the run, stored as given.
        paper : PaperNumber, optional
            The paper's number for the same setting (``None``: the paper has none).

        Returns
        -------
        dict
            The metrics at the top level (non-finite values as ``None``), then ``task``,
            ``dataset``, ``n_images`` (scored), ``n_failed``, ``metrics_over`` (the
            metrics' denominator: images), ``metrics_scope`` (:attr:`scope`), ``seconds``,
            ``settings``, ``paper``, ``version``, ``per_image`` and ``errors``.
        """
        from ._version import __version__

        out = {key: _finite(value) for key, value in self.metrics.items()}
        out.update(
            {
                "task": self.task,
                "dataset": self.dataset,
                "n_images": len(self.per_image),
                "n_failed": len(self.errors),
                "metrics_over": len(self.per_image) if self.n_counted is None else self.n_counted,
                "metrics_scope": self.scope,
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
    """``value``, or ``None`` for a non-finite float (JSON has no NaN)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _loop(samples: Iterable, fn: Callable, *, desc: str, verbose: bool, errors: list) -> None:
    """Call ``fn(sample)`` on every sample under the engine's error policy
    (:func:`deepspectral.engine.run_batch`: progress bar, per-image errors recorded in
    ``errors`` as ``{"image", "error"}`` and skipped, fatal ones raised)."""
    from .engine import run_batch

    summary = run_batch(samples, fn, desc=desc, verbose=verbose)
    errors.extend({"image": record["image"], "error": record["error"]} for record in summary.errors)


def _loop_decomposed(dataset, decompose: Callable, work: Callable, *, desc: str, verbose: bool, errors: list) -> None:
    """``work(sample, image, decomposition)`` for every sample of ``dataset``.

    ``decompose`` is a :class:`deepspectral.engine.Engine` (decoding, features, cache,
    batching and overlap exactly as in the image commands, so an ``eval`` reuses what
    ``localize`` cached) or any ``decompose(image, sample) -> Decomposition``.
    """
    from .engine import Engine

    if isinstance(decompose, Engine):
        summary = decompose.process(
            list(dataset), lambda result: work(result.item, result.image, result.decomposition), desc=desc, verbose=verbose
        )
        errors.extend({"image": record["image"], "error": record["error"]} for record in summary.errors)
        return

    def one(sample) -> None:
        image = sample.load_image()
        work(sample, image, decompose(image, sample))

    _loop(dataset, one, desc=desc, verbose=verbose, errors=errors)


def _check_figure_rows(figure_rows) -> None:
    if not isinstance(figure_rows, (int, np.integer)) or isinstance(figure_rows, bool) or figure_rows < 0:
        raise ValueError(f"figure_rows: expected an integer >= 0, got {figure_rows!r}")


# ---------------------------------------------------------------------------------------
# Failed images in the metrics: the whole dataset is the denominator
# ---------------------------------------------------------------------------------------


def _corloc_over_dataset(per_image: list, errors: list, what: str) -> tuple[float, int, str]:
    """CorLoc over every image attempted: an image in ``errors`` (no box: ``what``, e.g.
    "without a prediction") counts as a miss. Returns the CorLoc (NaN for no image), its
    denominator and the sentence saying so."""
    n = len(per_image) + len(errors)
    corloc = sum(bool(r["correct"]) for r in per_image) / n if n else float("nan")
    scope = f"corloc over all {n} images"
    if errors:
        scope += f": the {len(errors)} {what} count as misses"
    return float(corloc), n, scope


def _empty_mask_scores(dataset, errors: list) -> tuple[list, list, int]:
    """Scores of an empty (all-background) predicted mask for every failed image of a mask
    dataset: how a missing prediction counts (a miss: IoU 0 with a non-empty object).

    Returns
    -------
    records : list of dict
        ``{"iou", "accuracy"}`` of each failed image whose ground truth could be read.
    curves : list of (precision, recall)
        Their precision/recall curves (as an all-zero mask file is scored).
    unreadable : int
        Failed images whose ground truth could not be read either (left out).
    """
    from .errors import PER_IMAGE_ERRORS
    from .metrics import mask_iou, pixel_accuracy, precision_recall_curve

    samples = {sample.image_id: sample for sample in dataset}
    records, curves, unreadable = [], [], 0
    for error in errors:
        sample = samples.get(error["image"])
        try:
            gt = sample.load_mask() if sample is not None else None
        except PER_IMAGE_ERRORS:
            gt = None
        if gt is None:
            unreadable += 1
            continue
        empty = np.zeros(gt.shape, dtype=bool)
        records.append({"iou": mask_iou(empty, gt), "accuracy": pixel_accuracy(empty, gt)})
        curves.append(precision_recall_curve(empty, gt))
    return records, curves, unreadable


def _segmentation_result(dataset, per_image: list, curves: list, errors: list, what: str, seconds: float,
                         rows: list | None = None) -> EvalResult:
    """The segmentation metrics over the whole dataset: the images scored plus every image
    in ``errors`` (``what``, e.g. "without a prediction") scored as an empty mask."""
    missed, missed_curves, unreadable = _empty_mask_scores(dataset, errors)
    metrics = _segmentation_scores(per_image + missed, curves + missed_curves)
    n = len(per_image) + len(missed)
    scope = f"miou, accuracy and max_fbeta over {'all ' if not unreadable else ''}{n} images"
    if missed:
        scope += f": the {len(missed)} {what} are scored as empty masks (a miss)"
    if unreadable:
        scope += f"; {unreadable} {what} whose ground truth cannot be read either are left out"
    return EvalResult("segmentation", dataset.name, metrics, per_image, errors, seconds, rows or [], n, scope)


# ---------------------------------------------------------------------------------------
# Ground truth
# ---------------------------------------------------------------------------------------


def mask_boxes(mask: np.ndarray) -> np.ndarray:
    """Ground-truth boxes of a mask, for CorLoc on mask datasets.

    Parameters
    ----------
    mask : (H, W) bool array_like

    Returns
    -------
    (M, 4) float64
        Continuous ``xyxy`` boxes (``x2``, ``y2`` exclusive): the box of the whole mask,
        then one per 8-connected component; ``(0, 4)`` for an empty mask.
    """
    from scipy import ndimage

    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 2:
        raise ValueError(f"mask: expected an (H, W) array, got shape {mask.shape}")
    if not mask.any():
        return np.zeros((0, 4))
    labels, _ = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
    ys, xs = np.nonzero(mask)
    boxes = [[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]]
    for sy, sx in ndimage.find_objects(labels):
        boxes.append([sx.start, sy.start, sx.stop, sy.stop])
    return np.asarray(boxes, dtype=np.float64)


def _gt_boxes(sample) -> np.ndarray:
    """``(M, 4)`` ground-truth boxes of a sample: its boxes, or those of its mask."""
    if sample.boxes_xyxy is not None:
        return sample.boxes_xyxy
    return mask_boxes(sample.load_mask())


def _prediction_key(name: str) -> list[str]:
    """Keys a prediction's image name matches: the relative path without an image
    extension, then its last component."""
    path = PurePosixPath(str(name).replace("\\", "/"))
    stem = path.with_suffix("") if path.suffix.lower() in _IMAGE_SUFFIXES else path
    return [stem.as_posix(), stem.name]


# ---------------------------------------------------------------------------------------
# Running the method
# ---------------------------------------------------------------------------------------


def evaluate_localization(
    dataset,
    decompose,
    *,
    verbose: bool = True,
    figure_rows: int = FIGURE_ROWS,
) -> EvalResult:
    """CorLoc of :func:`deepspectral.tasks.localize.localize` on a dataset.

    Parameters
    ----------
    dataset : deepspectral.data.datasets.Dataset
        With boxes (or masks: then the boxes of the mask and of its components).
    decompose : Engine or callable
        A :class:`deepspectral.engine.Engine`, or ``decompose(image, sample) ->
        Decomposition`` for the ``(H, W, 3) uint8`` image of a sample.
    verbose : bool
        Progress bar with ETA, failures reported.
    figure_rows : int
        Picture rows kept for the grid (the first images), >= 0.

    Returns
    -------
    EvalResult
        ``metrics = {"corloc": ...}`` over every image of the dataset (one that failed
        counts as a miss); per image ``box_xyxy``, ``iou`` (best over the ground-truth
        boxes) and ``correct``. Picture rows from :func:`deepspectral.viz.localization_row`.
    """
    from .metrics import box_iou, corloc_hit
    from .tasks.localize import coarse_mask, localize
    from .viz import localization_row

    _check_figure_rows(figure_rows)
    per_image, errors, rows = [], [], []
    start = time.perf_counter()

    def one(sample, image: np.ndarray, decomposition) -> None:
        gt = _gt_boxes(sample)
        box = [int(v) for v in localize(decomposition)]
        best = float(box_iou(box, gt).max()) if len(gt) else 0.0
        correct = corloc_hit(box, gt)
        per_image.append({"image": sample.image_id, "box_xyxy": box, "iou": best, "correct": bool(correct)})
        if len(rows) < figure_rows:
            rows.append(localization_row(image, decomposition, box, gt, correct, coarse_mask(decomposition)))

    _loop_decomposed(dataset, decompose, one, desc=f"localization {dataset.name}", verbose=verbose, errors=errors)
    # an image that failed gave no box: it counts as a miss (CorLoc over the whole dataset)
    corloc, n, scope = _corloc_over_dataset(per_image, errors, "that failed")
    return EvalResult(
        "localization", dataset.name, {"corloc": corloc}, per_image, errors, time.perf_counter() - start, rows, n, scope
    )


def _segmentation_scores(per_image: list, curves: list) -> dict:
    """mIoU and accuracy (means over the images) and max F_β (over the dataset's
    precision/recall curves); NaN when no image was scored."""
    from .metrics import max_fbeta

    if not per_image:
        return {"miou": float("nan"), "accuracy": float("nan"), "max_fbeta": float("nan")}
    return {
        "miou": float(np.mean([r["iou"] for r in per_image])),
        "accuracy": float(np.mean([r["accuracy"] for r in per_image])),
        "max_fbeta": max_fbeta([c[0] for c in curves], [c[1] for c in curves]),
    }


def evaluate_segmentation(
    dataset,
    decompose,
    *,
    crf: bool = True,
    verbose: bool = True,
    figure_rows: int = FIGURE_ROWS,
) -> EvalResult:
    """mIoU (mean per-image IoU), pixel accuracy and max F_β of
    :func:`deepspectral.tasks.segment.segment_object` on a mask dataset.

    Parameters
    ----------
    dataset : deepspectral.data.datasets.Dataset
        With masks.
    decompose : Engine or callable
        an :class:`~deepspectral.engine.Engine` or ``decompose(image, sample) -> Decomposition``, as for
        :func:`evaluate_localization`.
    crf : bool
        Refine with the dense CRF; its foreground marginal is then the soft map for F_β
        (without it: the binary coarse mask upsampled).
    verbose : bool
        Progress bar with ETA, failures reported.
    figure_rows : int
        Picture rows kept for the grid (the first images), >= 0.

    Returns
    -------
    EvalResult
        ``metrics = {"miou", "accuracy", "max_fbeta"}`` over every image of the dataset:
        one that failed (listed in ``errors``) is scored as an empty mask (a miss); per
        image ``iou`` and ``accuracy`` of the images scored. Picture rows from
        :func:`deepspectral.viz.segmentation_row`.
    """
    from .metrics import mask_iou, pixel_accuracy, precision_recall_curve
    from .tasks.segment import segment_object_probability
    from .viz import segmentation_row

    _check_figure_rows(figure_rows)
    per_image, errors, rows, curves = [], [], [], []
    start = time.perf_counter()

    def one(sample, image: np.ndarray, decomposition) -> None:
        gt = sample.load_mask()
        if gt.shape != image.shape[:2]:
            raise ValueError(f"mask size {gt.shape[::-1]} differs from the image size {image.shape[1::-1]}")
        probability = segment_object_probability(decomposition, image, crf=crf)
        mask = probability > 0.5
        curves.append(precision_recall_curve(probability, gt))
        per_image.append(
            {"image": sample.image_id, "iou": mask_iou(mask, gt), "accuracy": pixel_accuracy(mask, gt)}
        )
        if len(rows) < figure_rows:
            rows.append(segmentation_row(image, decomposition, mask, gt))

    _loop_decomposed(dataset, decompose, one, desc=f"segmentation {dataset.name}", verbose=verbose, errors=errors)
    return _segmentation_result(dataset, per_image, curves, errors, "that failed", time.perf_counter() - start, rows)


# ---------------------------------------------------------------------------------------
# Scoring existing predictions
# ---------------------------------------------------------------------------------------


def score_box_predictions(dataset, predictions: list, *, verbose: bool = True) -> EvalResult:
    """CorLoc of existing boxes.

    Parameters
    ----------
    dataset : deepspectral.data.datasets.Dataset
        With boxes or masks.
    predictions : list of dict
        ``deepspectral localize``'s ``boxes.json``: ``{"image": name, "box_xyxy": [x1,
        y1, x2, y2]}`` each (``None``: no object, a miss) (or ``"file"`` instead of ``"image"``), matched to the
        dataset's images by relative name or stem (an image extension is ignored).
    verbose : bool
        Progress bar, images without a prediction reported.

    Returns
    -------
    EvalResult
        ``metrics = {"corloc": ...}`` over every image of the dataset: one without a
        prediction counts as wrong (and is listed in ``errors``).
    """
    from .metrics import box_iou, corloc_hit

    if not isinstance(predictions, list):
        raise ValueError(f"predictions: expected a list of records, got {type(predictions).__name__}")
    table = {}
    for index, record in enumerate(predictions):
        if not isinstance(record, dict):
            raise ValueError(f"predictions: record {index} is a {type(record).__name__}, not an object with image and box_xyxy")
        for key in _prediction_key(record.get("image") or record.get("file", "")):
            table.setdefault(key, record)
    per_image, errors = [], []
    start = time.perf_counter()

    def one(sample) -> None:
        record = table.get(sample.image_id) or table.get(_prediction_key(sample.image_id)[1])
        if record is None:
            raise ValueError("no prediction for this image")
        gt = _gt_boxes(sample)
        if record.get("box_xyxy", ...) is None:  # "no object" (below localize --min-score): a miss, kept in CorLoc
            per_image.append({"image": sample.image_id, "box_xyxy": None, "iou": 0.0, "correct": False})
            return
        box = record.get("box_xyxy")
        try:
            box = [float(v) for v in box]
            if len(box) != 4 or not all(map(math.isfinite, box)):
                raise ValueError
        except (TypeError, ValueError):
            raise ValueError(f"the prediction has no box_xyxy of 4 numbers (got {record.get('box_xyxy')!r})") from None
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
    corloc, n, scope = _corloc_over_dataset(per_image, errors, "without a usable prediction")
    return EvalResult(
        "localization", dataset.name, {"corloc": corloc}, per_image, errors, time.perf_counter() - start, [], n, scope
    )


def score_mask_predictions(dataset, pred_dir, *, verbose: bool = True) -> EvalResult:
    """mIoU, pixel accuracy and max F_β of existing masks.

    Parameters
    ----------
    dataset : deepspectral.data.datasets.Dataset
        With masks.
    pred_dir : str or os.PathLike
        Folder of ``<image id>.png`` (or ``<stem>.png``) masks, 8-bit, foreground >=
        :data:`MASK_THRESHOLD` (``deepspectral segment``'s output); a greyscale map is used
        as the soft map for F_β.
    verbose : bool
        Progress bar, images without a mask reported.

    Returns
    -------
    EvalResult
        As :func:`evaluate_segmentation`, without picture rows: the metrics are over every
        image of the dataset; an image without a usable mask (missing, unreadable, of
        another size) is listed in ``errors`` and scored as an empty mask (a miss).
    """
    from PIL import Image

    from .metrics import mask_iou, pixel_accuracy, precision_recall_curve

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
        mask = soft >= MASK_THRESHOLD / 255.0
        curves.append(precision_recall_curve(soft, gt))
        per_image.append({"image": sample.image_id, "iou": mask_iou(mask, gt), "accuracy": pixel_accuracy(mask, gt)})

    _loop(dataset, one, desc=f"score {dataset.name}", verbose=verbose, errors=errors)
    return _segmentation_result(dataset, per_image, curves, errors, "without a usable prediction",
                                time.perf_counter() - start)


def _discovery_metric_names() -> tuple[str, ...]:
    from .discovery_eval import METRIC_NAMES

    return tuple(f"{kind}_{name}" for kind in ("box", "mask") for name in METRIC_NAMES) + ("corloc_objects", "corloc_top")


#: The metrics of an object-discovery evaluation, in order: ``box_ap``, ``box_ap50``,
#: ``box_ap75``, ``box_ar1``, ``box_ar3``, ``box_ar10``, ``box_ar100``, the same with
#: ``mask_``, ``corloc_objects`` and ``corloc_top`` (:mod:`deepspectral.discovery_eval`).
DISCOVERY_METRICS = _discovery_metric_names()


def score_instance_predictions(dataset, predictions: dict, *, verbose: bool = True) -> EvalResult:
    """Class-agnostic AP / AR of boxes and masks, and CorLoc, of a COCO instances file.

    Parameters
    ----------
    dataset : deepspectral.data.datasets.Dataset
        A box dataset (``coco-json`` and ``coco20k``: every instance with its mask, crowd
        regions ignored; VOC: boxes only, no mask metrics).
    predictions : dict
        ``deepspectral discover``'s ``instances.json`` (COCO ``images``, ``annotations``
        with ``bbox``, RLE ``segmentation`` and ``score``), its images matched to the
        dataset's by file name (:func:`deepspectral.discovery_eval.match_images`).
    verbose : bool
        Print the notes (no scores, images left out) on stderr.

    Returns
    -------
    EvalResult
        Task ``discovery``; ``metrics`` = :data:`DISCOVERY_METRICS` (the ``mask_`` ones
        ``None`` when the dataset or the predictions have no masks), over every image of
        the dataset: one without an entry in the file, or whose predictions are for another
        image size (the file's width / height, a mask's size), counts as one with no
        detection (a miss) and is listed in ``errors``. Per image scored: ``n_objects``
        (non-crowd), ``n_predictions``, ``objects_hit`` (by a box with IoU >= 0.5) and
        ``top_iou`` (of the top-scored box).

    Raises
    ------
    ValueError
        The file is malformed or none of its images is in the dataset (one line).
    ImportError
        pycocotools is not installed (the message names the pip extra).
    """
    import sys

    from .discovery_eval import discovery_metrics, ground_truth_from_dataset

    start = time.perf_counter()
    samples = list(dataset)
    gt = ground_truth_from_dataset(dataset)
    scores = discovery_metrics(gt, predictions)
    ids = {image["file_name"]: sample.image_id for image, sample in zip(gt["images"], samples)}
    found = {f"{kind}_{name}": value for kind in ("box", "mask") for name, value in (scores[kind] or {}).items()}
    found.update({"corloc_objects": scores["corloc_objects"], "corloc_top": scores["corloc_top"]})
    metrics = {name: found.get(name) for name in DISCOVERY_METRICS}  # mask_*: None when there are no masks
    errors = [{"image": ids[name], "error": "no entry in the prediction file's images"} for name in scores["unmatched"]]
    errors += [{"image": ids[record["file_name"]], "error": record["error"]} for record in scores["mismatched"]]
    failed = {record["image"] for record in errors}
    per_image = [
        {"image": ids[record["file_name"]], **{k: v for k, v in record.items() if k != "file_name"}}
        for record in scores["per_image"]
        if ids[record["file_name"]] not in failed
    ]  # the images scored; the failed ones count in the metrics as images with no detection
    notes = list(scores["notes"])
    if scores["extra"]:
        notes.append(f"{scores['extra']} image(s) of the prediction file are not in the dataset: left out")
    if verbose:
        for note in notes:
            print(f"--pred: {note}", file=sys.stderr)
    n = scores["n_images"]
    scope = f"AP, AR and CorLoc over all {n} images ({scores['n_objects']} objects"
    scope += f"; {scores['n_crowd']} crowd regions neither to find nor false positives)" if scores["n_crowd"] else ")"
    if errors:
        scope += f": the {len(errors)} without a usable prediction count as images with no detection"
    if scores["mask"] is None:
        scope += "; no mask metrics (" + ("the dataset has boxes only" if not any(s.instances for s in samples)
                                          else "the predictions have no masks") + ")"
    return EvalResult("discovery", dataset.name, metrics, per_image, errors, time.perf_counter() - start, [], n, scope)


#: Colours of the discovered instances in the picture rows, in turn.
_INSTANCE_COLOURS = ((255, 64, 64), (64, 160, 255), (80, 220, 80), (255, 200, 40), (200, 80, 255), (40, 220, 220))


def _discovery_row(image: np.ndarray, found: list, gt_boxes: np.ndarray) -> list[np.ndarray]:
    """Picture row of one image: the ground-truth boxes (blue), then the discovered
    instances (each mask in its colour, its box green when it hits an object with IoU >=
    0.5, red when not)."""
    from .metrics import CORLOC_THRESHOLD, box_iou
    from .viz import draw_box, overlay_mask

    truth = image
    for box in np.asarray(gt_boxes, dtype=np.float64).reshape(-1, 4):
        truth = draw_box(truth, box, (40, 90, 255))
    canvas = image
    for index, instance in enumerate(found):
        canvas = overlay_mask(canvas, instance.mask, _INSTANCE_COLOURS[index % len(_INSTANCE_COLOURS)], alpha=0.45)
    for instance in found:
        hit = len(gt_boxes) > 0 and float(box_iou(instance.box, gt_boxes).max()) >= CORLOC_THRESHOLD
        canvas = draw_box(canvas, instance.box, (0, 200, 0) if hit else (230, 0, 0))
    return [truth, canvas]


def evaluate_discovery(
    dataset, extract, *, verbose: bool = True, figure_rows: int = FIGURE_ROWS, **options
) -> tuple[EvalResult, dict]:
    """Run the object discovery (MaskCut, :func:`deepspectral.tasks.discover.discover`) on
    every image of a dataset and score it as :func:`score_instance_predictions`.

    Parameters
    ----------
    dataset : deepspectral.data.datasets.Dataset
        A box dataset, as for :func:`score_instance_predictions`.
    extract : Engine or callable
        A :class:`deepspectral.engine.Engine` giving features (``decompose=False``,
        ``keep_features=True``: decoding, features, cache and batching as in ``deepspectral
        discover``), or ``extract(image, sample) -> PatchFeatures`` for the ``(H, W, 3)
        uint8`` image of a sample (e.g. oracle features).
    verbose : bool
        Progress bar with ETA, failures and notes reported.
    figure_rows : int
        Picture rows kept (the first images): the ground-truth boxes, the instances.
    **options
        ``max_objects``, ``min_score``, ``tau``, ``eps``, ``refine``, ... of
        :func:`~deepspectral.tasks.discover.discover` (checked before any image).

    Returns
    -------
    result : EvalResult
        As :func:`score_instance_predictions`: the metrics over every image of the dataset,
        an image that failed counting as one with no detection (listed in ``errors`` with
        its error).
    instances : dict
        The COCO instances of the images that did not fail, as ``deepspectral discover``
        writes them (``instances.json``).
    """
    from . import defaults
    from .engine import Engine
    from .instances import annotation, coco_instances, image_record
    from .tasks.discover import discover, resolve_max_objects

    # a bad number of objects is refused before any image
    resolve_max_objects(options.get("max_objects", defaults.MAX_OBJECTS), options.get("min_score"))
    _check_figure_rows(figure_rows)
    records, errors, rows = {}, [], []
    start = time.perf_counter()

    def one(sample, image: np.ndarray, features) -> None:
        found = discover(features, image, **options)
        file_name = sample.image_id + sample.image_path.suffix
        records[sample.image_id] = image_record(file_name, image.shape[:2], [annotation(i.mask, i.score) for i in found])
        if len(rows) < figure_rows:
            rows.append(_discovery_row(image, found, _gt_boxes(sample)))

    if isinstance(extract, Engine):
        summary = extract.process(
            list(dataset), lambda r: one(r.item, r.image, r.features), desc=f"discovery {dataset.name}", verbose=verbose
        )
        errors.extend({"image": record["image"], "error": record["error"]} for record in summary.errors)
    else:

        def run(sample) -> None:
            image = sample.load_image()
            one(sample, image, extract(image, sample))

        _loop(dataset, run, desc=f"discovery {dataset.name}", verbose=verbose, errors=errors)
    instances = coco_instances([records[s.image_id] for s in dataset if s.image_id in records])
    # scored with the failed images as images without detections (their error kept)
    scored = dict(instances, images=list(instances["images"]))
    for index, sample in enumerate((s for s in dataset if s.image_id not in records), start=len(records) + 1):
        scored["images"].append({"id": index, "file_name": sample.image_id + sample.image_path.suffix})
    result = score_instance_predictions(dataset, scored, verbose=verbose)
    result.errors = errors + [e for e in result.errors if e["image"] in records]
    result.per_image = [r for r in result.per_image if r["image"] in records]
    result.seconds = time.perf_counter() - start
    result.figure_rows = rows
    if errors:
        result.scope += f"; the {len(errors)} that failed count as images with no detection"
    return result, instances


# ---------------------------------------------------------------------------------------
# Semantic segmentation
# ---------------------------------------------------------------------------------------


def evaluate_semseg(
    dataset, predict: Callable, *, majority: bool = False, verbose: bool = True
) -> tuple[EvalResult, MatchedScores]:
    """Semantic mIoU of a labeller on a VOC label-map dataset.

    One confusion matrix over the dataset (ground-truth pixels labelled
    :data:`deepspectral.metrics.IGNORE_LABEL` skipped), then clusters matched to the
    classes of :data:`deepspectral.data.datasets.VOC_CLASSES` one-to-one (Hungarian) or by
    majority vote.

    Parameters
    ----------
    dataset : deepspectral.data.datasets.Dataset
        With label maps (``sample.load_labels()``: ``(H, W)`` classes, 0 = background).
    predict : callable
        ``predict(image) -> (H, W) uint8`` labels (0 = background, 1..K clusters) of an
        ``(H, W, 3) uint8`` image.
    majority : bool
        Map every cluster to its majority class (over-clustering, Table 11) instead of
        the one-to-one Hungarian matching.
    verbose : bool
        Progress bar with ETA, failures reported.

    Returns
    -------
    result : EvalResult
        ``metrics = {"miou", "accuracy"}`` over every image of the dataset: one that failed
        (listed in ``errors``) counts as predicted all background (label 0); per image the
        pixel ``accuracy`` under the dataset-wide mapping.
    scores : deepspectral.metrics.MatchedScores
        The matching, the trimmed confusion matrix and the IoU of each class.
    """
    from .data.datasets import VOC_CLASSES
    from .metrics import IGNORE_LABEL, confusion_matrix, hungarian_miou, majority_vote_miou

    n_classes = len(VOC_CLASSES)  # the 20 VOC classes and the background
    confusion = np.zeros((_PREDICTED_LABEL_VALUES, n_classes), dtype=np.int64)
    per_image_confusion, per_image, errors = [], [], []
    start = time.perf_counter()

    def one(sample) -> None:
        image = sample.load_image()
        gt = sample.load_labels()
        labels = np.asarray(predict(image))
        if labels.shape != gt.shape:
            raise ValueError(f"prediction {labels.shape} differs from the label map {gt.shape}")
        if labels.min() < 0 or labels.max() >= _PREDICTED_LABEL_VALUES:
            raise ValueError(f"prediction labels must lie in 0..{_PREDICTED_LABEL_VALUES - 1}")
        valid = gt[gt != IGNORE_LABEL]
        if valid.size and valid.max() >= n_classes:
            raise ValueError(f"label map has class {int(valid.max())} >= {n_classes}")
        matrix = confusion_matrix(labels.astype(np.int64), gt, _PREDICTED_LABEL_VALUES, n_classes)
        confusion[...] += matrix
        per_image_confusion.append((sample.image_id, matrix))

    _loop(dataset, one, desc=f"semseg {dataset.name}", verbose=verbose, errors=errors)
    # a failed image predicted nothing: all background (label 0), a miss of its objects
    missed, unreadable = _background_confusions(dataset, errors, n_classes)
    confusion[0, :] += missed
    used = int(np.nonzero(confusion.sum(axis=1))[0].max()) + 1 if confusion.any() else n_classes
    trimmed = confusion[: max(used, 1)]
    scores = (majority_vote_miou if majority else hungarian_miou)(trimmed)
    for image_id, matrix in per_image_confusion:
        matrix = matrix[: trimmed.shape[0]]
        hit = sum(int(matrix[c, k]) for c, k in enumerate(scores.mapping) if k >= 0)
        total = int(matrix.sum())
        per_image.append({"image": image_id, "accuracy": hit / total if total else None})
    metrics = {"miou": scores.miou, "accuracy": scores.pixel_accuracy}
    n = len(per_image) + len(errors) - unreadable
    scope = f"miou and accuracy over {'all ' if not unreadable else ''}{n} images"
    if len(errors) > unreadable:
        scope += f": the {len(errors) - unreadable} that failed are scored as all background (a miss)"
    if unreadable:
        scope += f"; {unreadable} that failed whose label map cannot be read either are left out"
    result = EvalResult("semantic", dataset.name, metrics, per_image, errors, time.perf_counter() - start, [], n, scope)
    return result, scores


def _background_confusions(dataset, errors: list, n_classes: int) -> tuple[np.ndarray, int]:
    """Ground-truth pixel counts per class (:data:`~deepspectral.metrics.IGNORE_LABEL`
    skipped) over the failed images: the confusion row of a prediction that is all
    background. Returns ``((n_classes,) int64, failed images whose label map cannot be
    read)``."""
    from .errors import PER_IMAGE_ERRORS
    from .metrics import IGNORE_LABEL

    samples = {sample.image_id: sample for sample in dataset}
    counts, unreadable = np.zeros(n_classes, dtype=np.int64), 0
    for error in errors:
        sample = samples.get(error["image"])
        try:
            gt = np.asarray(sample.load_labels()) if sample is not None else None
        except PER_IMAGE_ERRORS:
            gt = None
        valid = None if gt is None else gt[gt != IGNORE_LABEL]
        if valid is None or (valid.size and valid.max() >= n_classes):
            unreadable += 1
            continue
        counts += np.bincount(valid.astype(np.int64), minlength=n_classes)
    return counts, unreadable
