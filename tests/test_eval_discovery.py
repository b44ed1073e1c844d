"""``deepspectral eval discovery``: class-agnostic AP / AR (pycocotools) and CorLoc of a COCO
instances file (#14), checked against brute-force computations written here."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("pycocotools")
from pycocotools import mask as mask_utils  # noqa: E402

from deepspectral import discovery_eval as de  # noqa: E402
from deepspectral.cli import main  # noqa: E402
from deepspectral.metrics import object_corloc  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from oracle import shared_data_dir  # noqa: E402

DATA = shared_data_dir()


# ---------------------------------------------------------------------------------------
# Brute force: COCO's AP / AR written out for boxes, one category, no crowd
# ---------------------------------------------------------------------------------------

IOUS = np.linspace(0.5, 0.95, 10)
RECALLS = np.linspace(0.0, 1.0, 101)


def _iou(a, b) -> float:
    ax1, ay1, aw, ah = a
    bx1, by1, bw, bh = b
    w = max(0.0, min(ax1 + aw, bx1 + bw) - max(ax1, bx1))
    h = max(0.0, min(ay1 + ah, by1 + bh) - max(ay1, by1))
    union = aw * ah + bw * bh - w * h
    return w * h / union if union > 0 else 0.0


def _brute_force(gt_boxes: dict, dets: dict, max_dets: int) -> tuple[float, float, float, float]:
    """(AP, AP50, AP75, AR@max_dets): each image's ``max_dets`` highest-scored detections
    matched greedily in score order to the unmatched object of highest IoU >= t; one
    ranking over the dataset; precision made non-increasing and read at 101 recalls."""
    n_objects = sum(len(v) for v in gt_boxes.values())
    aps, recalls = [], []
    for t in IOUS:
        ranked = []
        for image, boxes in gt_boxes.items():
            mine = sorted(dets.get(image, []), key=lambda d: -d[1])[:max_dets]
            taken = set()
            for box, score in mine:
                best, match = t, None
                for g, gt in enumerate(boxes):
                    if g not in taken and _iou(box, gt) >= best:
                        best, match = _iou(box, gt), g
                if match is not None:
                    taken.add(match)
                ranked.append((score, match is not None))
        ranked.sort(key=lambda r: -r[0])
        tp = np.cumsum([hit for _, hit in ranked])
        fp = np.cumsum([not hit for _, hit in ranked])
        if not ranked:
            aps.append(0.0)
            recalls.append(0.0)
            continue
        recall, precision = tp / n_objects, tp / (tp + fp)
        precision = np.maximum.accumulate(precision[::-1])[::-1]
        index = np.searchsorted(recall, RECALLS, side="left")
        aps.append(np.mean([precision[i] if i < len(precision) else 0.0 for i in index]))
        recalls.append(recall[-1])
    return float(np.mean(aps)), aps[0], aps[5], float(np.mean(recalls))


def _coco(gt_boxes: dict, sizes: dict | None = None) -> dict:
    images = [{"id": i, "file_name": f"im{i}.jpg", "width": 100, "height": 80} for i in gt_boxes]
    annotations = [
        {"id": len(images) + k, "image_id": i, "category_id": 7, "bbox": list(box), "area": box[2] * box[3], "iscrowd": 0}
        for i, boxes in gt_boxes.items()
        for k, box in enumerate(boxes)
    ]
    return {"images": images, "annotations": annotations, "categories": [{"id": 7, "name": "cat"}]}


def _detections(dets: dict) -> list:
    return [{"image_id": i, "category_id": 1, "bbox": list(box), "score": s} for i, ds in dets.items() for box, s in ds]


def _random_case(seed: int) -> tuple[dict, dict]:
    rng = np.random.default_rng(seed)
    gt, dets = {}, {}
    for image in range(1, 6):
        boxes = [tuple(float(v) for v in (*rng.uniform(0, 60, 2), *rng.uniform(5, 40, 2))) for _ in range(rng.integers(0, 5))]
        gt[image] = boxes
        dets[image] = []
        for box in boxes:  # jittered copies (IoUs all over [0, 1]) and random boxes
            if rng.random() < 0.8:
                jitter = rng.normal(0, 0.15, 4) * np.array([box[2], box[3], box[2], box[3]])
                dets[image].append((tuple(float(v) for v in np.maximum(np.add(box, jitter), [0, 0, 1, 1])), float(rng.random())))
        for _ in range(rng.integers(0, 3)):
            dets[image].append(((*rng.uniform(0, 60, 2), *rng.uniform(5, 40, 2)), float(rng.random())))
    return gt, dets


@pytest.mark.parametrize("seed", range(6))
def test_box_ap_ar_match_brute_force(seed):
    gt, dets = _random_case(seed)
    scores = de.coco_ap_ar(de.class_agnostic(_coco(gt)), _detections(dets), "bbox")
    ap, ap50, ap75, ar100 = _brute_force(gt, dets, 100)
    assert scores["ap"] == pytest.approx(ap, abs=1e-12)
    assert scores["ap50"] == pytest.approx(ap50, abs=1e-12) and scores["ap75"] == pytest.approx(ap75, abs=1e-12)
    assert scores["ar100"] == pytest.approx(ar100, abs=1e-12)
    for n in (1, 3):
        assert scores[f"ar{n}"] == pytest.approx(_brute_force(gt, dets, n)[3], abs=1e-12)


def test_hand_computed_case():
    """Two objects; one exact box (score 0.9) and one with IoU 0.62 with the other (0.8):
    found at IoU 0.50, 0.55, 0.60 only. At the 7 stricter thresholds recall stops at 1/2
    with precision 1: AP_t = 51/101 (recall points 0, 0.01, ..., 0.5)."""
    gt = {1: [(0.0, 0.0, 10.0, 10.0), (40.0, 40.0, 20.0, 10.0)]}
    # 20 x 10 at (40, 40) against a box 20 wide and 6.2 tall inside it: IoU 124 / 200 = 0.62
    dets = {1: [((0.0, 0.0, 10.0, 10.0), 0.9), ((40.0, 40.0, 20.0, 6.2), 0.8)]}
    scores = de.coco_ap_ar(de.class_agnostic(_coco(gt)), _detections(dets), "bbox")
    assert scores["ap50"] == pytest.approx(1.0) and scores["ap75"] == pytest.approx(51 / 101)
    assert scores["ap"] == pytest.approx((3 + 7 * 51 / 101) / 10)
    assert scores["ar1"] == pytest.approx(0.5) and scores["ar3"] == pytest.approx((3 + 7 * 0.5) / 10)
    # the partial box ranked first: at the strict thresholds precision is 1/2 up to recall 1/2,
    # and the top box alone finds one object of two at 3 thresholds of 10
    swapped = {1: [((0.0, 0.0, 10.0, 10.0), 0.8), ((40.0, 40.0, 20.0, 6.2), 0.9)]}
    scores = de.coco_ap_ar(de.class_agnostic(_coco(gt)), _detections(swapped), "bbox")
    assert scores["ap75"] == pytest.approx(0.5 * 51 / 101) and scores["ar1"] == pytest.approx(0.5 * 3 / 10)


def test_summary_reads_cocoeval_as_its_summarize_does():
    """Our reading of COCOeval's arrays equals its own ``summarize()`` (default maxDets)."""
    import contextlib
    import io

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gt, dets = _random_case(11)
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = de.class_agnostic(_coco(gt))
        coco_gt.createIndex()
        evaluator = COCOeval(coco_gt, coco_gt.loadRes(_detections(dets)), "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    ours = de._summary(evaluator, (1, 10, 100))
    stats = evaluator.stats
    assert [ours[k] for k in ("ap", "ap50", "ap75", "ar1", "ar10", "ar100")] == pytest.approx(stats[[0, 1, 2, 6, 7, 8]])


def _rle(mask: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def _box_mask(box, height=80, width=100) -> np.ndarray:
    x, y, w, h = (int(v) for v in box)
    mask = np.zeros((height, width), bool)
    mask[y : y + h, x : x + w] = True
    return mask


def _instances(dets: dict, *, masks: bool = True, file_name=lambda i: f"im{i}.jpg") -> dict:
    annotations = []
    for i, ds in dets.items():
        for box, score in ds:
            ann = {"id": len(annotations) + 1, "image_id": i, "category_id": 1, "bbox": list(box), "score": score, "iscrowd": 0}
            if masks:
                ann["segmentation"] = _rle(_box_mask(box))
            annotations.append(ann)
    images = [{"id": i, "file_name": file_name(i), "width": 100, "height": 80} for i in dets]
    return {"images": images, "annotations": annotations, "categories": [de.OBJECT_CATEGORY]}


def _integer_case(seed: int) -> tuple[dict, dict]:
    gt, dets = _random_case(seed)

    def snap(box):  # integer corners, inside the 100 x 80 image
        x, y = min(max(round(box[0]), 0), 90), min(max(round(box[1]), 0), 70)
        return (float(x), float(y), float(min(max(round(box[2]), 1), 100 - x)), float(min(max(round(box[3]), 1), 80 - y)))

    gt = {i: [snap(b) for b in boxes] for i, boxes in gt.items()}
    dets = {i: [(snap(b), s) for b, s in ds] for i, ds in dets.items()}
    return gt, dets


def test_rectangle_masks_score_as_their_boxes():
    """Masks that are the boxes' rectangles (integer corners, inside the image) give mask
    AP / AR equal to the box AP / AR of the brute force."""
    gt, dets = _integer_case(4)
    gt_dict = _coco(gt)
    for ann in gt_dict["annotations"]:
        ann["segmentation"] = _rle(_box_mask(ann["bbox"]))
    scores = de.discovery_metrics(gt_dict, _instances(dets))
    ap, ap50, ap75, ar100 = _brute_force(gt, dets, 100)
    for kind in ("box", "mask"):
        assert scores[kind]["ap"] == pytest.approx(ap, abs=1e-12)
        assert (scores[kind]["ap50"], scores[kind]["ap75"], scores[kind]["ar100"]) == pytest.approx((ap50, ap75, ar100), abs=1e-12)


def test_ground_truth_as_predictions_scores_one():
    gt, _ = _integer_case(2)
    gt_dict = _coco(gt)
    for ann in gt_dict["annotations"]:
        ann["segmentation"] = _rle(_box_mask(ann["bbox"]))
    pred = _instances({i: [(b, 1.0) for b in boxes] for i, boxes in gt.items()})
    before = json.dumps([gt_dict, pred])
    scores = de.discovery_metrics(gt_dict, pred)
    assert json.dumps([gt_dict, pred]) == before  # the caller's dictionaries are left as they were
    for kind in ("box", "mask"):
        assert scores[kind]["ap"] == pytest.approx(1.0) and scores[kind]["ar100"] == pytest.approx(1.0)
    assert scores["corloc_objects"] == 1.0
    with_objects = sum(1 for boxes in gt.values() if boxes)
    assert scores["corloc_top"] == pytest.approx(with_objects / len(gt))  # an image without objects has none to hit


def test_crowd_regions_are_neither_found_nor_false_positives():
    gt = _coco({1: [(0.0, 0.0, 10.0, 10.0), (50.0, 20.0, 30.0, 30.0)]})
    gt["annotations"][1]["iscrowd"] = 1
    pred = _instances({1: [((50.0, 20.0, 30.0, 30.0), 0.9), ((0.0, 0.0, 10.0, 10.0), 0.5)]}, masks=False)
    scores = de.discovery_metrics(gt, pred)
    assert scores["box"]["ap"] == pytest.approx(1.0) and scores["n_objects"] == 1 and scores["n_crowd"] == 1
    assert scores["mask"] is None  # the predictions have no masks
    assert scores["corloc_top"] == 0.0  # the top box is the crowd region's: not an object
    assert scores["corloc_objects"] == 1.0


def test_object_corloc_matches_brute_force():
    rng = np.random.default_rng(5)
    preds, gts = [], []
    for _ in range(30):
        xy = rng.uniform(0, 50, (rng.integers(0, 4), 2))
        gts.append(np.hstack([xy, xy + rng.uniform(5, 30, xy.shape)]))
        xy = rng.uniform(0, 50, (rng.integers(0, 5), 2))
        preds.append(np.hstack([xy, xy + rng.uniform(5, 30, xy.shape)]))
    hits = 0
    for pred, gt in zip(preds, gts):
        for g in gt:
            hits += any(_iou((*p[:2], *(p[2:] - p[:2])), (*g[:2], *(g[2:] - g[:2]))) >= 0.5 for p in pred)
    value, per_image = object_corloc(preds, gts)
    assert sum(len(g) for g in gts) > 0 and value == pytest.approx(hits / sum(len(g) for g in gts))
    assert sum(per_image) == hits
    assert np.isnan(object_corloc([[]], [[]])[0])
    with pytest.raises(ValueError, match="pred_boxes, gt_boxes"):
        object_corloc([[]], [])


def test_corloc_top_is_the_highest_scored_box():
    gt = _coco({1: [(0.0, 0.0, 10.0, 10.0)], 2: [(0.0, 0.0, 10.0, 10.0)]})
    pred = _instances({1: [((60.0, 60.0, 5.0, 5.0), 0.2), ((0.0, 0.0, 10.0, 10.0), 0.9)],
                       2: [((60.0, 60.0, 5.0, 5.0), 0.9), ((0.0, 0.0, 10.0, 10.0), 0.2)]}, masks=False)  # fmt: skip
    scores = de.discovery_metrics(gt, pred)
    assert scores["corloc_top"] == 0.5 and scores["corloc_objects"] == 1.0
    assert [r["top_iou"] for r in scores["per_image"]] == [1.0, 0.0]


def test_images_are_matched_by_file_name():
    gt = _coco({1: [(0.0, 0.0, 10.0, 10.0)], 2: [(5.0, 5.0, 10.0, 10.0)], 3: [(0.0, 0.0, 10.0, 10.0)]})
    # other ids, a folder in front, another extension; image 3 missing, one extra image
    pred = _instances({20: [((5.0, 5.0, 10.0, 10.0), 1.0)], 10: [((0.0, 0.0, 10.0, 10.0), 1.0)], 99: []}, masks=False,
                      file_name=lambda i: {10: "val/im1.png", 20: "im2.jpg", 99: "other.jpg"}[i])  # fmt: skip
    scores = de.discovery_metrics(gt, pred)
    assert scores["unmatched"] == ["im3.jpg"] and scores["extra"] == 1
    assert scores["corloc_objects"] == pytest.approx(2 / 3) and scores["box"]["ar100"] == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="none of the 1 images of the predictions is an image of the dataset"):
        de.discovery_metrics(gt, _instances({1: []}, file_name=lambda i: "nothing.jpg"))


def test_no_scores_and_empty_predictions():
    gt = _coco({1: [(0.0, 0.0, 10.0, 10.0)]})
    pred = _instances({1: [((0.0, 0.0, 10.0, 10.0), 1.0)]}, masks=False)
    del pred["annotations"][0]["score"]
    scores = de.discovery_metrics(gt, pred)
    assert scores["box"]["ap"] == pytest.approx(1.0) and "equally confident" in scores["notes"][0]
    empty = de.discovery_metrics(gt, _instances({1: []}))
    assert empty["box"]["ap"] == 0.0 and empty["box"]["ar100"] == 0.0 and empty["corloc_top"] == 0.0


def test_predictions_for_another_image_size_are_dropped():
    gt = _coco({1: [(0.0, 0.0, 10.0, 10.0)], 2: [(0.0, 0.0, 10.0, 10.0)]})
    pred = _instances({1: [((0.0, 0.0, 10.0, 10.0), 1.0)], 2: [((0.0, 0.0, 10.0, 10.0), 1.0)]})
    pred["annotations"][1]["segmentation"] = _rle(np.ones((40, 50), bool))
    scores = de.discovery_metrics(gt, pred, masks=False)
    assert [r["file_name"] for r in scores["mismatched"]] == ["im2.jpg"] and "50x40" in scores["mismatched"][0]["error"]
    assert scores["box"]["ar100"] == pytest.approx(0.5)
    # the file says another size for the image: its boxes are in another frame
    pred = _instances({1: [((0.0, 0.0, 10.0, 10.0), 1.0)], 2: [((0.0, 0.0, 10.0, 10.0), 1.0)]}, masks=False)
    pred["images"][0].update(width=200, height=160)
    scores = de.discovery_metrics(gt, pred)
    assert [r["file_name"] for r in scores["mismatched"]] == ["im1.jpg"] and "200x160" in scores["mismatched"][0]["error"]
    assert scores["box"]["ar100"] == pytest.approx(0.5) and scores["n_predictions"] == 1


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda p: p.pop("images"), "no 'images' list"),
        (lambda p: p["images"].append({"id": 1, "file_name": "x.jpg"}), "an 'id' of its own"),
        (lambda p: p["annotations"][0].update(bbox=[0, 0, -1, 4]), r"annotations\[0\]: 'bbox' must be"),
        (lambda p: p["annotations"][0].update(image_id=5), r"'image_id' 5 is not the id"),
        (lambda p: p["annotations"][0].update(segmentation={"counts": "x"}), "'size' = \\[height, width\\]"),
        (lambda p: p["annotations"][0].update(score="high"), "'score' must be a finite number"),
        (lambda p: p["annotations"][1].pop("score"), "1 of the 2 annotations have no 'score'"),
        (lambda p: [p["annotations"][0].pop(k) for k in ("bbox", "segmentation")], "needs a 'bbox' or a 'segmentation'"),
    ],
)
def test_malformed_predictions_are_refused(edit, message):
    pred = _instances({1: [((0.0, 0.0, 10.0, 10.0), 0.5), ((1.0, 1.0, 10.0, 10.0), 0.4)]})
    edit(pred)
    with pytest.raises(ValueError, match=message):
        de.discovery_metrics(_coco({1: [(0.0, 0.0, 10.0, 10.0)]}), pred)


