"""Scoring of object discovery (several objects per image): class-agnostic COCO AP / AR
through pycocotools, and CorLoc.

Predictions are a COCO *instances* file, what ``deepspectral discover`` writes
(``OUT/instances.json``): ``images`` (``id``, ``file_name``, ``width``, ``height``),
``annotations`` (``image_id``, ``bbox = [x, y, w, h]``, ``segmentation`` as COCO RLE,
``score``; ``category_id`` is ignored) and ``categories``. Ground truth is any COCO
dictionary (a COCO annotation file, or one built from a benchmark's boxes with
:func:`ground_truth_from_dataset`).

:func:`discovery_metrics` (dictionaries in, numbers out) does it all:

- The ground truth is made **class-agnostic**: every category becomes one, ``object``;
  ``iscrowd`` is kept (a crowd region is neither to be found nor a false positive when
  found, COCO's rule).
- The predictions are **matched to the ground truth's images by file name** (the relative
  path without its image extension, else the last component), so a file made on another
  copy of the images scores as is. A ground-truth image without an entry in the
  prediction file counts as one with no detection (a miss), and is listed; prediction
  images not in the ground truth are left out (counted).
- **AP, AP50, AP75, AR@N** of boxes and (when both sides have them) of masks, by
  pycocotools' ``COCOeval`` itself (the field's standard, not re-implemented): AP is the
  101-point interpolated precision averaged over IoU 0.50:0.05:0.95 with up to 100
  detections per image, AP50 / AP75 at one IoU, AR@N the recall with the N highest-scored
  detections of each image averaged over the same IoUs; all areas. As detectron2 does,
  mask AP takes each predicted mask's own area (the box is dropped before ``loadRes``).
- **CorLoc**, on boxes, for datasets with boxes only (VOC) as for all: ``corloc_objects``
  (multi-object CorLoc, :func:`deepspectral.metrics.object_corloc`) is the share of the
  non-crowd ground-truth objects hit (box IoU >= 0.5) by any of the (at most 100 highest-
  scored) predicted boxes of their image, over every image; ``corloc_top`` is the paper's
  single-object CorLoc applied to the highest-scored box of each image: the share of
  images whose top box has IoU >= 0.5 with some non-crowd ground-truth box (an image with
  no prediction is a miss).

pycocotools is optional (``pip install "deepspectral[coco]"``); it is imported where used.
"""

from __future__ import annotations

import contextlib
import io
import math
from pathlib import PurePosixPath

import numpy as np

__all__ = [
    "AR_MAX_DETS",
    "AP_MAX_DETS",
    "CORLOC_MAX_DETS",
    "METRIC_NAMES",
    "OBJECT_CATEGORY",
    "check_pycocotools_available",
    "class_agnostic",
    "validate_instances",
    "match_images",
    "coco_ap_ar",
    "discovery_metrics",
    "ground_truth_from_dataset",
]

#: Detections per image of COCO's AP (``COCOeval``'s default ``maxDets[-1]``).
AP_MAX_DETS = 100
#: The N of the AR@N reported: COCO's 1, 10, 100, and 3 (MaskCut's default number of
#: objects per image, issue #14's AR@3 target).
AR_MAX_DETS = (1, 3, 10, 100)
#: Predicted boxes per image (the highest-scored) that CorLoc looks at: as many as AP.
CORLOC_MAX_DETS = AP_MAX_DETS
#: The one category of a class-agnostic evaluation (what ``discover`` writes).
OBJECT_CATEGORY = {"id": 1, "name": "object"}
#: Keys of the box / mask metrics, in the order they are printed.
METRIC_NAMES = ("ap", "ap50", "ap75") + tuple(f"ar{n}" for n in AR_MAX_DETS)
#: File extensions dropped from an image name when matching predictions to images.
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
_INSTALL_HINT = 'AP / AR need pycocotools: pip install "deepspectral[coco]"'


def check_pycocotools_available() -> None:
    """Raise ``ImportError`` naming the pip extra when pycocotools is not installed
    (without importing it: a command refuses before it reads anything)."""
    import importlib.util

    if importlib.util.find_spec("pycocotools") is None:
        raise ImportError(_INSTALL_HINT)


