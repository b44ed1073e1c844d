"""Object discovery on oracle features of COCO-MINI, scored by ``eval discovery`` (#14).

Each image of COCO-MINI (``../shared/data/coco-mini``: val2017 + train2017, 159 images)
gets oracle patch features made from its instance masks (``tests/oracle.py``
``oracle_instance_features``: each instance its own feature direction, the background
another, plus noise) — what a perfect backbone would give. ``deepspectral discover``'s
function runs on them with ``--max-objects`` 1, 3, 5 and ``auto``; each setting's masks go
to ``OUT/<setting>/instances.json`` (COCO format) and are scored class-agnostic against
COCO-MINI's annotation by :func:`deepspectral.discovery_eval.discovery_metrics` (what
``deepspectral eval discovery --pred`` runs). Two reference rows bound what any method
can reach: ``ground truth`` (the annotation itself as predictions, score = area: AR@N is
capped by the images holding more than N objects) and ``patch grid`` (each instance as
the oracle's patch grid draws it, upsampled: what is lost to the grid alone).

The table: mean instances per image against the ground-truth count, box AP, AP50, AR@1,
AR@3, AR@10, mask AP50, multi-object CorLoc, seconds per image; a second table gives the
mean instances per image by the images' ground-truth count (1, 2-3, 4-7, 8 or more), to see
whether ``auto`` gives a photo with one object one mask and a crowded one more. ``--max-gt-objects K``
keeps the images with at most K non-crowd objects (``3``: where AR@3 can reach 1);
``--ignore-smaller A`` makes the objects of fewer than A pixels ignore regions (as COCO's
crowd regions: neither to be found nor false positives when found; ``1024`` = COCO's
"small" objects, below 32 x 32 pixels, which a 16-pixel patch grid at 480 x 480 barely
draws). The images then kept are those with 1..K objects of at least A pixels.

::

    python benchmarks/bench_discovery_oracle.py [--data ../shared/data/coco-mini] [--limit N]
        [--max-objects 1,3,5,auto] [--resize 480] [--patch 16] [--noise 0.3] [--max-gt-objects K] [-o OUT]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "src"))


def _counted(sample, ignore_smaller: float) -> int:
    """Non-crowd objects of a sample of at least ``ignore_smaller`` pixels."""
    return sum(1 for a in sample.instances if not a.get("iscrowd", 0) and float(a.get("area", 0)) >= ignore_smaller)


def _dataset(data: Path, limit: int | None, max_gt_objects: int | None, ignore_smaller: float):
    from deepspectral.data.datasets import load_coco_boxes

    val = load_coco_boxes(data / "val2017", data / "annotations" / "instances_val2017.json", name="coco-mini")
    train = load_coco_boxes(data / "train2017", data / "annotations" / "instances_train2017.json")
    val.samples = [s for s in val.samples + train.samples if _counted(s, ignore_smaller) > 0]
    if max_gt_objects is not None:
        val.samples = [s for s in val.samples if _counted(s, ignore_smaller) <= max_gt_objects]
    return val.subset(limit=limit)


def _rle(mask: np.ndarray) -> dict:
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def _instances(dataset, masks_per_image: list, scores_per_image: list) -> dict:
    """A COCO instances dictionary (as ``discover`` writes) of masks ``(K, H, W)`` per image."""
    images, annotations = [], []
    for index, (sample, masks, scores) in enumerate(zip(dataset, masks_per_image, scores_per_image), start=1):
        height, width = sample.image_size
        images.append({"id": index, "file_name": sample.image_id + sample.image_path.suffix, "width": width, "height": height})
        for mask, score in zip(masks, scores):
            if not mask.any():
                continue
            ys, xs = np.nonzero(mask)
            x, y = int(xs.min()), int(ys.min())
            annotations.append({
                "id": len(annotations) + 1, "image_id": index, "category_id": 1,
                "bbox": [x, y, int(xs.max()) + 1 - x, int(ys.max()) + 1 - y], "segmentation": _rle(mask),
                "area": int(mask.sum()), "score": float(score), "iscrowd": 0,
            })  # fmt: skip
    return {"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "object"}]}


def _grid_masks(masks: np.ndarray, args) -> np.ndarray:
    """Each instance as the oracle's patch grid draws it, back at the image size (nearest)."""
    from PIL import Image

    from deepspectral.geometry import input_size_for
    from oracle import patch_labels

    image_size = masks.shape[1:]
    size = (args.resize, args.resize) if args.resize else input_size_for(image_size, args.max_size)
    labels = patch_labels(masks, size, args.patch)
    full = np.zeros((size[0], size[1]), dtype=np.int32)
    full[: labels.shape[0] * args.patch, : labels.shape[1] * args.patch] = np.kron(labels, np.ones((args.patch, args.patch), int))
    back = np.asarray(Image.fromarray(full).resize((image_size[1], image_size[0]), Image.Resampling.NEAREST))
    return np.asarray([back == k for k in range(1, len(masks) + 1)], dtype=bool).reshape(len(masks), *image_size)