# ---------------------------------------------------------------------------------------
# The command
# ---------------------------------------------------------------------------------------


def _square(x, y, size):
    return [[x, y, x + size, y, x + size, y + size, x, y + size]]


@pytest.fixture()
def coco_folder(tmp_path) -> tuple[Path, Path, dict]:
    """Three 100 x 80 images in ``tmp/images`` and a COCO json with polygon instances in
    two categories, a crowd region and an image without objects (left out by the loader)."""
    images = tmp_path / "images"
    images.mkdir()
    entries, annotations = [], []
    layout = {1: [(10, 10, 20, 2), (50, 30, 25, 3)], 2: [(5, 40, 30, 2)], 3: [(60, 5, 15, 3), (20, 20, 40, 0)], 4: []}
    for image_id, objects in layout.items():
        pixels = np.random.default_rng(image_id).integers(0, 255, (80, 100, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(images / f"p{image_id}.png")
        entries.append({"id": image_id, "file_name": f"p{image_id}.png", "width": 100, "height": 80})
        for x, y, size, category in objects:
            crowd = category == 0
            annotations.append(
                {"id": 100 + len(annotations), "image_id": image_id, "category_id": 1 if crowd else category,
                 "bbox": [x, y, size, size], "area": size * size, "iscrowd": int(crowd),
                 "segmentation": _square(x, y, size) if not crowd else _rle(_box_mask((x, y, size, size)))}
            )  # fmt: skip
    gt = {"images": entries, "annotations": annotations, "categories": [{"id": c, "name": f"c{c}"} for c in (1, 2, 3)]}
    path = tmp_path / "instances_gt.json"
    path.write_text(json.dumps(gt))
    return images, path, gt


def _perfect(gt: dict, *, skip: int | None = None) -> dict:
    """The ground truth's non-crowd objects as predictions (RLE masks), image ``skip`` left out."""
    images = [dict(e, id=e["id"] + 50) for e in gt["images"] if e["id"] != skip]
    annotations = []
    for ann in gt["annotations"]:
        if ann["iscrowd"] or ann["image_id"] == skip:
            continue
        rle = mask_utils.merge(mask_utils.frPyObjects(ann["segmentation"], 80, 100))
        annotations.append({"id": len(annotations) + 1, "image_id": ann["image_id"] + 50, "category_id": 1,
                            "bbox": ann["bbox"], "score": 0.5, "iscrowd": 0, "area": ann["area"],
                            "segmentation": {"size": [80, 100], "counts": rle["counts"].decode("ascii")}})  # fmt: skip
    return {"images": images, "annotations": annotations, "categories": [de.OBJECT_CATEGORY]}


def _argv(images: Path, annotations: Path, pred: Path, *more: str) -> list[str]:
    return ["eval", "discovery", "--dataset", "coco-json", "--images", str(images), "--annotations", str(annotations),
            "--pred", str(pred), *more]  # fmt: skip


def test_cli_scores_a_perfect_file(coco_folder, tmp_path, capsys):
    images, annotations, gt = coco_folder
    pred = tmp_path / "instances.json"
    pred.write_text(json.dumps(_perfect(gt)))
    out = tmp_path / "out"
    assert main(_argv(images, annotations, pred, "-o", str(out))) == 0
    text = capsys.readouterr().out
    assert "AR@3" in text and "CorLoc, objects" in text and "1 crowd regions" in text
    results = json.loads((out / "results.json").read_text())
    assert results["task"] == "discovery" and results["n_images"] == 3 and results["metrics_over"] == 3
    for key in ("box_ap", "box_ap50", "box_ap75", "mask_ap", "mask_ar100", "corloc_objects", "corloc_top"):
        assert results[key] == pytest.approx(1.0), key
    assert results["box_ar1"] == pytest.approx(3 / 4)  # one object of the 4 is the second of its image
    assert not (out / "errors.json").exists()


def test_cli_an_image_without_prediction_is_a_miss(coco_folder, tmp_path, capsys):
    images, annotations, gt = coco_folder
    pred = tmp_path / "instances.json"
    pred.write_text(json.dumps(_perfect(gt, skip=2)))
    out = tmp_path / "out"
    assert main(_argv(images, annotations, pred, "-o", str(out), "-q")) == 1
    results = json.loads((out / "results.json").read_text())
    assert [e["image"] for e in json.loads((out / "errors.json").read_text())] == ["p2"]
    assert results["box_ar100"] == pytest.approx(3 / 4) and results["corloc_top"] == pytest.approx(2 / 3)
    assert results["n_images"] == 2 and results["n_failed"] == 1 and "count as images with no detection" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "cannot read"),
        (json.dumps([{"image_id": 1}]), "a bare list of results has no image file names"),
        (json.dumps({"images": [{"id": 1, "file_name": "zzz.png"}], "annotations": []}), "none of the 1 images"),
        (None, "no such file"),
    ],
)
def test_cli_bad_prediction_files(coco_folder, tmp_path, capsys, content, message):
    images, annotations, _ = coco_folder
    pred = tmp_path / "instances.json"
    if content is not None:
        pred.write_text(content)
    assert main(_argv(images, annotations, pred)) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_cli_without_pycocotools(coco_folder, tmp_path, capsys, monkeypatch):
    images, annotations, gt = coco_folder
    pred = tmp_path / "instances.json"
    pred.write_text(json.dumps(_perfect(gt)))
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "pycocotools" else real(name, *a))
    assert main(_argv(images, annotations, pred)) == 2
    assert 'pip install "deepspectral[coco]"' in capsys.readouterr().err
    monkeypatch.undo()


