"""Make the README pictures from a real photo (DAVIS-2016 'blackswan', ../shared/data).

pipeline.png — row 1: a random-initialised ViT-S/16 (no pretrained weights can be downloaded where this
project is built): image, first eigenvectors, box, CRF mask. Row 2: the same pipeline
with *oracle* patch features made from the ground-truth mask (what the decomposition does
when the features separate the object, as DINO's do): image, Fiedler vector, box, mask.
matting.png — the photo, the alpha matte of `matte` (fast mode) and the cut-out
composited on a flat colour, with oracle features from 8-pixel patches.

    python docs/make_figures.py [--weights FILE]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from deepspectral import Backbone, PatchFeatures, composite, decompose, localize, matte, segment_object
from deepspectral.backbones import save_random_weights
from deepspectral.data.images import load_image
from deepspectral.viz import draw_box, eigenvector_figure, overlay_mask

HERE = Path(__file__).resolve().parent
SHARED = HERE.parents[1] / "shared" / "data" / "davis2016-val"


def oracle_features(mask: np.ndarray, patch: int = 16, dim: int = 64, seed: int = 0) -> PatchFeatures:
    rng = np.random.default_rng(seed)
    h, w = mask.shape[0] // patch, mask.shape[1] // patch
    inside = mask[: h * patch, : w * patch].reshape(h, patch, w, patch).mean(axis=(1, 3)) > 0.5
    fg, bg = rng.standard_normal(dim), rng.standard_normal(dim)
    features = np.where(inside[..., None], fg, bg) + 0.3 * rng.standard_normal((h, w, dim))
    return PatchFeatures(features.astype(np.float32), patch, mask.shape, mask.shape, "oracle")


def row(image: np.ndarray, decomposition, height: int = 240) -> np.ndarray:
    eigs = eigenvector_figure(image, decomposition, n_eigenvectors=3, max_height=height)
    box = draw_box(image, localize(decomposition), color=(40, 220, 40))
    mask = overlay_mask(image, segment_object(decomposition, image, crf=True))
    panels = [eigs] + [np.asarray(Image.fromarray(p).resize((round(p.shape[1] * height / p.shape[0]), height))) for p in (box, mask)]
    gap = np.full((height, 6, 3), 255, np.uint8)
    return np.concatenate([x for p in panels for x in (p, gap)][:-1], axis=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--weights", default=None)
    args = parser.parse_args()
    image = load_image(SHARED / "JPEGImages" / "blackswan" / "00000.jpg")
    truth = np.asarray(Image.open(SHARED / "Annotations" / "blackswan" / "00000.png")) > 127
    weights = args.weights
    if weights is None:
        weights = save_random_weights(Path(tempfile.mkdtemp()) / "vits16_random.pth", "dino_vits16")
    backbone = Backbone("dino_vits16", weights=weights, device="cpu")
    random_row = row(image, decompose(backbone.extract(image), image))
    oracle_row = row(image, decompose(oracle_features(truth), image))
    width = max(random_row.shape[1], oracle_row.shape[1])
    pad = lambda r: np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0)), constant_values=255)  # noqa: E731
    figure = np.concatenate([pad(random_row), np.full((8, width, 3), 255, np.uint8), pad(oracle_row)])
    # 8-px oracle patches, as from a perfect ViT-*/8 (the quality target is met there)
    result = matte(image, features=oracle_features(truth, patch=8), mode="fast")
    alpha_rgb = np.repeat(np.round(result.alpha * 255).astype(np.uint8)[..., None], 3, axis=2)
    swap = composite(image, result.alpha, (0, 177, 64))
    gap = np.full((image.shape[0], 8, 3), 255, np.uint8)
    after = Image.fromarray(np.concatenate([image, gap, alpha_rgb, gap, swap], axis=1))
    after.resize((1200, round(after.height * 1200 / after.width)), Image.Resampling.LANCZOS).save(
        HERE / "matting.png", optimize=True
    )
    picture = Image.fromarray(figure)
    picture = picture.resize((1600, round(picture.height * 1600 / picture.width)), Image.Resampling.LANCZOS)
    picture.save(HERE / "pipeline.png", optimize=True)
    print(f"wrote {HERE / 'pipeline.png'} ({picture.width}x{picture.height})")


if __name__ == "__main__":
    main()