# ---------------------------------------------------------------------------------------
# Ground truth
# ---------------------------------------------------------------------------------------


def class_agnostic(gt: dict) -> dict:
    """A COCO dictionary with every annotation in the one category :data:`OBJECT_CATEGORY`.

    Parameters
    ----------
    gt : dict
        COCO ground truth (``images``, ``annotations``; ``categories`` ignored).

    Returns
    -------
    dict
        ``images`` copied, ``annotations`` copied with ``category_id = 1`` (``iscrowd``
        kept; ``id`` made unique and non-zero when missing), ``categories = [OBJECT_CATEGORY]``.
    """
    if not isinstance(gt, dict) or not isinstance(gt.get("images"), list):
        raise ValueError("gt: expected a COCO dictionary with an 'images' list")
    annotations = []
    for index, ann in enumerate(gt.get("annotations") or []):
        ann = dict(ann, category_id=OBJECT_CATEGORY["id"])
        ann.setdefault("iscrowd", 0)
        ann["id"] = index + 1  # COCOeval needs unique ids; the file's may repeat or be 0
        annotations.append(ann)
    return {"images": [dict(image) for image in gt["images"]], "annotations": annotations, "categories": [dict(OBJECT_CATEGORY)]}


def ground_truth_from_dataset(dataset) -> dict:
    """The COCO ground truth of a box dataset (:class:`deepspectral.data.datasets.Dataset`).

    Parameters
    ----------
    dataset : Dataset
        Samples with COCO ``instances`` (``coco-json``, ``coco20k``: every instance, crowd
        ones included, with its mask) or with ``boxes_xyxy`` only (VOC: every box, the
        ``difficult`` ones too, as CorLoc counts them; no masks).

    Returns
    -------
    dict
        COCO dictionary: one image per sample (``id`` 1.., ``file_name`` = the sample's id
        with its file's extension, ``width`` / ``height`` when known), the annotations in
        category 1.
    """
    images, annotations = [], []
    for index, sample in enumerate(dataset, start=1):
        entry = {"id": index, "file_name": sample.image_id + sample.image_path.suffix}
        if sample.image_size is not None:
            entry["height"], entry["width"] = int(sample.image_size[0]), int(sample.image_size[1])
        images.append(entry)
        if sample.instances:
            for ann in sample.instances:
                annotations.append(
                    {key: ann[key] for key in ("bbox", "segmentation", "area", "iscrowd") if key in ann}
                    | {"image_id": index, "category_id": OBJECT_CATEGORY["id"]}
                )
        elif sample.boxes_xyxy is not None:
            for x1, y1, x2, y2 in np.asarray(sample.boxes_xyxy, dtype=np.float64).reshape(-1, 4).tolist():
                w, h = x2 - x1, y2 - y1
                annotations.append({"image_id": index, "category_id": 1, "bbox": [x1, y1, w, h], "area": w * h, "iscrowd": 0})
    return class_agnostic({"images": images, "annotations": annotations})


# ---------------------------------------------------------------------------------------
# Predictions
# ---------------------------------------------------------------------------------------


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_segmentation(segmentation, where: str) -> None:
    if isinstance(segmentation, dict):
        size, counts = segmentation.get("size"), segmentation.get("counts")
        if not (isinstance(size, list) and len(size) == 2 and all(isinstance(v, int) and v >= 0 for v in size)):
            raise ValueError(f"{where}: 'segmentation' RLE needs 'size' = [height, width], got {size!r}")
        if not isinstance(counts, (str, list)):
            raise ValueError(f"{where}: 'segmentation' RLE needs 'counts' (a string, or a list of run lengths)")
        return
    if isinstance(segmentation, list) and all(isinstance(p, list) and len(p) >= 6 and all(map(_is_number, p)) for p in segmentation):
        return  # polygons
    raise ValueError(f"{where}: 'segmentation' must be a COCO RLE {{'size': [h, w], 'counts': ...}} or a list of polygons")


