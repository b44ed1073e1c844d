"""Evaluation metrics of the paper's tables, numpy in / numbers out.

Localization (Table 1)
    :func:`box_iou` on continuous ``xyxy`` coordinates (no ``+1``: a box ``(0, 0, W, H)``
    covers a ``W x H`` image), :func:`corloc_hit` / :func:`corloc` — an image counts when
    the predicted box has IoU >= 0.5 with *any* ground-truth box, as in the LOST evaluation
    code the paper used.
Several objects per image (``eval discovery``)
    :func:`object_corloc` — the share of ground-truth *objects* hit (IoU >= 0.5) by any
    predicted box of their image (the AP/AR themselves come from pycocotools, see
    :mod:`deepspectral.discovery_eval`).
Single-object segmentation (Table 3)
    :func:`mask_iou` (the paper's "mIoU" is the mean over images of the per-image IoU),
    :func:`pixel_accuracy`, :func:`precision_recall_curve` and :func:`max_fbeta`
    (β² = 0.3; precision and recall are averaged over images at each of 255 thresholds of
    a soft map, then the best F_β over thresholds is reported).
Semantic segmentation (Tables 4, 11)
    :func:`confusion_matrix` (label 255 ignored), :func:`hungarian_miou` (one-to-one
    matching of clusters to classes on one confusion matrix, scipy
    ``linear_sum_assignment``), :func:`majority_vote_miou` (each cluster takes the class
    it overlaps most; for over-clustering).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "IGNORE_LABEL",
    "CORLOC_THRESHOLD",
    "FBETA_BETA2",
    "FBETA_THRESHOLDS",
    "box_iou",
    "corloc_hit",
    "corloc",
    "object_corloc",
    "mask_iou",
    "pixel_accuracy",
    "precision_recall_curve",
    "max_fbeta",
    "fbeta_curve",
    "confusion_matrix",
    "MatchedScores",
    "scores_from_mapping",
    "hungarian_miou",
    "majority_vote_miou",
]

#: Label of pixels left out of semantic-segmentation scores (VOC's object borders).
IGNORE_LABEL = 255
#: An image counts for CorLoc when its box has IoU >= this with some ground-truth box.
CORLOC_THRESHOLD = 0.5
#: β² of the F-measure (salient-object convention).
FBETA_BETA2 = 0.3
#: Number of thresholds of a soft map for the F_β curve.
FBETA_THRESHOLDS = 255


# ---------------------------------------------------------------------------------------
# Boxes
# ---------------------------------------------------------------------------------------


def _as_boxes(boxes, name: str) -> np.ndarray:
    array = np.asarray(boxes, dtype=np.float64)
    if array.ndim == 1:
        array = array[None, :]
    if array.ndim != 2 or array.shape[1] != 4:
        raise ValueError(f"{name}: expected boxes of shape (4,) or (N, 4) [x1, y1, x2, y2], got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name}: boxes must be finite, got {array.tolist()}")
    return array


def box_iou(boxes_a, boxes_b) -> np.ndarray:
    """Intersection over union of every pair of boxes.

    Parameters
    ----------
    boxes_a : (N, 4) or (4,) array_like
        Boxes ``[x1, y1, x2, y2]`` in continuous pixel coordinates (``x2``/``y2`` are
        the right/bottom edges: the box is ``x2 - x1`` pixels wide).
    boxes_b : (M, 4) or (4,) array_like

    Returns
    -------
    iou : (N, M) float64
        0 for disjoint boxes and wherever the union is empty.
    """
    a = _as_boxes(boxes_a, "boxes_a")
    b = _as_boxes(boxes_b, "boxes_b")
    area_a = np.clip(a[:, 2] - a[:, 0], 0, None) * np.clip(a[:, 3] - a[:, 1], 0, None)
    area_b = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    inter_w = np.clip(np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
    inter_h = np.clip(np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
    inter = inter_w * inter_h
    union = area_a[:, None] + area_b[None, :] - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)
    return iou


def corloc_hit(pred_box, gt_boxes, *, threshold: float = CORLOC_THRESHOLD) -> bool:
    """Whether a predicted box localizes the image: IoU >= ``threshold`` with any
    ground-truth box.

    Parameters
    ----------
    pred_box : (4,) array_like
        ``[x1, y1, x2, y2]``.
    gt_boxes : (M, 4) array_like
        Ground-truth boxes of the image (M may be 0: then ``False``).
    threshold : float, default 0.5
    """
    if not 0.0 <= float(threshold) <= 1.0:
        raise ValueError(f"threshold: expected a value in [0, 1], got {threshold!r}")
    gt = np.asarray(gt_boxes, dtype=np.float64)
    if gt.size == 0:
        return False
    return bool(np.any(box_iou(pred_box, gt) >= threshold))


def corloc(pred_boxes, gt_boxes, *, threshold: float = CORLOC_THRESHOLD) -> float:
    """Correct-localization rate: the share of images whose box hits a ground-truth box.

    Parameters
    ----------
    pred_boxes : sequence of (4,) array_like
        One predicted box per image.
    gt_boxes : sequence of (M_i, 4) array_like
        The ground-truth boxes of each image.
    threshold : float, default 0.5

    Returns
    -------
    float in [0, 1] (NaN for no images).
    """
    if len(pred_boxes) != len(gt_boxes):
        raise ValueError(
            f"pred_boxes, gt_boxes: expected one entry per image in both, got {len(pred_boxes)} and {len(gt_boxes)}"
        )
    if len(pred_boxes) == 0:
        return float("nan")
    hits = [corloc_hit(p, g, threshold=threshold) for p, g in zip(pred_boxes, gt_boxes)]
    return float(np.mean(hits))


def object_corloc(pred_boxes, gt_boxes, *, threshold: float = CORLOC_THRESHOLD) -> tuple[float, list[int]]:
    """Multi-object CorLoc: the share of ground-truth objects that some predicted box of
    their image localizes (IoU >= ``threshold``).

    Every ground-truth box counts once, however many predictions hit it, and a prediction
    may hit several objects (no one-to-one matching: that is what AP / AR measure).

    Parameters
    ----------
    pred_boxes : sequence of (N_i, 4) array_like
        The predicted ``xyxy`` boxes of each image (N_i may be 0).
    gt_boxes : sequence of (M_i, 4) array_like
        The ground-truth ``xyxy`` boxes of each image (M_i may be 0).
    threshold : float, default 0.5

    Returns
    -------
    corloc : float in [0, 1]
        Objects hit / objects (NaN when there is no ground-truth object).
    hits : list of int
        Objects hit in each image.
    """
    if len(pred_boxes) != len(gt_boxes):
        raise ValueError(
            f"pred_boxes, gt_boxes: expected one entry per image in both, got {len(pred_boxes)} and {len(gt_boxes)}"
        )
    if not 0.0 <= float(threshold) <= 1.0:
        raise ValueError(f"threshold: expected a value in [0, 1], got {threshold!r}")
    hits, total = [], 0
    for pred, gt in zip(pred_boxes, gt_boxes):
        gt = np.asarray(gt, dtype=np.float64).reshape(-1, 4)
        pred = np.asarray(pred, dtype=np.float64).reshape(-1, 4)
        total += len(gt)
        hits.append(int(np.count_nonzero(box_iou(pred, gt).max(axis=0) >= threshold)) if len(gt) and len(pred) else 0)
    return (sum(hits) / total if total else float("nan")), hits


# ---------------------------------------------------------------------------------------
# Masks
# ---------------------------------------------------------------------------------------


def _pair_masks(pred, gt) -> tuple[np.ndarray, np.ndarray]:
    pred = np.asarray(pred)
    gt = np.asarray(gt)
    if pred.shape != gt.shape or pred.ndim != 2:
        raise ValueError(f"pred, gt: expected two (H, W) masks of the same shape, got {pred.shape} and {gt.shape}")
    return pred.astype(bool), gt.astype(bool)


def mask_iou(pred, gt) -> float:
    """IoU of two ``(H, W)`` binary masks; 1.0 when both are empty."""
    pred, gt = _pair_masks(pred, gt)
    union = np.count_nonzero(pred | gt)
    if union == 0:
        return 1.0
    return float(np.count_nonzero(pred & gt) / union)


def pixel_accuracy(pred, gt) -> float:
    """Share of pixels where two ``(H, W)`` binary masks agree."""
    pred, gt = _pair_masks(pred, gt)
    return float(np.count_nonzero(pred == gt) / pred.size)


def precision_recall_curve(
    probability, gt, *, n_thresholds: int = FBETA_THRESHOLDS
) -> tuple[np.ndarray, np.ndarray]:
    """Precision and recall of ``probability >= t`` for ``n_thresholds`` thresholds.

    The thresholds are ``linspace(0, 1 - 1e-10, n_thresholds)`` (the convention of the
    saliency evaluation code the paper used). A binary mask gives a flat curve.

    Parameters
    ----------
    probability : (H, W) float in [0, 1] or bool
        Soft foreground map (or a binary mask).
    gt : (H, W) bool
    n_thresholds : int, default 255

    Returns
    -------
    precision, recall : (n_thresholds,) float64
        ``tp / (predicted + 1e-20)`` and ``tp / (positives + 1e-20)`` (0 when empty).
    """
    if not isinstance(n_thresholds, (int, np.integer)) or n_thresholds < 1:
        raise ValueError(f"n_thresholds: expected an integer >= 1, got {n_thresholds!r}")
    probability = np.asarray(probability)
    gt = np.asarray(gt)
    if probability.shape != gt.shape or probability.ndim != 2:
        raise ValueError(
            f"probability, gt: expected two (H, W) arrays of the same shape, got {probability.shape} and {gt.shape}"
        )
    probability = probability.astype(np.float64).ravel()
    gt = gt.astype(bool).ravel()
    thresholds = np.linspace(0.0, 1.0 - 1e-10, int(n_thresholds))
    # counts of predicted / true-positive pixels above each threshold, via a sorted search
    order = np.sort(probability)
    predicted = probability.size - np.searchsorted(order, thresholds, side="left")
    positives_sorted = np.sort(probability[gt])
    tp = positives_sorted.size - np.searchsorted(positives_sorted, thresholds, side="left")
    precision = tp / (predicted + 1e-20)
    recall = tp / (gt.sum() + 1e-20)
    return precision.astype(np.float64), recall.astype(np.float64)


def fbeta_curve(precision, recall, *, beta2: float = FBETA_BETA2) -> np.ndarray:
    """``(1 + β²) P R / (β² P + R)`` element-wise (0 where both are 0)."""
    if not float(beta2) > 0:
        raise ValueError(f"beta2: expected a value > 0, got {beta2!r}")
    precision = np.asarray(precision, dtype=np.float64)
    recall = np.asarray(recall, dtype=np.float64)
    denominator = beta2 * precision + recall
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, (1 + beta2) * precision * recall / np.where(denominator > 0, denominator, 1), 0.0)


def max_fbeta(precisions, recalls, *, beta2: float = FBETA_BETA2) -> float:
    """Dataset max F_β: precision and recall averaged over images at each threshold,
    then the best F_β over the thresholds.

    Parameters
    ----------
    precisions, recalls : (N, T) or (T,) array_like
        Per-image curves from :func:`precision_recall_curve` (N images, T thresholds).
    beta2 : float, default 0.3

    Returns
    -------
    float in [0, 1] (NaN for no images).
    """
    precisions = np.atleast_2d(np.asarray(precisions, dtype=np.float64))
    recalls = np.atleast_2d(np.asarray(recalls, dtype=np.float64))
    if precisions.shape != recalls.shape:
        raise ValueError(f"precisions, recalls: shapes differ: {precisions.shape} and {recalls.shape}")
    if precisions.shape[0] == 0:
        return float("nan")
    return float(np.max(fbeta_curve(precisions.mean(axis=0), recalls.mean(axis=0), beta2=beta2)))


# ---------------------------------------------------------------------------------------
# Semantic segmentation
# ---------------------------------------------------------------------------------------


def confusion_matrix(pred, gt, n_pred: int, n_gt: int, *, ignore: int | None = IGNORE_LABEL) -> np.ndarray:
    """Pixel counts of (predicted label, ground-truth label) pairs.

    Parameters
    ----------
    pred : (H, W) int array_like
        Predicted labels (clusters) in ``[0, n_pred)``.
    gt : (H, W) int array_like
        Ground-truth classes in ``[0, n_gt)``; pixels equal to ``ignore`` are skipped.
    n_pred, n_gt : int
        Number of predicted labels and of classes.
    ignore : int or None, default 255

    Returns
    -------
    confusion : (n_pred, n_gt) int64
        ``confusion[i, j]`` = pixels predicted ``i`` whose class is ``j``. Sum the
        matrices of several images to score a dataset.
    """
    for name, value in (("n_pred", n_pred), ("n_gt", n_gt)):
        if not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name}: expected an integer >= 1, got {value!r}")
    pred = np.asarray(pred)
    gt = np.asarray(gt)
    if pred.shape != gt.shape:
        raise ValueError(f"pred, gt: expected the same shape, got {pred.shape} and {gt.shape}")
    pred = pred.astype(np.int64).ravel()
    gt = gt.astype(np.int64).ravel()
    if ignore is not None:
        keep = gt != ignore
        pred, gt = pred[keep], gt[keep]
    if pred.size and (pred.min() < 0 or pred.max() >= n_pred):
        raise ValueError(f"pred: labels must lie in [0, {n_pred}), got values in [{pred.min()}, {pred.max()}]")
    if gt.size and (gt.min() < 0 or gt.max() >= n_gt):
        raise ValueError(
            f"gt: classes must lie in [0, {n_gt}) or equal ignore={ignore}, got values in [{gt.min()}, {gt.max()}]"
        )
    counts = np.bincount(pred * int(n_gt) + gt, minlength=int(n_pred) * int(n_gt))
    return counts.reshape(int(n_pred), int(n_gt)).astype(np.int64)


@dataclass(frozen=True)
class MatchedScores:
    """Semantic-segmentation scores after mapping clusters to classes.

    Attributes
    ----------
    miou : float
        Mean over classes of ``iou_per_class`` (classes absent from both the ground truth
        and the mapped prediction are left out).
    iou_per_class : (n_gt,) float64
        ``TP / (TP + FP + FN)`` per class; NaN for a class absent from both.
    mapping : (n_pred,) int64
        Class each cluster is mapped to; -1 for a cluster left unmatched (its pixels
        count as wrong everywhere).
    pixel_accuracy : float
        Share of scored pixels whose mapped cluster is their class.
    confusion : (n_pred, n_gt) int64
        The confusion matrix the scores come from.
    method : str
        ``"hungarian"`` or ``"majority"``.
    """

    miou: float
    iou_per_class: np.ndarray
    mapping: np.ndarray
    pixel_accuracy: float
    confusion: np.ndarray
    method: str

    def mapping_dict(self) -> dict[int, int]:
        """``{cluster: class}`` of the matched clusters."""
        return {int(c): int(k) for c, k in enumerate(self.mapping) if k >= 0}

    def to_dict(self, class_names=None) -> dict:
        """JSON-ready summary (``iou_per_class`` keyed by class name when given)."""
        names = list(class_names) if class_names is not None else [str(i) for i in range(len(self.iou_per_class))]
        return {
            "miou": float(self.miou),
            "pixel_accuracy": float(self.pixel_accuracy),
            "method": self.method,
            "iou_per_class": {
                n: (None if np.isnan(v) else float(v)) for n, v in zip(names, self.iou_per_class)
            },
            "mapping": {str(c): int(k) for c, k in self.mapping_dict().items()},
        }


def _as_confusion(confusion) -> np.ndarray:
    confusion = np.asarray(confusion)
    if confusion.ndim != 2 or confusion.size == 0:
        raise ValueError(f"confusion: expected a non-empty (n_pred, n_gt) matrix, got shape {confusion.shape}")
    if np.any(confusion < 0):
        raise ValueError("confusion: counts must be >= 0")
    return confusion.astype(np.int64)


def scores_from_mapping(confusion, mapping, *, method: str = "custom") -> MatchedScores:
    """Scores of a given cluster -> class mapping.

    Parameters
    ----------
    confusion : (n_pred, n_gt) array_like
        From :func:`confusion_matrix`.
    mapping : (n_pred,) int array_like
        Class of each cluster, -1 for none.
    """
    confusion = _as_confusion(confusion)
    n_pred, n_gt = confusion.shape
    mapping = np.asarray(mapping, dtype=np.int64)
    if mapping.shape != (n_pred,) or np.any(mapping < -1) or np.any(mapping >= n_gt):
        raise ValueError(f"mapping: expected {n_pred} classes in [-1, {n_gt}), got {mapping.tolist()}")
    mapped = np.zeros((n_gt, n_gt), dtype=np.int64)  # rows: class predicted after mapping
    for cluster, klass in enumerate(mapping):
        if klass >= 0:
            mapped[klass] += confusion[cluster]
    tp = np.diag(mapped).astype(np.float64)
    predicted = mapped.sum(axis=1).astype(np.float64)
    positives = confusion.sum(axis=0).astype(np.float64)
    union = predicted + positives - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, tp / np.where(union > 0, union, 1), np.nan)
    total = confusion.sum()
    accuracy = float(tp.sum() / total) if total else float("nan")
    miou = float(np.nanmean(iou)) if np.any(~np.isnan(iou)) else float("nan")
    return MatchedScores(
        miou=miou, iou_per_class=iou, mapping=mapping, pixel_accuracy=accuracy, confusion=confusion, method=method
    )


def _confusion_from_args(confusion_or_pred, gt, n_pred, n_gt, ignore) -> np.ndarray:
    if gt is None:
        return _as_confusion(confusion_or_pred)
    pred = np.asarray(confusion_or_pred)
    gt = np.asarray(gt)
    if n_pred is None:
        n_pred = int(pred.max()) + 1 if pred.size else 1
    if n_gt is None:
        valid = gt[gt != ignore] if ignore is not None else gt
        n_gt = int(valid.max()) + 1 if valid.size else 1
    return confusion_matrix(pred, gt, int(n_pred), int(n_gt), ignore=ignore)


def hungarian_miou(
    confusion_or_pred,
    gt=None,
    *,
    n_pred: int | None = None,
    n_gt: int | None = None,
    ignore: int | None = IGNORE_LABEL,
) -> MatchedScores:
    """mIoU after one-to-one Hungarian matching of clusters to classes.

    The matching maximises the matched pixel count over one confusion matrix of the whole
    dataset (``scipy.optimize.linear_sum_assignment``). With more clusters than classes
    the extra clusters stay unmatched (their pixels count as wrong); with fewer, some
    classes get no cluster (IoU 0 where present).

    Parameters
    ----------
    confusion_or_pred : (n_pred, n_gt) array_like, or (H, W) int array_like
        A confusion matrix (when ``gt`` is None), or predicted labels.
    gt : (H, W) int array_like, optional
        Ground-truth classes (255 ignored); then a confusion matrix is built with
        ``n_pred`` / ``n_gt`` (default: the largest label + 1).
    n_pred, n_gt : int, optional
    ignore : int or None, default 255

    Returns
    -------
    MatchedScores
        ``miou``, ``iou_per_class``, ``mapping`` (cluster -> class), ``pixel_accuracy``.
    """
    from scipy.optimize import linear_sum_assignment

    confusion = _confusion_from_args(confusion_or_pred, gt, n_pred, n_gt, ignore)
    rows, cols = linear_sum_assignment(confusion, maximize=True)
    mapping = np.full(confusion.shape[0], -1, dtype=np.int64)
    mapping[rows] = cols
    return scores_from_mapping(confusion, mapping, method="hungarian")


def majority_vote_miou(
    confusion_or_pred,
    gt=None,
    *,
    n_pred: int | None = None,
    n_gt: int | None = None,
    ignore: int | None = IGNORE_LABEL,
) -> MatchedScores:
    """mIoU after mapping every cluster to the class it overlaps most (many-to-one).

    Used when there are more clusters than classes (the over-clustering of the paper's
    Table 11). A cluster with no scored pixels stays unmatched. Arguments as for
    :func:`hungarian_miou`.
    """
    confusion = _confusion_from_args(confusion_or_pred, gt, n_pred, n_gt, ignore)
    mapping = np.argmax(confusion, axis=1).astype(np.int64)
    mapping[confusion.sum(axis=1) == 0] = -1
    return scores_from_mapping(confusion, mapping, method="majority")
