"""Every recipe of ``--method`` in one table: parity and eigen-step speed against its
authors' own code, and quality with oracle features.

**Against the authors' code** (imported at run time from checkouts; a recipe whose
checkout is not given is listed as not compared). Both sides get the same random-weight
ViT-S/16 features (timm, seed 0) and the same photos from ``../shared/data``:

- ``dsm``: the paper's ``_extract_eig`` (lukemelas/deep-spectral-segmentation), through
  ``bench_paper_parity.py`` (|cos| of eigenvectors 1-4 with a clear gap, box IoU, mask IoU
  of ``y₁ > 0``; eigen-step = their ``_extract_eig`` call vs ``deepspectral.decompose``);
- ``tokencut``: TokenCut's ``ncut`` and saliency path (YangtaoWANG95/TokenCut), through
  ``bench_tokencut_parity.py`` (|cos| of the second eigenvector where its gap is clear,
  box IoU, saliency mask IoU; eigen-step = their ``ncut`` vs ours, graph to box);
- ``maskcut``: CutLER's ``maskcut`` (facebookresearch/CutLER), through
  ``bench_maskcut.py`` when it is present.

Each side's time is the best of ``--repeat`` runs per photo; the table gives the median
over the photos and the smallest per-photo speed-up.

**Oracle features** (``tests/oracle.py``: one feature direction inside the ground-truth
object, another outside, plus noise) with the real photo's colours: mean mask IoU on SOD and
DAVIS (``segment_object``, no refinement) and CorLoc on COCO-MINI (``localize``; the
oracle object is the union of the image's non-crowd instances, a hit is IoU ≥ 0.5 with any
of its boxes). This measures the recipe's logic (graph, split, side, box) without a
backbone.

::

    python benchmarks/bench_methods.py --dsm PATH --tokencut PATH [--cutler PATH] \\
        [--data ../shared/data] [--photos 10] [--repeat 3] [--oracle 30]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

#: The parity targets of issue #13 (eigenvectors with a clear gap, boxes, masks).
TARGET_COS, TARGET_BOX_IOU, TARGET_MASK_IOU = 0.99, 0.9, 0.95
#: A second eigenvector's gap is clear when ``1 − λ₁/λ₂`` is at least this (as for the
#: paper's recipe in ``bench_paper_parity.py``).
CLEAR_GAP = 0.01
#: Oracle feature noise (``oracle_features``' default).
ORACLE_NOISE = 0.3


def _commit(checkout: Path) -> str:
    """The checkout's commit: ``git rev-parse``, or the first line of a ``COMMIT`` file
    (a checkout exported with ``git archive`` has no ``.git``)."""
    import subprocess

    done = subprocess.run(["git", "-C", str(checkout), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    if done.returncode == 0:
        return done.stdout.strip()
    marker = checkout / "COMMIT"
    return marker.read_text().split()[0][:7] if marker.is_file() else "unknown commit"


def compare_dsm(checkout: Path, photos: list[Path], repeat: int) -> dict:
    import bench_paper_parity as paper

    code, results = paper.run(checkout, photos, repeat=repeat)
    figures = paper.summary(results)
    return {
        "code": f"lukemelas/deep-spectral-segmentation @ {code.commit[:7]}",
        "photos": figures["photos"],
        "min_cos": figures["min_cos"],
        "cos_note": f"{figures['clear_vectors']}/{figures['vectors']} eigenvectors",
        "min_box_iou": float(figures["box_ious"].min()),
        "min_mask_iou": float(figures["mask_ious"].min()),
        "ours_ms": figures["ours_ms"],
        "theirs_ms": figures["theirs_ms"],
    }


def compare_tokencut(checkout: Path, photos: list[Path], repeat: int) -> dict:
    import bench_tokencut_parity as tokencut

    rows = tokencut.run(checkout, photos, repeat=repeat, bilateral=False)
    clear = [r["cos"] for r in rows if r["gap"] >= CLEAR_GAP]
    return {
        "code": f"YangtaoWANG95/TokenCut @ {_commit(checkout)}",
        "photos": len(rows),
        "min_cos": min(clear) if clear else float("nan"),
        "cos_note": f"{len(clear)}/{len(rows)} eigenvectors",
        "min_box_iou": min(r["box_iou"] for r in rows),
        "min_mask_iou": min(r["mask_iou"] for r in rows),
        "ours_ms": np.array([r["ours_ms"] for r in rows]),
        "theirs_ms": np.array([r["theirs_ms"] for r in rows]),
    }


def compare_maskcut(checkout: Path, photos: list[Path], repeat: int) -> dict | None:
    path = ROOT / "benchmarks" / "bench_maskcut.py"
    if not path.exists():
        return None
    import bench_maskcut

    return bench_maskcut.compare(checkout, photos, repeat=repeat)


COMPARISONS = {"dsm": compare_dsm, "tokencut": compare_tokencut, "maskcut": compare_maskcut}


def _coco_oracle_cases(data: Path, limit: int):
    """(image path, union of the non-crowd instance masks, boxes xyxy) of COCO-MINI val."""
    from pycocotools.coco import COCO

    folder = data / "coco-mini"
    coco = COCO(str(folder / "annotations" / "instances_val2017.json"))
    for image_id in sorted(coco.getImgIds())[:limit]:
        info = coco.loadImgs(image_id)[0]
        annotations = [a for a in coco.loadAnns(coco.getAnnIds(imgIds=image_id)) if not a.get("iscrowd", 0)]
        if not annotations:
            continue
        union = np.zeros((info["height"], info["width"]), bool)
        for annotation in annotations:
            union |= coco.annToMask(annotation).astype(bool)
        boxes = [[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]] for a in annotations]
        yield folder / "val2017" / info["file_name"], union, np.array(boxes, float)


def _mask_cases(data: Path, dataset: str, limit: int):
    """(image path, ground-truth mask) of SOD or (every 10th) DAVIS frame."""
    from PIL import Image

    if dataset == "sod":
        images = sorted((data / "sod" / "images").glob("*.jpg"))[:limit]
        masks = [data / "sod" / "GT" / f"{p.stem}.png" for p in images]
    else:
        images = sorted((data / "davis2016-val" / "JPEGImages").glob("*/*.jpg"))[::5][:limit]
        masks = [data / "davis2016-val" / "Annotations" / p.parent.name / f"{p.stem}.png" for p in images]
    for image, mask in zip(images, masks):
        yield image, np.asarray(Image.open(mask).convert("L")) > 127


def oracle_quality(methods: list[str], data: Path, limit: int) -> dict[str, dict]:
    """Per recipe: mean mask IoU on SOD and DAVIS, CorLoc on COCO-MINI, ms per image."""
    from oracle import iou, oracle_features

    from deepspectral import localize, segment_object
    from deepspectral.data.images import load_image
    from deepspectral.metrics import corloc_hit
    from deepspectral.recipes import decompose

    quality = {m: {"sod": [], "davis": [], "coco": [], "seconds": []} for m in methods}
    cases = [("sod", p, m, None) for p, m in _mask_cases(data, "sod", limit)]
    cases += [("davis", p, m, None) for p, m in _mask_cases(data, "davis", limit)]
    if importlib.util.find_spec("pycocotools") is not None:
        cases += [("coco", p, m, b) for p, m, b in _coco_oracle_cases(data, limit)]
    else:
        print("pycocotools not installed: no COCO-MINI CorLoc (pip install pycocotools)", file=sys.stderr)
    for dataset, path, mask, boxes in cases:
        image = load_image(path)
        features = oracle_features(mask, noise=ORACLE_NOISE, seed=0)
        for method in methods:
            start = time.perf_counter()
            decomposition = decompose(features, image, method=method)
            if dataset == "coco":
                quality[method]["coco"].append(corloc_hit(localize(decomposition), boxes))
            else:
                quality[method][dataset].append(iou(segment_object(decomposition, image, refine="none"), mask))
            quality[method]["seconds"].append(time.perf_counter() - start)
    return quality


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dsm", type=Path, help="checkout of lukemelas/deep-spectral-segmentation")
    parser.add_argument("--tokencut", type=Path, help="checkout of YangtaoWANG95/TokenCut")
    parser.add_argument("--cutler", type=Path, help="checkout of facebookresearch/CutLER (with third_party/TokenCut)")
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--photos", type=int, default=10, help="photos of each of SOD, COCO-MINI, DAVIS for parity")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per photo and side (best kept)")
    parser.add_argument("--oracle", type=int, default=30, help="images of each dataset for the oracle quality (0: skip)")
    args = parser.parse_args()
    if not args.data.is_dir():
        sys.exit(f"--data: no folder {args.data} (the shared photos with ground truth)")

    from golden_outputs import pick_photos

    from deepspectral.recipes import METHODS

    photos = pick_photos(args.data, args.photos)
    checkouts = {"dsm": args.dsm, "tokencut": args.tokencut, "maskcut": args.cutler}
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, python "
          f"{platform.python_version()}; load average at the start {os.getloadavg()[0]:.1f}")  # fmt: skip
    print(f"photos: {len(photos)} ({args.photos} each of SOD, COCO-MINI, DAVIS), random-weight ViT-S/16 "
          f"(seed 0), best of {args.repeat} timed runs per photo and side\n")  # fmt: skip

    rows = []
    for method, compare in COMPARISONS.items():
        checkout = checkouts[method]
        if checkout is None:
            rows.append(f"| {method} | not compared (no checkout given) |" + " |" * 7)
            continue
        figures = compare(checkout, photos, args.repeat)
        if figures is None:
            rows.append(f"| {method} | not compared (no benchmark for it) |" + " |" * 7)
            continue
        ratio = figures["theirs_ms"] / figures["ours_ms"]
        rows.append(
            f"| {method} | {figures['code']} | {figures['photos']} | {figures['min_cos']:.4f} ({figures['cos_note']}) | "
            f"{figures['min_box_iou']:.3f} | {figures['min_mask_iou']:.3f} | {np.median(figures['theirs_ms']):.1f} | "
            f"{np.median(figures['ours_ms']):.1f} | {np.median(ratio):.1f}× (min {ratio.min():.1f}×) |"
        )
    print(f"targets: |cos| >= {TARGET_COS} where the gap is clear, box IoU >= {TARGET_BOX_IOU}, "
          f"mask IoU >= {TARGET_MASK_IOU}, eigen-step >= 5x faster\n")  # fmt: skip
    print("| recipe | authors' code | photos | min \\|cos\\| (clear gap) | min box IoU | min mask IoU | "
          "theirs ms (median) | ours ms (median) | speed-up median (min) |")  # fmt: skip
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    print("\n".join(rows))
    print(f"load average at the end of the comparison {os.getloadavg()[0]:.1f}\n")

    if args.oracle > 0:
        methods = list(METHODS)
        quality = oracle_quality(methods, args.data, args.oracle)
        print(f"oracle features (noise {ORACLE_NOISE}), {args.oracle} images of each dataset\n")
        print("| recipe | SOD mask IoU | DAVIS mask IoU | COCO-MINI CorLoc | ms per image |")
        print("|---|---:|---:|---:|---:|")
        for method in methods:
            q = quality[method]
            cells = [f"{np.mean(q[d]):.3f} ({len(q[d])})" if q[d] else "—" for d in ("sod", "davis", "coco")]
            print(f"| {method} | {' | '.join(cells)} | {1000 * np.median(q['seconds']):.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