def _fake_voc07(root: Path) -> Path:
    voc = root / "VOCdevkit" / "VOC2007"
    for folder in ("JPEGImages", "Annotations", "ImageSets/Main"):
        (voc / folder).mkdir(parents=True)
    boxes = {"000001": [(11, 11, 30, 30), (51, 21, 80, 60)], "000002": [(5, 5, 40, 50)]}
    for name, objects in boxes.items():
        Image.fromarray(np.zeros((70, 90, 3), np.uint8)).save(voc / "JPEGImages" / f"{name}.jpg")
        xml = "".join(f"<object><name>dog</name><difficult>0</difficult><bndbox><xmin>{a}</xmin><ymin>{b}</ymin>"
                      f"<xmax>{c}</xmax><ymax>{d}</ymax></bndbox></object>" for a, b, c, d in objects)  # fmt: skip
        (voc / "Annotations" / f"{name}.xml").write_text(
            f"<annotation><size><width>90</width><height>70</height></size>{xml}</annotation>"
        )
    (voc / "ImageSets" / "Main" / "trainval.txt").write_text("000001\n000002\n")
    return root


def test_cli_voc_has_box_metrics_only(tmp_path, capsys):
    root = _fake_voc07(tmp_path / "voc")
    # VOC boxes are 1-based inclusive: 000001's first object is [10, 10, 30, 30] in xyxy
    pred = {"images": [{"id": 1, "file_name": "000001.jpg", "width": 90, "height": 70},
                       {"id": 2, "file_name": "000002.jpg", "width": 90, "height": 70}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 20, 20], "score": 0.9},
                            {"id": 2, "image_id": 2, "category_id": 1, "bbox": [60, 60, 10, 5], "score": 0.8}]}  # fmt: skip
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(pred))
    out = tmp_path / "out"
    assert main(["eval", "discovery", "--dataset", "voc07", "--root", str(root), "--pred", str(path), "-o", str(out)]) == 0
    assert "n/a" in capsys.readouterr().out
    results = json.loads((out / "results.json").read_text())
    assert results["mask_ap"] is None and "boxes only" in results["metrics_scope"]
    assert results["corloc_objects"] == pytest.approx(1 / 3) and results["corloc_top"] == pytest.approx(1 / 2)
    assert results["box_ar100"] == pytest.approx(1 / 3) and results["box_ap"] == pytest.approx(34 / 101)  # precision 1 up to recall 0.33