def _discover(image: np.ndarray, features, setting: str, args) -> tuple[np.ndarray, list]:
    """``deepspectral.discover`` on given features: ``(K, H, W) bool`` masks and their
    scores. (The one place that knows the discover API.)"""
    try:
        from deepspectral.tasks.discover import discover
    except ImportError as error:
        raise SystemExit(f"deepspectral.tasks.discover is not in this checkout ({error}): merge the maskcut branch")
    max_objects = setting if setting == "auto" else int(setting)
    found = discover(features, image, max_objects=max_objects, tau=args.tau, refine=args.refine)
    masks = np.asarray([instance.mask for instance in found], dtype=bool).reshape(-1, *image.shape[:2])
    return masks, [float(instance.score) for instance in found]


def _written_by_discover(dataset, masks_per_image: list, scores_per_image: list) -> dict:
    """The instances dictionary as ``deepspectral discover`` writes it (its own writer)."""
    from deepspectral.instances import annotation, coco_instances, image_record

    records = []
    for sample, masks, scores in zip(dataset, masks_per_image, scores_per_image):
        found = [annotation(mask, score) for mask, score in zip(masks, scores) if mask.any()]
        records.append(image_record(sample.image_id + sample.image_path.suffix, sample.image_size, found))
    return coco_instances(records)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "coco-mini")
    parser.add_argument("--limit", type=int, default=None, help="the first N images (default: all 159)")
    parser.add_argument("--max-objects", default="1,3,5,auto", help="settings of discover --max-objects to compare")
    parser.add_argument("--resize", type=int, default=480, help="square input size as MaskCut (0: keep the aspect ratio)")
    parser.add_argument("--max-size", type=int, default=800, help="longest side with --resize 0")
    parser.add_argument("--patch", type=int, default=16)
    parser.add_argument("--noise", type=float, default=0.3)
    parser.add_argument("--tau", type=float, default=0.15, help="MaskCut's affinity threshold")
    parser.add_argument("--refine", default="none", help="discover --refine (crf needs the photo; none by default)")
    parser.add_argument("--max-gt-objects", type=int, default=None, help="keep images with at most K non-crowd objects")
    parser.add_argument("--ignore-smaller", type=float, default=0.0, metavar="A",
                        help="objects of fewer than A pixels are ignore regions (1024: COCO's small objects)")
    parser.add_argument("--references-only", action="store_true", help="only the ground-truth and patch-grid rows")
    parser.add_argument("-o", "--out", type=Path, default=None, help="write OUT/<setting>/instances.json and results")
    args = parser.parse_args()

    from deepspectral.discovery_eval import discovery_metrics, ground_truth_from_dataset
    from oracle import instance_masks, oracle_instance_features

    dataset = _dataset(args.data, args.limit, args.max_gt_objects, args.ignore_smaller)
    if not len(dataset):
        raise SystemExit(f"no images under {args.data}")
    gt = ground_truth_from_dataset(dataset)
    for ann in gt["annotations"]:  # small objects: ignore regions, as COCO's crowd regions
        if float(ann.get("area", 0)) < args.ignore_smaller:
            ann["iscrowd"] = 1
    n_gt = np.mean([_counted(s, args.ignore_smaller) for s in dataset])
    print(f"COCO-MINI: {len(dataset)} images, {n_gt:.2f} objects per image on average (non-crowd"
          + (f", at least {args.ignore_smaller:g} pixels" if args.ignore_smaller else "") + "); oracle features "
          f"patch {args.patch}, noise {args.noise}, input {f'{args.resize}x{args.resize}' if args.resize else 'aspect kept'}\n")  # fmt: skip
    masks = [instance_masks(sample) for sample in dataset]
    crowd = [np.asarray([bool(a.get("iscrowd", 0)) for a in sample.instances]) for sample in dataset]

    rows = []
    start = time.perf_counter()
    truth = [m[~c] for m, c in zip(masks, crowd)]  # rasterised here (PIL), not by pycocotools: tiny ones differ
    rows.append(("ground truth", truth, [[float(x.sum()) for x in m] for m in truth], time.perf_counter() - start))
    start = time.perf_counter()
    grid = [_grid_masks(m, args)[~c] if len(m) else m for m, c in zip(masks, crowd)]
    rows.append(("patch grid", grid, [[float(x.sum()) for x in m] for m in grid], time.perf_counter() - start))
    settings = [] if args.references_only else [s.strip() for s in args.max_objects.split(",") if s.strip()]
    for setting in settings:
        found, scores = [], []
        start = time.perf_counter()
        for index, (sample, instance) in enumerate(zip(dataset, masks)):
            size = (args.resize, args.resize) if args.resize else None
            features = oracle_instance_features(instance, patch_size=args.patch, noise=args.noise, seed=index,
                                                max_size=args.max_size, input_size=size)  # fmt: skip
            m, s = _discover(sample.load_image(), features, setting, args)
            found.append(m)
            scores.append(s)
        rows.append((f"discover --max-objects {setting}", found, scores, time.perf_counter() - start))
        print(f"discover --max-objects {setting}: {rows[-1][3] / len(dataset):.3f} s per image", file=sys.stderr)

    counts = np.asarray([_counted(s, args.ignore_smaller) for s in dataset])
    buckets = [("1", counts == 1), ("2-3", (counts >= 2) & (counts <= 3)), ("4-7", (counts >= 4) & (counts <= 7)),
               ("8+", counts >= 8)]  # fmt: skip
    header = ["predictions", "per image", "GT per image", "box AP", "AP50", "AR@1", "AR@3", "AR@10", "mask AP50",
              "CorLoc objects", "s / image"]  # fmt: skip
    print("| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    for name, found, scores, seconds in rows:
        pred = (_written_by_discover if name.startswith("discover") else _instances)(dataset, found, scores)
        result = discovery_metrics(gt, pred)
        box, mask = result["box"], result["mask"] or {}
        cells = [name, f"{np.mean([len(m) for m in found]):.2f}", f"{n_gt:.2f}"]
        cells += [f"{100 * box[k]:.1f}" for k in ("ap", "ap50", "ar1", "ar3", "ar10")]
        cells += [f"{100 * mask['ap50']:.1f}" if mask else "-", f"{100 * result['corloc_objects']:.1f}",
                  f"{seconds / len(dataset):.3f}"]  # fmt: skip
        print("| " + " | ".join(cells) + " |", flush=True)
        if args.out is not None:
            folder = args.out / name.replace("discover --max-objects ", "max-objects-").replace(" ", "-")
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "instances.json").write_text(json.dumps(pred))
            (folder / "scores.json").write_text(json.dumps({k: v for k, v in result.items() if k != "per_image"}, indent=1))

    print("\nInstances per image by the number of ground-truth objects of the image (images in brackets):\n")
    print("| predictions | " + " | ".join(f"{name} ({int(chosen.sum())})" for name, chosen in buckets) + " |")
    print("|---|" + "---|" * len(buckets))
    for name, found, _, _ in rows[2:]:  # the discover rows (the references count every instance)
        found_counts = np.asarray([len(m) for m in found])
        cells = [f"{found_counts[chosen].mean():.2f}" if chosen.any() else "-" for _, chosen in buckets]
        print(f"| {name} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
