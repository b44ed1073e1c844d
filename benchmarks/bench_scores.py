"""The score (relative eigengap 1 − λ₁/λ₂) of each recipe on images with and without an object.

Random-weight ViT-S/16 (seed 0) on uniform and noise images and on the first SOD photos of
``../shared/data``; oracle features (``tests/oracle.py``) of one or two ellipses. Prints a
Markdown table (the README's).

::

    python benchmarks/bench_scores.py [--data ../shared/data] [--photos 4]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "src"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--photos", type=int, default=4)
    args = parser.parse_args()

    from PIL import Image

    from deepspectral.backbones import Backbone, save_random_weights
    from deepspectral.recipes import decompose, get_recipe
    from deepspectral.recipes.scores import spectral_score
    from oracle import oracle_features

    h, w = 321, 481
    yy, xx = np.mgrid[:h, :w]

    def ellipse(cy, cx, ry, rx):
        return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1

    with tempfile.TemporaryDirectory() as tmp:
        bb = Backbone("dino_vits16", weights=save_random_weights(Path(tmp) / "w.pth", seed=0), device="cpu")
    rng = np.random.default_rng(1)
    cases = [
        ("uniform black (random-weight ViT)", "vit", np.zeros((h, w, 3), np.uint8)),
        ("uniform grey (random-weight ViT)", "vit", np.full((h, w, 3), 128, np.uint8)),
        ("pure noise (random-weight ViT)", "vit", rng.integers(0, 256, (h, w, 3), dtype=np.uint8)),
    ]
    for path in sorted((args.data / "sod" / "images").glob("*.jpg"))[: args.photos]:
        cases.append((f"SOD {path.name} (random-weight ViT)", "vit", np.asarray(Image.open(path).convert("RGB"))))
    big, small = ellipse(160, 240, 80, 120), ellipse(60, 80, 30, 30)
    for name, mask in [("one large object", big), ("one small object", small), ("two objects with the same features", big | ellipse(60, 60, 35, 35))]:
        for noise in (0.3, 1.0):
            image = np.where(mask[..., None], 200, 40).astype(np.uint8).repeat(3, axis=2)
            cases.append((f"oracle features: {name}, noise {noise}", oracle_features(mask, noise=noise), image))
    print("| image | dsm | tokencut |\n|---|---|---|")
    for name, source, image in cases:
        scores = []
        for method in ("dsm", "tokencut"):
            feats = source if source != "vit" else bb.extract(image, fit=get_recipe(method).fit_for("boxes"))
            scores.append(spectral_score(decompose(feats, image, method=method)))
        print(f"| {name} | {scores[0]:.2f} | {scores[1]:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