def test_cli_on_coco_mini_ground_truth(tmp_path):
    """COCO-MINI's own annotation (polygons, crowd RLEs) scored against itself: 1.0."""
    root = DATA / "coco-mini"
    if not (root / "annotations").is_dir():
        pytest.skip(f"shared data not found: {root}")
    annotations = root / "annotations" / "instances_val2017.json"
    gt = json.loads(annotations.read_text())
    heights = {e["id"]: (e["height"], e["width"]) for e in gt["images"]}
    pred_annotations = []
    for ann in gt["annotations"]:
        if ann["iscrowd"]:
            continue
        rle = mask_utils.merge(mask_utils.frPyObjects(ann["segmentation"], *heights[ann["image_id"]]))
        pred_annotations.append({"image_id": ann["image_id"], "category_id": 1, "bbox": ann["bbox"], "score": 1.0,
                                 "segmentation": {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode()}})  # fmt: skip
    pred = tmp_path / "instances.json"
    images = [{"id": e["id"], "file_name": "val2017/" + e["file_name"], "width": e["width"], "height": e["height"]}
              for e in gt["images"]]  # fmt: skip
    pred.write_text(json.dumps({"images": images, "annotations": pred_annotations}))
    out = tmp_path / "out"
    assert main(_argv(root / "val2017", annotations, pred, "-o", str(out), "-q", "--limit", "30", "--seed", "1")) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["metrics_over"] == 30
    for key in ("box_ap", "mask_ap", "box_ar100", "mask_ar100", "corloc_objects", "corloc_top"):
        assert results[key] == pytest.approx(1.0), key


