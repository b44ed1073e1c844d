"""Eigen-step benchmark: deepspectral's stages on the same photos.

For each photo: decode, features (ViT, given weights or a random-initialised ViT-S/16),
then the eigen-step (affinity + Laplacian + eigensolver), with BLAS on every core and with
one BLAS thread, then the localization box. Prints per-stage median milliseconds per
image. The comparison with the paper's own code (imported from a checkout of the authors'
repository: speed and parity) is ``benchmarks/bench_paper_parity.py``.

    python benchmarks/bench_eigen.py [IMAGES ...] [--limit 20] [--weights FILE]

Without IMAGES it uses ../shared/data/sod/images (481x321) and ../shared/data/coco-mini.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from deepspectral import Backbone, localize
from deepspectral.backbones import save_random_weights
from deepspectral.data.images import collect_inputs, load_image
from deepspectral.spectral import (
    Decomposition,
    _workspace,
    affinity_matrix,
    laplacian_eigenvectors,
    orient_eigenvectors,
    single_threaded_blas,
)

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("images", nargs="*")
    parser.add_argument("--limit", type=int, default=20)
    parser.add_argument("--weights", default=None)
    parser.add_argument("--backbone", default="dino_vits16")
    parser.add_argument("--knn-lambda", type=float, default=10.0)
    args = parser.parse_args()

    sources = args.images or [str(SHARED / "sod" / "images"), str(SHARED / "coco-mini")]
    inputs = collect_inputs([s for s in sources if Path(s).exists()])[: args.limit]
    if not inputs:
        sys.exit("no images found: pass image files or folders")
    weights = args.weights or save_random_weights(Path(tempfile.mkdtemp()) / "vits16_random.pth", "dino_vits16")
    backbone = Backbone(args.backbone, weights=weights, device="cpu")

    stages = ("affinity", "eigensolver", "task")
    rows = {k: [] for k in ("decode", "features", *stages, *(f"{k}_1t" for k in stages))}
    sizes = []
    # pass 1: decode and features
    prepared = []
    for item in inputs:
        t0 = time.perf_counter()
        image = load_image(item.path)
        t1 = time.perf_counter()
        feats = backbone.extract(image)
        t2 = time.perf_counter()
        rows["decode"].append(t1 - t0)
        rows["features"].append(t2 - t1)
        grid = feats.geometry.grid_size
        image_small = feats.geometry.grid_colours(image)
        prepared.append((image, feats, grid, image_small))
        sizes.append(image.shape[:2])
    # pass 2: ours, as `deepspectral localize` runs it with the default --workers 1 (the
    # eigen-step alone, BLAS on every core); pass 3: with one BLAS thread, as each of the
    # eigen-steps running side by side with --workers 2 gets
    for blas_limit, suffix in ((contextlib.nullcontext(), ""), (single_threaded_blas(), "_1t")):
        with blas_limit:
            for image, feats, grid, image_small in prepared:
                t3 = time.perf_counter()
                affinity = affinity_matrix(
                    feats.features, image_small, knn_lambda=args.knn_lambda, upper_only=True,
                    out=_workspace(grid[0] * grid[1]),
                )  # fmt: skip
                t4 = time.perf_counter()
                values, vectors = laplacian_eigenvectors(affinity, 5, upper_only=True)
                vectors = orient_eigenvectors(vectors.reshape(-1, *grid))
                t5 = time.perf_counter()
                dec = Decomposition(values, vectors, feats.image_size, feats.input_size, feats.crop_size, feats.patch_size)
                localize(dec)
                t6 = time.perf_counter()
                rows["affinity" + suffix].append(t4 - t3)
                rows["eigensolver" + suffix].append(t5 - t4)
                rows["task" + suffix].append(t6 - t5)

    ms = {k: 1000 * float(np.median(v)) if v else float("nan") for k, v in rows.items()}
    ours = {suffix: np.array(rows["affinity" + suffix]) + np.array(rows["eigensolver" + suffix]) for suffix in ("", "_1t")}
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, {platform.system()}, "
          f"python {platform.python_version()}")
    print(f"images: {len(inputs)} (sizes {min(sizes)}..{max(sizes)}), backbone {args.backbone}, knn_lambda {args.knn_lambda}")
    print()
    print("| stage (median ms / image) | deepspectral | deepspectral, 1 BLAS thread |")
    print("|---|---:|---:|")
    print(f"| decode | {ms['decode']:.1f} | |")
    print(f"| features (ViT forward) | {ms['features']:.1f} | |")
    print(f"| affinity | {ms['affinity']:.1f} | {ms['affinity_1t']:.1f} |")
    print(f"| eigensolver | {ms['eigensolver']:.1f} | {ms['eigensolver_1t']:.1f} |")
    print(f"| **eigen-step total** | {1000 * np.median(ours['']):.1f} | {1000 * np.median(ours['_1t']):.1f} |")
    print(f"| task (box) | {ms['task']:.2f} | {ms['task_1t']:.2f} |")


if __name__ == "__main__":
    main()
