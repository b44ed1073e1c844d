"""TokenCut parity and eigen-step speed against TokenCut's own code (imported from a checkout).

For each photo (SOD 481×321, COCO, DAVIS 854×480 from ``../shared/data``), with the same
random-weight ViT-S/16 (timm, seed 0) on both sides and no ``max_size`` resize:

- **boxes** (``main_tokencut.py``'s path: zero padding, ``object_discovery.ncut``):
  |cos| of the second eigenvectors, the relative gap ``1 − λ₁/λ₂`` (our score), box IoU;
- **saliency masks** (``get_saliency.py``'s path: ``utils.resize_pil``, the saliency
  ``ncut``): mask IoU, and after the bilateral solver (theirs: ``bilateral_solver_output``;
  ours: ``segment_object(refine="bilateral")``) IoU of the outputs thresholded at 0.5; also
  our solver fed *their* mask (the solver alone);
- **speed** of the eigen-step from the features: theirs = ``ncut`` (graph, dense
  ``scipy.linalg.eigh(D − A, D)``, bipartition, ``detect_box``; the ``eigh`` share shown
  apart), ours = :func:`deepspectral.recipes.tokencut.decompose` + the box; and of the
  bilateral solver on the same mask.

::

    python benchmarks/bench_tokencut_parity.py --tokencut /work/peers/TokenCut [--data ../shared/data] [--repeat 3]

TokenCut's shims (scipy's ``cg(tol=)`` → ``rtol``, its CUDA transfers) are in
``tests/peer_tokencut.py``; its files are not modified.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "src"))


def box_iou(a, b) -> float:
    ax1, ay1, ax2, ay2 = a
    bx1, by1, bx2, by2 = b
    iw = max(0.0, min(ax2, bx2) - max(ax1, bx1))
    ih = max(0.0, min(ay2, by2) - max(ay1, by1))
    inter = iw * ih
    union = (ax2 - ax1) * (ay2 - ay1) + (bx2 - bx1) * (by2 - by1) - inter
    return inter / union if union > 0 else 1.0


def mask_iou(a, b) -> float:
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    union = (a | b).sum()
    return float((a & b).sum() / union) if union else 1.0


def cosine(a, b) -> float:
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    return abs(float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b))))


def best_of(repeat, fn):
    """Best time of ``repeat`` runs after one untimed warm-up run, and the last result."""
    fn()
    times, out = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return min(times), out


def run(checkout, photos: list[Path], *, repeat: int = 3, bilateral: bool = True) -> list[dict]:
    """Compare every photo of ``photos`` with TokenCut's code imported from ``checkout``:
    one row (a dict) per photo, progress on stderr."""
    from PIL import Image

    from deepspectral.backbones import Backbone, save_random_weights
    from deepspectral.bilateral import refine_mask
    from deepspectral.recipes import tokencut
    from deepspectral.tasks.segment import segment_object
    from peer_tokencut import load_peer

    with tempfile.TemporaryDirectory() as tmp:
        weights = save_random_weights(Path(tmp) / "vit_s16.pth", "dino_vits16", seed=0)
        backbone = Backbone("dino_vits16", weights=weights, device="cpu")
    peer = load_peer(checkout, backbone.model)

    rows = []
    for path in photos:
        image = np.asarray(Image.open(path).convert("RGB"))
        # boxes
        feats = backbone.extract(image, max_size=None, fit="pad")
        ours_s, dec = best_of(repeat, lambda: tokencut.decompose(feats))
        ours_box = tokencut.box(dec)
        box_s = best_of(repeat, lambda: tokencut.box(dec))[0]
        graph_s = best_of(repeat, lambda: tokencut.tokencut_affinity(feats.features))[0]
        theirs = peer.box(path)  # warm-up
        their_times = []
        for _ in range(repeat):
            theirs = peer.box(path)
            their_times.append((theirs.seconds["ncut"], theirs.seconds["eigh"]))
        their_s, their_eigh = min(their_times)
        gap = 1.0 - dec.eigenvalues[1] / dec.eigenvalues[2]
        row = {
            "image": path.name if "davis" not in str(path) else f"{path.parent.name}/{path.name}",
            "size": f"{image.shape[1]}x{image.shape[0]}",
            "grid": f"{dec.grid_size[1]}x{dec.grid_size[0]}",
            "cos": cosine(dec.eigenvectors[1], theirs.box_vector),
            "gap": gap,
            "box_iou": box_iou(ours_box, theirs.box),
            "ours_ms": 1000 * (ours_s + box_s),
            "ours_graph_ms": 1000 * graph_s,
            "theirs_ms": 1000 * their_s,
            "theirs_eigh_ms": 1000 * their_eigh,
        }
        # saliency masks
        feats_m = backbone.extract(image, max_size=None, fit="resize")
        dec_m = tokencut.decompose(feats_m)
        ours_mask = segment_object(dec_m, image, refine="none")
        theirs = peer.saliency_mask(path, bilateral=bilateral, result=theirs)
        row["mask_cos"] = cosine(dec_m.eigenvectors[1], theirs.mask_vector)
        row["mask_iou"] = mask_iou(ours_mask, theirs.mask)
        if bilateral:
            start = time.perf_counter()
            ours_bs = segment_object(dec_m, image, refine="bilateral")
            row["ours_bs_ms"] = 1000 * (time.perf_counter() - start)
            row["theirs_bs_ms"] = 1000 * theirs.seconds["bilateral"]
            row["bs_iou"] = mask_iou(ours_bs, theirs.solver > 0.5)
            row["solver_only_iou"] = mask_iou(refine_mask(image, theirs.mask) > 0.5, theirs.solver > 0.5)
        row["ok"] = (
            row["box_iou"] >= 0.9
            and row["mask_iou"] >= 0.95
            and (not bilateral or row["bs_iou"] >= 0.9)
            and not (gap > 0.1 and row["cos"] < 0.99)
        )
        rows.append(row)
        print(
            f"{row['image']:<22} {row['size']:>8} {row['grid']:>6} cos {row['cos']:.4f} gap {gap:.2f} "
            f"box {row['box_iou']:.3f} mask {row['mask_iou']:.3f} "
            + (f"bs {row['bs_iou']:.3f} " if "bs_iou" in row else "")
            + f"| {row['ours_ms']:.1f} vs {row['theirs_ms']:.1f} ms",
            file=sys.stderr,
            flush=True,
        )
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokencut", type=Path, required=True, help="TokenCut checkout (YangtaoWANG95/TokenCut)")
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--repeat", type=int, default=3, help="timing runs per image (best kept)")
    parser.add_argument("--photos", type=int, nargs=3, default=(12, 4, 4), metavar=("SOD", "COCO", "DAVIS"))
    parser.add_argument("--no-bilateral", action="store_true", help="skip the bilateral solver comparison")
    args = parser.parse_args()

    from peer_tokencut import pick_photos

    photos = pick_photos(args.data, *args.photos)
    if not photos:
        print(f"no photos under {args.data}", file=sys.stderr)
        return 2
    rows = run(args.tokencut, photos, repeat=args.repeat, bilateral=not args.no_bilateral)
    fails = [r["image"] for r in rows if not r["ok"]]
    print("\n| image | size | grid | \\|cos\\| | gap 1-λ1/λ2 | box IoU | mask IoU | bilateral IoU | solver-only IoU | ours ms (graph) | theirs ms (eigh) | speed-up |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['image']} | {r['size']} | {r['grid']} | {r['cos']:.4f} | {r['gap']:.2f} | {r['box_iou']:.3f} | "
            f"{r['mask_iou']:.3f} | {r.get('bs_iou', float('nan')):.3f} | {r.get('solver_only_iou', float('nan')):.3f} | "
            f"{r['ours_ms']:.1f} ({r['ours_graph_ms']:.1f}) | {r['theirs_ms']:.1f} ({r['theirs_eigh_ms']:.1f}) | {r['theirs_ms'] / r['ours_ms']:.1f}x |"
        )
    ours_total = sum(r["ours_ms"] for r in rows)
    theirs_total = sum(r["theirs_ms"] for r in rows)
    eigh_total = sum(r["theirs_eigh_ms"] for r in rows)
    print(
        f"\n{len(rows)} photos: min |cos| {min(r['cos'] for r in rows):.4f}, min box IoU {min(r['box_iou'] for r in rows):.3f}, "
        f"min mask IoU {min(r['mask_iou'] for r in rows):.3f}"
        + (f", min bilateral IoU {min(r['bs_iou'] for r in rows):.3f}" if not args.no_bilateral else "")
    )
    graph_total = sum(r["ours_graph_ms"] for r in rows)
    print(
        f"eigen-step total: ours {ours_total:.0f} ms ({100 * graph_total / ours_total:.0f} % of it in the graph), "
        f"theirs {theirs_total:.0f} ms ({100 * eigh_total / theirs_total:.0f} % of it in eigh): {theirs_total / ours_total:.1f}x; "
        f"per photo {min(r['theirs_ms'] / r['ours_ms'] for r in rows):.1f}x to {max(r['theirs_ms'] / r['ours_ms'] for r in rows):.1f}x"
    )
    if not args.no_bilateral:
        print(
            f"bilateral solver total: ours {sum(r['ours_bs_ms'] for r in rows):.0f} ms, "
            f"theirs {sum(r['theirs_bs_ms'] for r in rows):.0f} ms"
        )
    print("targets missed on: " + (", ".join(fails) if fails else "none"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