# ---------------------------------------------------------------------------------------
# Oracle instance features (tests/oracle.py): what discover should find the instances in
# ---------------------------------------------------------------------------------------


def test_patch_labels_take_the_region_covering_most_of_a_patch():
    from oracle import patch_labels

    masks = np.zeros((2, 32, 48), bool)
    masks[0, :16, :16] = True  # patch (0, 0) whole
    masks[1, 16:, 16:32] = True  # patch (1, 1) whole
    masks[0, 16:22, 32:48] = True  # patch (1, 2): 6/16 instance 1 ...
    masks[1, 22:27, 32:48] = True  # ... 5/16 instance 2, 5/16 background: instance 1
    masks[1, :7, 32:48] = True  # patch (0, 2): 7/16 instance 2, 9/16 background
    expected = np.array([[1, 0, 0], [0, 2, 1]])
    np.testing.assert_array_equal(patch_labels(masks, (32, 48), 16), expected)
    # a 40-pixel-wide image: its right 8 columns are cropped, as the backbone crops
    assert patch_labels(masks[:, :, :40], (32, 40), 16).shape == (2, 2)


def test_oracle_instance_features_give_each_instance_its_direction():
    from oracle import oracle_instance_features, patch_labels

    masks = np.zeros((3, 64, 64), bool)
    masks[0, :32, :32] = masks[1, 32:, 32:] = masks[2, :16, 48:] = True
    clean = oracle_instance_features(masks, noise=0.0, dim=3)  # dim raised to 4 regions
    features = clean.features.reshape(-1, clean.features.shape[-1])
    assert clean.features.shape == (4, 4, 4) and clean.input_size == (64, 64) and clean.image_size == (64, 64)
    labels = patch_labels(masks, (64, 64), 16).ravel()
    cosine = features @ features.T / np.outer(np.linalg.norm(features, axis=1), np.linalg.norm(features, axis=1))
    np.testing.assert_allclose(cosine, (labels[:, None] == labels[None, :]).astype(float), atol=1e-6)
    square = oracle_instance_features(masks, input_size=(480, 480), seed=3)
    assert square.features.shape == (30, 30, 64) and square.input_size == (480, 480)
    noisy = oracle_instance_features(masks, seed=3, input_size=(480, 480))
    np.testing.assert_array_equal(noisy.features, square.features)  # seeded


