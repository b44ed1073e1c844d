"""Metrics against brute-force computations."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from deepspectral import metrics


def _brute_box_iou(a, b):
    """Area by rasterising on a fine grid (boxes with coordinates in quarter pixels)."""
    scale = 4
    size = 64 * scale
    ma = np.zeros((size, size), bool)
    mb = np.zeros((size, size), bool)
    ma[int(a[1] * scale) : int(a[3] * scale), int(a[0] * scale) : int(a[2] * scale)] = True
    mb[int(b[1] * scale) : int(b[3] * scale), int(b[0] * scale) : int(b[2] * scale)] = True
    union = (ma | mb).sum()
    return (ma & mb).sum() / union if union else 0.0


def test_box_iou_matches_rasterised_areas():
    rng = np.random.default_rng(0)
    for _ in range(200):
        a = np.sort(rng.integers(0, 60 * 4, size=(2, 2)) / 4, axis=0).T.ravel()[[0, 2, 1, 3]]
        b = np.sort(rng.integers(0, 60 * 4, size=(2, 2)) / 4, axis=0).T.ravel()[[0, 2, 1, 3]]
        assert metrics.box_iou(a, b)[0, 0] == pytest.approx(_brute_box_iou(a, b), abs=1e-12)


def test_box_iou_is_continuous_xyxy():
    # a box (0, 0, W, H) covers a W x H image: half of it has IoU exactly 0.5
    assert metrics.box_iou([0, 0, 10, 10], [0, 0, 10, 5])[0, 0] == pytest.approx(0.5)
    assert metrics.box_iou([0, 0, 10, 10], [10, 0, 20, 10])[0, 0] == 0.0  # touching edges
    assert metrics.box_iou(np.zeros((3, 4)), np.zeros((2, 4))).shape == (3, 2)
    with pytest.raises(ValueError, match="boxes_a"):
        metrics.box_iou([1, 2, 3], [0, 0, 1, 1])


def test_corloc_any_box_at_least_half():
    gt = [[0, 0, 10, 10], [50, 50, 60, 60]]
    assert metrics.corloc_hit([0, 0, 10, 5], gt)  # IoU exactly 0.5 counts (>=, as LOST)
    assert metrics.corloc_hit([50, 50, 60, 61], gt)  # the second box
    assert not metrics.corloc_hit([0, 0, 10, 4.9], gt)
    assert not metrics.corloc_hit([0, 0, 10, 10], np.zeros((0, 4)))
    rng = np.random.default_rng(1)
    preds, gts, brute = [], [], []
    for _ in range(100):
        p = np.sort(rng.uniform(0, 60, (2, 2)), axis=0).T.ravel()[[0, 2, 1, 3]]
        g = [np.sort(rng.uniform(0, 60, (2, 2)), axis=0).T.ravel()[[0, 2, 1, 3]] for _ in range(rng.integers(1, 4))]
        preds.append(p)
        gts.append(g)
        brute.append(any(_iou_scalar(p, q) >= 0.5 for q in g))
    assert metrics.corloc(preds, gts) == pytest.approx(np.mean(brute))
    with pytest.raises(ValueError, match="pred_boxes"):
        metrics.corloc(preds[:2], gts[:3])


def _iou_scalar(a, b):
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def test_mask_iou_and_accuracy_brute_force():
    rng = np.random.default_rng(2)
    for _ in range(20):
        a = rng.random((13, 17)) > 0.6
        b = rng.random((13, 17)) > 0.5
        inter = sum(a[i, j] and b[i, j] for i in range(13) for j in range(17))
        union = sum(a[i, j] or b[i, j] for i in range(13) for j in range(17))
        agree = sum(a[i, j] == b[i, j] for i in range(13) for j in range(17))
        assert metrics.mask_iou(a, b) == pytest.approx(inter / union)
        assert metrics.pixel_accuracy(a, b) == pytest.approx(agree / a.size)
    empty = np.zeros((4, 4), bool)
    assert metrics.mask_iou(empty, empty) == 1.0
    with pytest.raises(ValueError, match="pred, gt"):
        metrics.mask_iou(empty, np.zeros((4, 5), bool))


def test_precision_recall_and_max_fbeta_brute_force():
    rng = np.random.default_rng(3)
    probs = [rng.random((9, 11)) for _ in range(4)]
    gts = [rng.random((9, 11)) > 0.6 for _ in range(4)]
    thresholds = np.linspace(0, 1 - 1e-10, 255)
    curves = [metrics.precision_recall_curve(p, g) for p, g in zip(probs, gts)]
    for (precision, recall), p, g in zip(curves, probs, gts):
        for t_index in (0, 17, 128, 254):
            predicted = p >= thresholds[t_index]
            tp = np.logical_and(predicted, g).sum()
            assert precision[t_index] == pytest.approx(tp / (predicted.sum() + 1e-20))
            assert recall[t_index] == pytest.approx(tp / (g.sum() + 1e-20))
    mean_p = np.mean([c[0] for c in curves], axis=0)
    mean_r = np.mean([c[1] for c in curves], axis=0)
    brute = max(
        (1.3 * pp * rr / (0.3 * pp + rr)) if (0.3 * pp + rr) > 0 else 0.0 for pp, rr in zip(mean_p, mean_r)
    )
    got = metrics.max_fbeta([c[0] for c in curves], [c[1] for c in curves])
    assert got == pytest.approx(brute)
    # a binary mask: flat curve past threshold 0 (which takes every pixel)
    mask = gts[0].copy()
    mask[0] = ~mask[0]
    precision, recall = metrics.precision_recall_curve(mask, gts[0])
    assert np.ptp(precision[1:]) == 0 and np.ptp(recall[1:]) == 0
    perfect = metrics.max_fbeta(*metrics.precision_recall_curve(gts[1], gts[1]))
    assert perfect == pytest.approx(1.0)


def test_confusion_matrix_brute_force_and_ignore():
    rng = np.random.default_rng(4)
    pred = rng.integers(0, 5, (20, 30))
    gt = rng.integers(0, 4, (20, 30))
    gt[rng.random(gt.shape) < 0.1] = 255
    brute = np.zeros((5, 4), np.int64)
    for p, g in zip(pred.ravel(), gt.ravel()):
        if g != 255:
            brute[p, g] += 1
    np.testing.assert_array_equal(metrics.confusion_matrix(pred, gt, 5, 4), brute)
    with pytest.raises(ValueError, match="pred"):
        metrics.confusion_matrix(pred, gt, 3, 4)
    with pytest.raises(ValueError, match="n_gt"):
        metrics.confusion_matrix(pred, gt, 5, 0)


def _brute_scores(confusion, mapping):
    n_pred, n_gt = confusion.shape
    ious = []
    for k in range(n_gt):
        tp = sum(confusion[c, k] for c in range(n_pred) if mapping[c] == k)
        fp = sum(confusion[c, j] for c in range(n_pred) if mapping[c] == k for j in range(n_gt) if j != k)
        fn = confusion[:, k].sum() - tp
        ious.append(tp / (tp + fp + fn) if tp + fp + fn else np.nan)
    return np.array(ious)


def test_hungarian_is_best_permutation():
    rng = np.random.default_rng(5)
    for n in (3, 4, 5):
        confusion = rng.integers(0, 100, (n, n))
        scores = metrics.hungarian_miou(confusion)
        best = max(itertools.permutations(range(n)), key=lambda perm: sum(confusion[i, perm[i]] for i in range(n)))
        assert sum(confusion[i, scores.mapping[i]] for i in range(n)) == sum(confusion[i, best[i]] for i in range(n))
        np.testing.assert_allclose(scores.iou_per_class, _brute_scores(confusion, scores.mapping))
        assert scores.miou == pytest.approx(np.nanmean(_brute_scores(confusion, scores.mapping)))
        assert scores.pixel_accuracy == pytest.approx(sum(confusion[i, scores.mapping[i]] for i in range(n)) / confusion.sum())


def test_hungarian_from_label_maps_recovers_permutation():
    rng = np.random.default_rng(6)
    gt = rng.integers(0, 4, (30, 40))
    permutation = np.array([2, 0, 3, 1])
    pred = permutation[gt]
    gt[:3] = 255
    scores = metrics.hungarian_miou(pred, gt, n_pred=4, n_gt=4)
    assert scores.miou == pytest.approx(1.0)
    assert scores.mapping_dict() == {int(permutation[k]): k for k in range(4)}
    as_json = scores.to_dict(["bg", "a", "b", "c"])
    assert as_json["miou"] == 1.0 and set(as_json["iou_per_class"]) == {"bg", "a", "b", "c"}


def test_more_clusters_than_classes():
    rng = np.random.default_rng(7)
    confusion = rng.integers(0, 50, (6, 3))
    hungarian = metrics.hungarian_miou(confusion)
    assert (hungarian.mapping >= 0).sum() == 3
    np.testing.assert_allclose(hungarian.iou_per_class, _brute_scores(confusion, hungarian.mapping))
    majority = metrics.majority_vote_miou(confusion)
    np.testing.assert_array_equal(majority.mapping, confusion.argmax(axis=1))
    np.testing.assert_allclose(majority.iou_per_class, _brute_scores(confusion, majority.mapping))
    # over-clustering a perfect segmentation: majority vote is perfect, Hungarian is not
    gt = np.repeat(np.arange(3), 20).reshape(6, 10)
    pred = np.arange(60).reshape(6, 10) // 10  # 6 clusters, 2 per class
    assert metrics.majority_vote_miou(pred, gt).miou == pytest.approx(1.0)
    assert metrics.hungarian_miou(pred, gt).miou < 1.0


def test_absent_class_left_out_of_mean():
    confusion = np.array([[10, 0, 0], [0, 5, 0], [0, 0, 0]])
    scores = metrics.hungarian_miou(confusion)
    assert np.isnan(scores.iou_per_class[2])
    assert scores.miou == pytest.approx(1.0)