def validate_instances(pred) -> list[str]:
    """Check that ``pred`` is a COCO instances dictionary that can be scored.

    Parameters
    ----------
    pred : dict
        ``images`` (unique ``id``, ``file_name``), ``annotations`` (``image_id`` of one of
        the images; ``bbox`` of 4 finite numbers with ``w, h >= 0`` and / or
        ``segmentation`` as COCO RLE or polygons; ``score``, a finite number, on every
        annotation or on none).

    Returns
    -------
    list of str
        Notes on what will be assumed (e.g. no scores: every prediction equally confident).

    Raises
    ------
    ValueError
        The first thing wrong, in one line naming the entry (``annotations[3]: ...``).
    """
    if not isinstance(pred, dict):
        hint = " (a bare list of results has no image file names to match the dataset's images by)" if isinstance(pred, list) else ""
        raise ValueError(f"expected a COCO instances object with 'images' and 'annotations', got a {type(pred).__name__}{hint}")
    for key in ("images", "annotations"):
        if not isinstance(pred.get(key), list):
            raise ValueError(f"not a COCO instances file: no '{key}' list")
    ids = set()
    for index, image in enumerate(pred["images"]):
        if not isinstance(image, dict) or not isinstance(image.get("file_name"), str) or not image["file_name"]:
            raise ValueError(f"images[{index}]: needs a 'file_name'")
        if "id" not in image or isinstance(image["id"], (dict, list)) or image["id"] in ids:
            raise ValueError(f"images[{index}]: needs an 'id' of its own (got {image.get('id')!r})")
        ids.add(image["id"])
        for key in ("width", "height"):
            if key in image and not (isinstance(image[key], int) and image[key] > 0):
                raise ValueError(f"images[{index}]: '{key}' must be a positive integer, got {image[key]!r}")
    with_score = 0
    for index, ann in enumerate(pred["annotations"]):
        where = f"annotations[{index}]"
        if not isinstance(ann, dict):
            raise ValueError(f"{where}: expected an object, got a {type(ann).__name__}")
        if ann.get("image_id") not in ids:
            raise ValueError(f"{where}: 'image_id' {ann.get('image_id')!r} is not the id of one of the 'images'")
        if "bbox" not in ann and "segmentation" not in ann:
            raise ValueError(f"{where}: needs a 'bbox' or a 'segmentation'")
        if "bbox" in ann:
            box = ann["bbox"]
            if not (isinstance(box, list) and len(box) == 4 and all(map(_is_number, box)) and box[2] >= 0 and box[3] >= 0):
                raise ValueError(f"{where}: 'bbox' must be [x, y, w, h], 4 finite numbers with w, h >= 0, got {box!r}")
        if "segmentation" in ann:
            _check_segmentation(ann["segmentation"], where)
        if "score" in ann:
            if not _is_number(ann["score"]):
                raise ValueError(f"{where}: 'score' must be a finite number, got {ann['score']!r}")
            with_score += 1
    if 0 < with_score < len(pred["annotations"]):
        raise ValueError(
            f"{len(pred['annotations']) - with_score} of the {len(pred['annotations'])} annotations have no 'score' "
            "(AP ranks the detections by score: give every annotation one, or none)"
        )
    notes = []
    if pred["annotations"] and not with_score:
        notes.append("no annotation has a 'score': every prediction counts as equally confident (ranked in file order)")
    return notes


def _name_keys(name: str) -> tuple[str, str]:
    """The keys an image name matches by: its relative path without an image extension,
    then the last component of that."""
    path = PurePosixPath(str(name).replace("\\", "/"))
    stem = path.with_suffix("") if path.suffix.lower() in _IMAGE_SUFFIXES else path
    return stem.as_posix(), stem.name