def test_instance_masks_of_coco_mini():
    from deepspectral.data.datasets import load_dataset
    from oracle import instance_masks

    root = DATA / "coco-mini"
    if not (root / "annotations").is_dir():
        pytest.skip(f"shared data not found: {root}")
    dataset = load_dataset("coco-json", images=root / "val2017", annotations=root / "annotations" / "instances_val2017.json")
    sample = next(s for s in dataset if any(a["iscrowd"] for a in s.instances))
    masks = instance_masks(sample)
    assert masks.shape == (len(sample.instances), *sample.image_size)
    assert len(instance_masks(sample, crowd=False)) == len(sample.boxes_xyxy)
    for ann, mask in zip(sample.instances, masks):  # the rasterised area is the annotated one
        assert abs(mask.sum() - ann["area"]) <= 0.1 * ann["area"] + 60


# ---------------------------------------------------------------------------------------
# Running the discovery (deepspectral discover) on the dataset's images
# ---------------------------------------------------------------------------------------


def _squares(root: Path) -> Path:
    """Three 200 x 160 images with 1, 2 and 3 separate squares, a COCO json of them."""
    (root / "images").mkdir(parents=True)
    images, annotations = [], []
    layouts = {1: [(20, 20, 60)], 2: [(10, 10, 50), (100, 60, 40)], 3: [(30, 80, 45), (120, 10, 50), (60, 10, 30)]}
    for image_id, squares in layouts.items():
        Image.fromarray(np.zeros((160, 200, 3), np.uint8)).save(root / "images" / f"t{image_id}.png")
        images.append({"id": image_id, "file_name": f"t{image_id}.png", "width": 200, "height": 160})
        for x, y, size in squares:
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": 4, "iscrowd": 0,
                                "bbox": [x, y, size, size], "area": size * size, "segmentation": _square(x, y, size)})  # fmt: skip
    (root / "gt.json").write_text(json.dumps({"images": images, "annotations": annotations, "categories": [{"id": 4}]}))
    return root


