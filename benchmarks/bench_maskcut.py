"""MaskCut parity and speed against CutLER's own code (imported from a checkout), and the
throughput of ``deepspectral discover``.

Three tables, random-weight ViTs (timm, seed 0) on both sides, ``--resize 480 --tau 0.15
--max-objects 3``:

1. **Parity per photo** (``--photos`` photos of ``../shared/data``: COCO, SOD, DAVIS): their
   ``maskcut()`` on the file (their resize, their tensor, our model's keys through the
   harness's shim backbone) and their script's CRF / resize / ``create_annotation_info``
   steps, against ``discover`` on the same photo; instances matched by the Hungarian rule on
   mask IoU; a photo agrees when the counts are equal and every one of theirs is matched with
   IoU ≥ 0.9. CRF off and on. "reversed" marks photos with a cut where MaskCut's side is
   decided by its solver's sign (see ``deepspectral.recipes.maskcut``).
2. **Eigen-step**, all N cuts of one 480 × 480 image, the same features on both sides
   (ViT-S/16: 900 nodes; ViT-B/8: 3,600 nodes): theirs = the dense ``scipy.linalg.eigh(D −
   A, D)`` calls inside ``maskcut_forward`` (and the whole ``maskcut_forward``), ours = the
   eigensolver calls inside :func:`deepspectral.recipes.maskcut.maskcut` (and the whole of it).
3. **discover over a folder** of ``--folder-images`` photos (``deepspectral discover`` in
   this process, no cache, ViT-S/16 on the CPU): images per second, MaskCut's settings with
   the CRF and without.

::

    python benchmarks/bench_maskcut.py --cutler /work/peers/CutLER [--data ../shared/data]
        [--photos 20] [--speed-photos 2] [--folder-images 100] [--skip parity,speed,folder]

CutLER's shims are in ``tests/peer_maskcut.py``; its files are not modified. BLAS and
torch run one thread each on both sides unless ``OPENBLAS_NUM_THREADS`` / ``OMP_NUM_THREADS``
say otherwise (as ``bench_tokencut_parity.py``: on a shared VM multi-threaded BLAS spins and
the dense ``eigh`` times swing 10x).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

for _variable in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_variable, "1")  # before numpy / torch are imported

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "src"))

PARTS = ("parity", "speed", "folder")


def load_rgb(path):
    from PIL import Image

    return np.asarray(Image.open(path).convert("RGB"))


def backbone_for(name: str, folder: Path):
    from deepspectral.backbones import Backbone, save_random_weights

    weights = save_random_weights(folder / f"{name}.pth", name, seed=0)
    return Backbone(name, weights=weights, device="cpu")


def timed_maskcut(features, solver="lanczos"):
    """Our cuts, with the seconds spent in the eigensolver and in all of it."""
    from deepspectral.recipes import maskcut

    spent = [0.0]
    original = maskcut.cut_eigenpairs

    def timed(*args, **kwargs):
        start = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            spent[0] += time.perf_counter() - start

    maskcut.cut_eigenpairs = timed
    try:
        start = time.perf_counter()
        cuts = maskcut.maskcut(features, n_cuts=3, tau=0.15, solver=solver)
        total = time.perf_counter() - start
    finally:
        maskcut.cut_eigenpairs = original
    return cuts, spent[0], total


def parity(args, folder: Path) -> None:
    from peer_maskcut import load_peer, match_instances, pick_photos

    from deepspectral.tasks.discover import SquareInput, discover

    backbone = backbone_for("dino_vits16", folder)
    peer = load_peer(args.cutler, backbone.model)
    square = SquareInput(backbone, 480)
    photos = pick_photos(args.data)[: args.photos]
    print("\n### Parity with CutLER's MaskCut (ViT-S/16 random weights, 480 x 480, tau 0.15, N 3)\n")
    print("| photo | size | theirs / ours (no CRF) | IoU of their instances | agree | theirs / ours (CRF) | IoU of their instances | agree | reversed cut |")
    print("|---|---|---|---|---|---|---|---|---|")
    agree = {False: [], True: []}
    for path in photos:
        image = load_rgb(path)
        features = square.extract(image)
        theirs = peer.run(path, crf=(False, True))
        cuts, _, _ = timed_maskcut(features.features)
        row = [path.name, f"{image.shape[1]}x{image.shape[0]}"]
        for crf in (False, True):
            ours = discover(features, image, max_objects=3, tau=0.15, refine="crf" if crf else "none")
            matched = match_instances(theirs[crf].masks, [instance.mask for instance in ours])
            ok = len(ours) == len(theirs[crf].masks) and all(v >= 0.9 for v in matched)
            agree[crf].append(ok)
            row += [f"{len(theirs[crf].masks)} / {len(ours)}", " ".join(f"{v:.3f}" for v in matched) or "-", "yes" if ok else "**no**"]
        row.append("yes" if any(cut.reversed for cut in cuts) else "")
        print("| " + " | ".join(row) + " |", flush=True)
    for crf in (False, True):
        print(f"\nCRF {'on' if crf else 'off'}: {sum(agree[crf])} / {len(photos)} photos agree ({100 * np.mean(agree[crf]):.0f} %)")


def speed(args, folder: Path) -> None:
    from peer_maskcut import load_peer, pick_photos

    from deepspectral.tasks.discover import SquareInput

    photos = pick_photos(args.data)[: args.speed_photos]
    print("\n### Eigen-step of all 3 cuts, 480 x 480 (same features on both sides)\n")
    print("| backbone | nodes | photo | theirs eigh ms | theirs maskcut_forward ms | ours eigensolver ms | ours maskcut ms | eigen-step speed-up | same masks |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name in ("dino_vits16", "dino_vitb8"):
        backbone = backbone_for(name, folder)
        peer = load_peer(args.cutler, backbone.model, patch_size=backbone.patch_size)
        square = SquareInput(backbone, 480)
        for path in photos:
            features = square.extract(load_rgb(path)).features
            grid = features.shape[:2]
            flat = features.reshape(-1, features.shape[-1]).T
            start = time.perf_counter()
            bipartitions, eigh_seconds = peer.forward(flat, grid)
            theirs_total = time.perf_counter() - start
            cuts, eigen_seconds, ours_total = min((timed_maskcut(features) for _ in range(args.repeat)), key=lambda r: r[2])
            step = 480 // grid[0]
            same = all(
                np.array_equal(np.asarray(b)[::step, ::step] > 0.5, cut.mask) for b, cut in zip(bipartitions, cuts)
            )
            print(
                f"| {name} | {grid[0] * grid[1]} | {path.name} | {1000 * eigh_seconds:.0f} | {1000 * theirs_total:.0f} | "
                f"{1000 * eigen_seconds:.0f} | {1000 * ours_total:.0f} | {eigh_seconds / eigen_seconds:.0f}x | "
                f"{'yes' if same else 'no'}{' (reversed cut)' if any(c.reversed for c in cuts) else ''} |",
                flush=True,
            )


def folder_run(args, folder: Path) -> None:
    from deepspectral.backbones import save_random_weights
    from deepspectral.cli import main

    data = args.data
    photos = sorted((data / "coco-mini" / "val2017").glob("*.jpg")) + sorted((data / "sod" / "images").glob("*.jpg"))
    photos = photos[: args.folder_images]
    listing = folder / "photos.txt"
    listing.write_text("\n".join(str(p) for p in photos) + "\n")
    weights = save_random_weights(folder / "vits16.pth", "dino_vits16", seed=0)
    print(f"\n### deepspectral discover over {len(photos)} photos (ViT-S/16 on the CPU, no cache)\n")
    print("| settings | images | seconds | images/s |")
    print("|---|---|---|---|")
    for label, extra in (
        ("--resize 480 (CRF)", ["--resize", "480"]),
        ("--resize 480 --refine none", ["--resize", "480", "--refine", "none"]),
    ):
        out = folder / ("out" + str(len(extra)))
        start = time.perf_counter()
        code = main(["discover", str(listing), "-o", str(out), "--weights", str(weights), "--no-cache", "-q", *extra])
        seconds = time.perf_counter() - start
        print(f"| {label} | {len(photos)} | {seconds:.0f} | {len(photos) / seconds:.2f} |" + ("" if code == 0 else f" (exit {code})"), flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cutler", type=Path, default=os.environ.get("DEEPSPECTRAL_PEER_CUTLER"), help="CutLER checkout")
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--photos", type=int, default=20, help="photos of the parity table")
    parser.add_argument("--speed-photos", type=int, default=2, help="photos of the eigen-step table (per backbone)")
    parser.add_argument("--repeat", type=int, default=1, help="runs of ours per photo in the eigen-step table (best kept)")
    parser.add_argument("--folder-images", type=int, default=100, help="photos of the discover run")
    parser.add_argument("--skip", default="", help=f"comma-separated parts to skip: {', '.join(PARTS)}")
    args = parser.parse_args()
    skip = {part for part in args.skip.split(",") if part}
    if skip - set(PARTS):
        parser.error(f"--skip: unknown part(s) {sorted(skip - set(PARTS))}; choose from {PARTS}")
    if not args.data.is_dir():
        print(f"no photos under {args.data}", file=sys.stderr)
        return 1
    if args.cutler is None and {"parity", "speed"} - skip:
        parser.error("--cutler: give the CutLER checkout (or --skip parity,speed)")
    commit = args.cutler / "COMMIT" if args.cutler else None
    if commit is not None and commit.is_file():
        print(f"CutLER checkout {args.cutler}: commit {commit.read_text().strip()}")
    print(
        f"load average before: {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f}; "
        f"{os.cpu_count()} CPUs; BLAS threads {os.environ['OPENBLAS_NUM_THREADS']}, torch threads {os.environ['OMP_NUM_THREADS']}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        if "parity" not in skip:
            parity(args, folder)
        if "speed" not in skip:
            speed(args, folder)
        if "folder" not in skip:
            folder_run(args, folder)
    print(f"\nload average after: {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