def match_images(gt_images: list, pred_images: list) -> tuple[dict, list, int]:
    """Match prediction images to ground-truth images by file name.

    Parameters
    ----------
    gt_images, pred_images : list of dict
        COCO ``images`` entries (``id``, ``file_name``).

    Returns
    -------
    pred_to_gt : dict
        Prediction image id → ground-truth image id, for the matched images. A
        ground-truth image is matched by its relative path without extension first,
        then by its last component (so ``val2017/1.jpg`` and ``1.jpg`` match); two
        prediction images never match the same one.
    unmatched_gt : list of dict
        Ground-truth images no prediction image matches.
    extra : int
        Prediction images that match no ground-truth image.
    """
    table: dict = {}
    for image in pred_images:
        for key in _name_keys(image["file_name"]):
            table.setdefault(key, []).append(image["id"])
    pred_to_gt, unmatched = {}, []
    for image in gt_images:
        full, last = _name_keys(image["file_name"])
        candidates = [i for i in table.get(full, []) if i not in pred_to_gt] or [
            i for i in table.get(last, []) if i not in pred_to_gt
        ]
        if candidates:
            pred_to_gt[candidates[0]] = image["id"]
        else:
            unmatched.append(image)
    return pred_to_gt, unmatched, len(pred_images) - len(pred_to_gt)


# ---------------------------------------------------------------------------------------
# pycocotools
# ---------------------------------------------------------------------------------------


def _summary(evaluator, max_dets: tuple[int, ...]) -> dict:
    """AP, AP50, AP75 (with :data:`AP_MAX_DETS` detections) and AR@N of an accumulated
    ``COCOeval``, all areas: the means over its ``precision`` / ``recall`` arrays of the
    entries that exist (> -1), as ``COCOeval.summarize`` takes them; NaN where none does
    (no ground-truth object)."""
    params = evaluator.params
    area = params.areaRngLbl.index("all")

    def mean(values: np.ndarray) -> float:
        values = values[values > -1]
        return float(np.mean(values)) if values.size else float("nan")

    precision = evaluator.eval["precision"]  # (T IoUs, R recalls, K classes, A areas, M maxDets)
    recall = evaluator.eval["recall"]  # (T, K, A, M)
    m = list(params.maxDets).index(AP_MAX_DETS)
    iou = lambda value: np.flatnonzero(np.isclose(params.iouThrs, value))  # noqa: E731
    out = {
        "ap": mean(precision[:, :, :, area, m]),
        "ap50": mean(precision[iou(0.5)][:, :, :, area, m]),
        "ap75": mean(precision[iou(0.75)][:, :, :, area, m]),
    }
    for n in max_dets:
        out[f"ar{n}"] = mean(recall[:, :, area, list(params.maxDets).index(n)])
    return out


def coco_ap_ar(gt: dict, detections: list, iou_type: str, *, max_dets: tuple[int, ...] = AR_MAX_DETS) -> dict:
    """Class-agnostic AP, AP50, AP75 and AR@N by pycocotools' ``COCOeval``.

    Parameters
    ----------
    gt : dict
        Class-agnostic COCO ground truth (:func:`class_agnostic`); every image counts.
    detections : list of dict
        ``image_id`` (of ``gt``), ``category_id`` 1, ``score``, and ``bbox`` (for
        ``"bbox"``) or compressed RLE ``segmentation`` (for ``"segm"``); may be empty.
    iou_type : {"bbox", "segm"}
    max_dets : tuple of int
        The N of AR@N.

    Returns
    -------
    dict
        ``ap``, ``ap50``, ``ap75``, ``ar<N>`` as fractions in [0, 1] (NaN without
        ground-truth objects).
    """
    if iou_type not in ("bbox", "segm"):
        raise ValueError(f"iou_type: expected 'bbox' or 'segm', got {iou_type!r}")
    if not max_dets or any(not isinstance(n, int) or n < 1 for n in max_dets):
        raise ValueError(f"max_dets: expected positive integers, got {max_dets!r}")
    check_pycocotools_available()
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        # COCOeval sets keys of the annotation dicts (ignore, segmentation as RLE): shallow copies suffice
        coco_gt = COCO()
        coco_gt.dataset = dict(gt, annotations=[dict(ann) for ann in gt["annotations"]])
        coco_gt.createIndex()
        if detections:
            coco_dt = coco_gt.loadRes([dict(det) for det in detections])
        else:  # loadRes cannot take an empty list; no detection: every object missed
            coco_dt = COCO()
            coco_dt.dataset = {"images": list(gt["images"]), "categories": list(gt["categories"]), "annotations": []}
            coco_dt.createIndex()
        evaluator = COCOeval(coco_gt, coco_dt, iou_type)
        evaluator.params.maxDets = sorted(set(max_dets) | {AP_MAX_DETS})
        evaluator.evaluate()
        evaluator.accumulate()
    return _summary(evaluator, tuple(max_dets))


