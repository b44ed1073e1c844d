"""Benchmark of ``deepspectral matte``: time, peak memory and agreement of the two modes.

::

    python benchmarks/bench_matting.py                      # SOD + DAVIS photos from ../shared/data
    python benchmarks/bench_matting.py --n-sod 3 --n-davis 2 --json out.json

For each *feature source* — ``oracle16`` / ``oracle8`` (patch features made from the
ground-truth mask with 16- / 8-pixel patches: what a perfect ViT-*/16 or ViT-*/8 would
give; this bypasses the backbone) and ``random`` (a random-initialised ViT-S/16 loaded through
the offline weights path: the features are meaningless, the cost is real) — and each
*mode* (``fast``, ``full``) a separate worker process mattes the photos, so that its peak
RSS (``resource.getrusage``) is its own. Reported per (source, mode): median seconds per
photo (features included for ``random``), peak RSS, mean IoU of ``alpha > 0.5`` with the
ground truth; per source: agreement of the modes, mean ``|alpha_fast - alpha_full|`` and
IoU of the two ``alpha > 0.5`` masks. Two size targets are timed as well (``random``
features, end to end): the full mode on a 500 x 375 photo, the fast mode on a 1-megapixel
photo. Full-mode runs use SOD photos only (481 x 321); DAVIS frames (854 x 480) are
matted in fast mode only, unless ``--full-davis``. ``--modes fast`` skips the full mode
(e.g. for the oracle IoU over many photos: ``--n-sod 40 --n-davis 20 --modes fast
--sources oracle16,oracle8 --no-targets``).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))


def _photos(data: Path, n_sod: int, n_davis: int):
    from PIL import Image

    from deepspectral.data.images import load_image

    photos = []
    for gt in sorted((data / "sod" / "GT").glob("*.png"))[:n_sod]:
        image = sorted((data / "sod" / "images").glob(gt.stem + ".*"))[0]
        photos.append(("sod/" + gt.stem, load_image(image), np.asarray(Image.open(gt).convert("L")) > 127))
    annotations = sorted((data / "davis2016-val" / "Annotations").glob("*/*.png"))
    step = max(1, len(annotations) // max(n_davis, 1))
    for annotation in annotations[::step][:n_davis]:
        frame = data / "davis2016-val" / "JPEGImages" / annotation.parent.name / (annotation.stem + ".jpg")
        photos.append(
            ("davis/" + annotation.parent.name + "/" + annotation.stem, load_image(frame), np.asarray(Image.open(annotation).convert("L")) > 127)
        )
    return photos


def _random_weights(folder: Path) -> Path:
    path = folder / "random_vits16.pth"
    if not path.is_file():
        import timm
        import torch

        torch.manual_seed(0)
        torch.save(timm.create_model("vit_small_patch16_224", pretrained=False, num_classes=0).state_dict(), path)
    return path


def _worker(args) -> None:
    """One (source, mode) configuration; writes alphas to an npz and prints one JSON line."""
    warnings.simplefilter("ignore")
    from oracle import iou, oracle_features

    from deepspectral.tasks.matting import matte

    backbone = None
    if args.source == "random":
        from deepspectral.backbones import Backbone

        backbone = Backbone("dino_vits16", weights=args.weights, device="cpu")
    photos = _photos(Path(args.data), args.n_sod, args.n_davis)
    if args.mode == "full" and not args.full_davis:
        photos = [p for p in photos if p[0].startswith("sod/")]
    records, alphas = [], {}
    for name, image, mask in photos:
        start = time.perf_counter()
        if backbone is None:
            patch = int(args.source[len("oracle"):] or 16)
            result = matte(image, features=oracle_features(mask, patch_size=patch), mode=args.mode)
        else:
            result = matte(image, backbone=backbone, mode=args.mode)
        seconds = time.perf_counter() - start
        alphas[name] = result.alpha
        records.append(
            {"image": name, "size": list(image.shape[:2]), "seconds": seconds, "iou_gt": iou(result.alpha > 0.5, mask),
             "feature_entries": result.settings.get("feature_entries")}
        )
    np.savez(args.alphas, **{k.replace("/", "__"): v for k, v in alphas.items()})
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"source": args.source, "mode": args.mode, "peak_rss_mb": peak, "records": records}))


def _target(args) -> None:
    """One size target: ``full`` on 500 x 375 or ``fast`` on 1 megapixel, random features."""
    warnings.simplefilter("ignore")
    from deepspectral.backbones import Backbone
    from deepspectral.geometry import resize_image
    from deepspectral.tasks.matting import matte

    photo = _photos(Path(args.data), 0, 1)[0][1] if args.mode == "fast" else _photos(Path(args.data), 1, 0)[0][1]
    size = (375, 500) if args.mode == "full" else (750, 1333)
    image = resize_image(photo, size)
    backbone = Backbone("dino_vits16", weights=args.weights, device="cpu")
    backbone.extract(resize_image(image, (64, 64)))  # warm-up (torch, numba)
    matte(resize_image(image, (48, 64)), backbone=backbone, mode=args.mode)
    start = time.perf_counter()
    # full: max_size=None, the whole 500 x 375 photo at full resolution; fast: the default
    # max_size (800): the 1-MP photo is matted at 800 x 450 and the alpha resized back
    result = matte(image, backbone=backbone, mode=args.mode, max_size=None if args.mode == "full" else args.max_size)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"target": f"{args.mode} {size[1]}x{size[0]}", "seconds": seconds, "peak_rss_mb": peak,
                      "work_size": list(result.work_size), "feature_entries": result.settings.get("feature_entries")}))


def _spawn(extra: list[str], args) -> dict:
    command = [sys.executable, __file__, "--data", str(args.data), "--n-sod", str(args.n_sod), "--n-davis",
               str(args.n_davis), "--weights", str(args.weights), "--max-size", str(args.max_size), *extra]
    if args.full_davis:
        command.append("--full-davis")
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"worker {extra} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=HERE.parent.parent / "shared" / "data")
    parser.add_argument("--n-sod", type=int, default=3)
    parser.add_argument("--n-davis", type=int, default=2)
    parser.add_argument("--full-davis", action="store_true", help="also run the full mode on the DAVIS frames")
    parser.add_argument("--sources", default="oracle16,oracle8,random")
    parser.add_argument("--modes", default="fast,full")
    parser.add_argument("--no-targets", action="store_true")
    parser.add_argument("--max-size", type=int, default=800, help="max_size of the 1-MP fast target")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--weights", type=Path, default=None,
                        help="ViT-S/16 weights of the 'random' rows (default: random-initialised); "
                        "with DINO's weights those rows measure real features")
    parser.add_argument("--worker", nargs=2, metavar=("SOURCE", "MODE"), default=None)
    parser.add_argument("--target", choices=("fast", "full"), default=None)
    parser.add_argument("--alphas", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.worker:
        args.source, args.mode = args.worker
        return _worker(args)
    if args.target:
        args.mode = args.target
        return _target(args)
    if not args.data.is_dir():
        sys.exit(f"no data folder at {args.data}")
    from oracle import iou

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        args.weights = args.weights or _random_weights(tmp)
        rows, agreement = [], []
        for source in args.sources.split(","):
            results = {}
            for mode in args.modes.split(","):
                alphas_path = tmp / f"{source}_{mode}.npz"
                results[mode] = _spawn(["--worker", source, mode, "--alphas", str(alphas_path)], args)
                results[mode]["alphas"] = dict(np.load(alphas_path))
                recs = results[mode]["records"]
                rows.append({
                    "source": source, "mode": mode, "images": len(recs),
                    "median_s": float(np.median([r["seconds"] for r in recs])),
                    "max_s": float(np.max([r["seconds"] for r in recs])),
                    "peak_rss_mb": results[mode]["peak_rss_mb"],
                    "mean_iou_gt": float(np.mean([r["iou_gt"] for r in recs])),
                    **{f"mean_iou_{part}": float(np.mean([r["iou_gt"] for r in recs if r["image"].startswith(part)] or [np.nan]))
                       for part in ("sod", "davis")},
                    "per_image": recs,
                })
                print(json.dumps(rows[-1]), file=sys.stderr)
            if len(results) < 2:
                continue
            common = sorted(set(results["fast"]["alphas"]) & set(results["full"]["alphas"]))
            diffs = [float(np.abs(results["fast"]["alphas"][k] - results["full"]["alphas"][k]).mean()) for k in common]
            ious = [iou(results["fast"]["alphas"][k] > 0.5, results["full"]["alphas"][k] > 0.5) for k in common]
            agreement.append({"source": source, "images": len(common), "mean_abs_diff": float(np.mean(diffs)),
                              "iou_fast_full": float(np.mean(ious)), "per_image": dict(zip(common, zip(diffs, ious)))})
        targets = [] if args.no_targets else [_spawn(["--target", mode], args) for mode in ("full", "fast")]

    print("| features | mode | images | median s / photo | max s | peak RSS (MB) | mean IoU(alpha>0.5, GT) | SOD | DAVIS |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['source']} | {r['mode']} | {r['images']} | {r['median_s']:.1f} | {r['max_s']:.1f} | "
              f"{r['peak_rss_mb']:.0f} | {r['mean_iou_gt']:.3f} | {r['mean_iou_sod']:.3f} | {r['mean_iou_davis']:.3f} |")
    print()
    print("| features | photos | mean abs(alpha_fast - alpha_full) | IoU(fast > 0.5, full > 0.5) |")
    print("|---|---|---|---|")
    for a in agreement:
        print(f"| {a['source']} | {a['images']} | {a['mean_abs_diff']:.4f} | {a['iou_fast_full']:.3f} |")
    if targets:
        print()
        print("| target (random ViT-S/16, end to end) | seconds | peak RSS (MB) | work size | feature entries |")
        print("|---|---|---|---|---|")
        for t in targets:
            print(f"| {t['target']} | {t['seconds']:.1f} | {t['peak_rss_mb']:.0f} | {t['work_size']} | {t['feature_entries']} |")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "agreement": agreement, "targets": targets}, indent=1))


if __name__ == "__main__":
    main()