def test_evaluate_discovery_finds_oracle_instances(tmp_path):
    """Oracle features of separate squares (each its own direction): MaskCut finds each
    square once with three cuts (every object hit, AP50 1), one with one cut."""
    from deepspectral.data.datasets import load_dataset
    from deepspectral.evaluation import evaluate_discovery
    from oracle import instance_masks, oracle_instance_features

    root = _squares(tmp_path)
    dataset = load_dataset("coco-json", images=root / "images", annotations=root / "gt.json")

    def features(image, sample):
        return oracle_instance_features(instance_masks(sample), patch_size=8, seed=1)

    three, instances = evaluate_discovery(dataset, features, verbose=False, max_objects=3, refine="none", figure_rows=2)
    assert len(three.figure_rows) == 2 and all(panel.shape == (160, 200, 3) for panel in three.figure_rows[1])
    # the second image's two squares are drawn in two colours, their boxes green (hits)
    assert three.figure_rows[1][1][35, 35].tolist() != three.figure_rows[1][1][80, 120].tolist()
    assert [r["n_predictions"] for r in three.per_image] == [1, 2, 3] == [r["objects_hit"] for r in three.per_image]
    assert three.metrics["box_ap50"] == pytest.approx(1.0) and three.metrics["mask_ap50"] == pytest.approx(1.0)
    assert three.metrics["corloc_objects"] == 1.0 and not three.errors
    assert len(instances["annotations"]) == 6 and [e["file_name"] for e in instances["images"]] == ["t1.png", "t2.png", "t3.png"]
    one, _ = evaluate_discovery(dataset, features, verbose=False, max_objects=1, refine="none")
    assert [r["n_predictions"] for r in one.per_image] == [1, 1, 1]
    assert one.metrics["corloc_objects"] == pytest.approx(3 / 6) and one.metrics["corloc_top"] == 1.0
    # a broken image fails alone and counts as an image with no detection
    (root / "images" / "t3.png").write_bytes(b"not a png")
    broken, instances = evaluate_discovery(dataset, features, verbose=False, max_objects=3, refine="none")
    assert [e["image"] for e in broken.errors] == ["t3"] and len(instances["images"]) == 2
    assert broken.metrics["corloc_objects"] == pytest.approx(3 / 6)
    assert broken.n_counted == 3 and "that failed count as images with no detection" in broken.scope
    with pytest.raises(ValueError, match="max_objects"):
        evaluate_discovery(dataset, features, verbose=False, max_objects=0)