# ---------------------------------------------------------------------------------------
# Everything
# ---------------------------------------------------------------------------------------


def _xyxy(bbox) -> list[float]:
    x, y, w, h = (float(v) for v in bbox)
    return [x, y, x + w, y + h]


def discovery_metrics(gt: dict, pred: dict, *, masks: bool | None = None) -> dict:
    """Score a COCO instances file against COCO ground truth, class-agnostic.

    Parameters
    ----------
    gt : dict
        COCO ground truth (any categories: they are merged, :func:`class_agnostic`).
    pred : dict
        COCO instances (:func:`validate_instances`), matched to ``gt``'s images by file
        name (:func:`match_images`).
    masks : bool, optional
        Score masks too. Default: when every ground-truth annotation has a
        ``segmentation`` and every prediction a mask; ``True`` refuses otherwise.

    Returns
    -------
    dict
        ``box``: ``{"ap", "ap50", "ap75", "ar1", "ar3", "ar10", "ar100"}`` (fractions);
        ``mask``: the same for masks, or ``None`` (not available: ground truth or
        predictions without masks); ``corloc_objects``, ``corloc_top`` (see the module
        docstring); ``n_images``, ``n_objects`` (non-crowd), ``n_crowd``,
        ``n_predictions`` (those scored); ``per_image`` (one record per ground-truth image:
        ``file_name``, ``n_objects``, ``n_predictions``, ``objects_hit``, ``top_iou``);
        ``unmatched`` (file names of the ground-truth images without a prediction entry,
        counted as no detection), ``mismatched`` (``{"file_name", "error"}``: images whose
        predictions were dropped, made for another image size: the file's ``width`` /
        ``height`` or a mask's size differ from the image's), ``extra``
        (prediction images not in the ground truth), ``notes``.

    Raises
    ------
    ValueError
        ``pred`` is malformed, or none of its images is one of ``gt``'s.
    """
    from .metrics import CORLOC_THRESHOLD, box_iou, object_corloc

    if masks not in (None, True, False):
        raise ValueError(f"masks: expected None, True or False, got {masks!r}")
    notes = validate_instances(pred)
    gt = class_agnostic(gt)
    if gt["images"] and pred["images"]:
        pred_to_gt, unmatched, extra = match_images(gt["images"], pred["images"])
    else:
        pred_to_gt, unmatched, extra = {}, list(gt["images"]), len(pred["images"])
    if gt["images"] and not pred_to_gt:
        example = pred["images"][0]["file_name"] if pred["images"] else None
        raise ValueError(
            f"none of the {len(pred['images'])} images of the predictions is an image of the dataset "
            f"({len(gt['images'])} images, e.g. '{gt['images'][0]['file_name']}'"
            + (f"; the predictions have e.g. '{example}')" if example else "; the predictions have no images)")
        )
    check_pycocotools_available()
    from pycocotools import mask as mask_utils

    gt_images = {image["id"]: image for image in gt["images"]}
    pred_images = {image["id"]: image for image in pred["images"]}
    mismatched: dict = {}  # ground-truth image id -> why its predictions are dropped
    for pred_id, gt_id in pred_to_gt.items():
        image, other = gt_images[gt_id], pred_images[pred_id]
        if "width" not in image and "width" in other and "height" in other:  # a size only the predictions know
            image["width"], image["height"] = other["width"], other["height"]
        elif "width" in image and "width" in other and (image["width"], image.get("height")) != (other["width"], other.get("height")):
            mismatched[gt_id] = (
                f"the predictions are for a {other['width']}x{other.get('height')} image, "
                f"the dataset's is {image['width']}x{image.get('height')}"
            )

    # the predictions, in the ground truth's image ids; masks compressed
    detections = []
    for ann in pred["annotations"]:
        gt_id = pred_to_gt.get(ann["image_id"])
        if gt_id is None or gt_id in mismatched:
            continue
        image = gt_images[gt_id]
        detection = {"image_id": gt_id, "category_id": 1, "score": float(ann.get("score", 1.0))}
        segmentation = ann.get("segmentation")
        if segmentation is not None:
            height, width = image.get("height"), image.get("width")
            if isinstance(segmentation, dict):
                if height is not None and list(segmentation["size"]) != [height, width]:
                    mismatched[gt_id] = (
                        f"a predicted mask is {segmentation['size'][1]}x{segmentation['size'][0]}, "
                        f"the image {width}x{height}"
                    )
                    continue
                if isinstance(segmentation["counts"], list):  # uncompressed RLE
                    segmentation = mask_utils.frPyObjects(segmentation, *segmentation["size"])
            else:
                if height is None:
                    raise ValueError(f"polygon masks need the image size, which '{image['file_name']}' lacks")
                segmentation = mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
            if isinstance(segmentation.get("counts"), bytes):
                segmentation = dict(segmentation, counts=segmentation["counts"].decode("ascii"))
            detection["segmentation"] = segmentation
        detection["bbox"] = (
            [float(v) for v in ann["bbox"]] if "bbox" in ann else [float(v) for v in mask_utils.toBbox(segmentation)]
        )
        detections.append(detection)
    detections = [d for d in detections if d["image_id"] not in mismatched]
    if mismatched:
        notes.append(f"{len(mismatched)} image(s) whose predictions are for another image size: no detection counted")

    box_scores = coco_ap_ar(gt, [{k: d[k] for k in ("image_id", "category_id", "score", "bbox")} for d in detections], "bbox")
    gt_have_masks = bool(gt["annotations"]) and all("segmentation" in a for a in gt["annotations"])
    pred_have_masks = all("segmentation" in d for d in detections)
    if masks and not (gt_have_masks and pred_have_masks):
        raise ValueError("masks: " + ("the ground truth has no masks" if not gt_have_masks else "a prediction has no mask"))
    mask_scores = None
    if masks is not False and gt_have_masks and pred_have_masks:
        mask_scores = coco_ap_ar(
            gt, [{k: d[k] for k in ("image_id", "category_id", "score", "segmentation")} for d in detections], "segm"
        )

    # CorLoc on boxes: every ground-truth image, its non-crowd objects, its top predictions
    by_image: dict = {image_id: [] for image_id in gt_images}
    for detection in detections:
        by_image[detection["image_id"]].append(detection)
    objects: dict = {image_id: [] for image_id in gt_images}
    n_crowd = 0
    for ann in gt["annotations"]:
        if ann.get("iscrowd", 0):
            n_crowd += 1
        elif ann["image_id"] in objects:
            objects[ann["image_id"]].append(_xyxy(ann["bbox"]))
    order = list(gt_images)
    top = {
        i: [_xyxy(d["bbox"]) for d in sorted(by_image[i], key=lambda d: -d["score"])[:CORLOC_MAX_DETS]] for i in order
    }  # sorted() is stable: equal scores keep the file's order, as COCOeval's mergesort
    corloc_objects, hits = object_corloc([top[i] for i in order], [objects[i] for i in order])
    per_image, top_hits = [], 0
    for image_id, hit in zip(order, hits):
        gt_boxes = np.asarray(objects[image_id], dtype=np.float64).reshape(-1, 4)
        top_iou = float(box_iou(top[image_id][0], gt_boxes).max()) if top[image_id] and len(gt_boxes) else 0.0
        top_hits += top_iou >= CORLOC_THRESHOLD
        per_image.append(
            {"file_name": gt_images[image_id]["file_name"], "n_objects": len(gt_boxes),
             "n_predictions": len(by_image[image_id]), "objects_hit": hit, "top_iou": top_iou}
        )  # fmt: skip
    return {
        "box": box_scores,
        "mask": mask_scores,
        "corloc_objects": corloc_objects,
        "corloc_top": top_hits / len(order) if order else float("nan"),
        "n_images": len(order),
        "n_objects": sum(len(v) for v in objects.values()),
        "n_crowd": n_crowd,
        "n_predictions": len(detections),
        "per_image": per_image,
        "unmatched": [image["file_name"] for image in unmatched],
        "mismatched": [{"file_name": gt_images[i]["file_name"], "error": e} for i, e in mismatched.items()],
        "extra": extra,
        "notes": notes,
    }
