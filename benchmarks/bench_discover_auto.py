"""How many objects ``--max-objects auto`` finds, per ``--min-score``, on COCO-MINI with oracle
features (each ground-truth instance its own feature direction, ``tests/oracle.py``'s noise).

Per photo of ``../shared/data/coco-mini/val2017`` with at least one instance of area
``>= --min-area``: the largest ``--max-gt`` instances become oracle features on the 16-px patch
grid of the photo (longest side 480, as ``discover``'s default), MaskCut's cuts are made up
to ``AUTO_MAX_OBJECTS`` and, for each threshold, the objects found are the cuts before the
first one scoring below it (what ``auto`` keeps). The table: share of photos with exactly the
ground-truth count, mean |found − truth|, and instance recall (ground-truth instances matched
by a found one at IoU ≥ 0.5 on the grid).

::

    python benchmarks/bench_discover_auto.py [--photos 60] [--noise 0.3]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

THRESHOLDS = (0.0, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9)
#: The fixed number of cuts compared with (MaskCut's N).
FIXED = 3


def grid_labels(masks, shape, patch=16, max_size=480):
    """Instance index (0: background) of each patch of the photo resized to ``max_size``."""
    from PIL import Image

    scale = max_size / max(shape)
    size = (max(patch, round(shape[0] * scale)), max(patch, round(shape[1] * scale)))
    h, w = size[0] // patch, size[1] // patch
    labels = np.zeros((h, w), dtype=int)
    best = np.zeros((h, w))
    for index, mask in enumerate(masks, 1):
        small = np.asarray(Image.fromarray(mask.astype(np.float32)).resize((w, h), Image.Resampling.BOX))
        labels[(small > 0.5) & (small > best)] = index
        best = np.maximum(best, small)
    return labels


def main() -> int:
    from pycocotools.coco import COCO

    from deepspectral import defaults
    from deepspectral.recipes.maskcut import maskcut

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--photos", type=int, default=60)
    parser.add_argument("--max-gt", type=int, default=3, help="largest ground-truth instances kept per photo")
    parser.add_argument("--min-area", type=int, default=4000, help="smallest instance kept (pixels)")
    parser.add_argument("--noise", type=float, default=0.3)
    args = parser.parse_args()
    coco = COCO(str(args.data / "coco-mini" / "annotations" / "instances_val2017.json"))
    rng = np.random.default_rng(0)
    rows = {t: {"exact": [], "error": [], "found": 0} for t in (*THRESHOLDS, "fixed")}
    truth_total = 0
    used = 0
    for image_id in sorted(coco.getImgIds()):
        info = coco.loadImgs([image_id])[0]
        if not (args.data / "coco-mini" / "val2017" / info["file_name"]).is_file():
            continue
        anns = [a for a in coco.loadAnns(coco.getAnnIds(imgIds=[image_id], iscrowd=False)) if a["area"] >= args.min_area]
        if not anns:
            continue
        anns = sorted(anns, key=lambda a: -a["area"])[: args.max_gt]
        labels = grid_labels([coco.annToMask(a).astype(bool) for a in anns], (info["height"], info["width"]))
        present = [i for i in range(1, len(anns) + 1) if (labels == i).any()]
        if not present:
            continue
        dim = 64
        directions = np.linalg.qr(rng.standard_normal((dim, len(anns) + 1)))[0].T
        features = directions[labels] + rng.standard_normal((*labels.shape, dim)) * args.noise / np.sqrt(dim)
        cuts = maskcut(features.astype(np.float32), n_cuts=defaults.AUTO_MAX_OBJECTS)
        truth_total += len(present)
        for threshold in (*THRESHOLDS, "fixed"):
            kept = []
            for number, cut in enumerate(cuts):
                if (threshold == "fixed" and number == FIXED) or (threshold != "fixed" and cut.score < threshold):
                    break
                if cut.mask.any():
                    kept.append(cut.mask)
            rows[threshold]["exact"].append(len(kept) == len(present))
            rows[threshold]["error"].append(abs(len(kept) - len(present)))
            for index in present:
                target = labels == index
                if any((m & target).sum() / (m | target).sum() >= 0.5 for m in kept):
                    rows[threshold]["found"] += 1
        used += 1
        if used == args.photos:
            break
    print(f"\n### --max-objects auto on COCO-MINI, oracle features (noise {args.noise}), {used} photos, "
          f"{truth_total} instances (largest {args.max_gt} per photo, area >= {args.min_area})\n")
    print("| --min-score | exact count | mean abs(found - truth) | instance recall (IoU >= 0.5) |")
    print("|---|---|---|---|")
    for threshold in (*THRESHOLDS, "fixed"):
        row = rows[threshold]
        label = f"(none: --max-objects {FIXED})" if threshold == "fixed" else threshold
        print(f"| {label} | {100 * np.mean(row['exact']):.0f} % | {np.mean(row['error']):.2f} | {row['found'] / truth_total:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