def test_cli_runs_the_discovery_and_scores_its_file(coco_folder, random_weights, tmp_path, capsys):
    """Without --pred the discovery runs (random-weight ViT); its OUT/instances.json loads
    with pycocotools and, scored with --pred, gives the same metrics."""
    from pycocotools.coco import COCO

    images, annotations, _ = coco_folder
    out = tmp_path / "run"
    argv = ["eval", "discovery", "--dataset", "coco-json", "--images", str(images), "--annotations", str(annotations),
            "--weights", str(random_weights), "--device", "cpu", "--refine", "none", "--resize", "64", "-q"]  # fmt: skip
    assert main([*argv, "-o", str(out), "--figure-rows", "2"]) == 0
    assert Image.open(out / "figure.png").size[1] > 2 * 80  # two rows of pictures
    results = json.loads((out / "results.json").read_text())
    assert results["settings"]["max_objects"] == 3 and results["settings"]["resize"] == 64
    assert 0.0 <= results["box_ap"] <= 1.0 and results["metrics_over"] == 3
    coco = COCO(str(out / "instances.json"))
    assert len(coco.getImgIds()) == 3
    again = tmp_path / "again"
    assert main(_argv(images, annotations, out / "instances.json", "-o", str(again), "-q")) == 0
    rescored = json.loads((again / "results.json").read_text())
    for key in ("box_ap", "box_ar10", "mask_ap", "corloc_objects", "corloc_top"):
        assert rescored[key] == pytest.approx(results[key]), key


@pytest.mark.parametrize(("option", "value", "message"), [("--tau", "1.5", "--tau"), ("--min-score", "2", "--min-score"),
                                                           ("--max-objects", "0", "--max-objects")])  # fmt: skip
def test_cli_discovery_options_are_checked(coco_folder, capsys, option, value, message):
    images, annotations, _ = coco_folder
    argv = ["eval", "discovery", "--dataset", "coco-json", "--images", str(images), "--annotations", str(annotations),
            "--refine", "none", option, value]  # fmt: skip
    assert main(argv) == 2
    assert message in capsys.readouterr().err
