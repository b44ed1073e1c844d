"""Make docs/discover.png: `discover` (MaskCut) on COCO-MINI photos from ../shared/data.

One row per photo: the photo with its ground-truth instances (the largest few), then
`discover(max_objects=3)` with a random-initialised ViT-S/16 (no pretrained weights can be
downloaded where this project is built; MaskCut's settings: 480 x 480, tau 0.15, CRF), then
`discover` with *oracle* patch features made from the ground-truth instance masks (each
instance its own feature direction, what a backbone that separates the objects gives).

    python docs/make_discover_figure.py [--photos 3]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from deepspectral import Backbone, PatchFeatures, discover
from deepspectral.backbones import save_random_weights
from deepspectral.tasks.discover import SquareInput
from deepspectral.viz import draw_box, overlay_mask, picture_grid

HERE = Path(__file__).resolve().parent
COCO = HERE.parents[1] / "shared" / "data" / "coco-mini"
PALETTE = ((255, 64, 64), (64, 160, 255), (80, 220, 80), (255, 200, 40))
#: Ground-truth instances drawn / given to the oracle: the largest ones.
MAX_INSTANCES = 3


def drawn(image, masks, boxes=None):
    canvas = image
    for index, mask in enumerate(masks):
        colour = PALETTE[index % len(PALETTE)]
        canvas = overlay_mask(canvas, mask, colour, alpha=0.45)
        if boxes is not None:
            canvas = draw_box(canvas, boxes[index], colour)
    return canvas


def oracle(masks, shape, patch=16, dim=64, seed=0) -> PatchFeatures:
    rng = np.random.default_rng(seed)
    h, w = shape[0] // patch, shape[1] // patch
    labels = np.zeros(shape, dtype=int)
    for index, mask in enumerate(masks, 1):
        labels[mask] = index
    cells = labels[: h * patch, : w * patch].reshape(h, patch, w, patch).transpose(0, 2, 1, 3).reshape(h, w, -1)
    grid = np.array([[np.bincount(cell).argmax() for cell in row] for row in cells])
    directions = np.linalg.qr(rng.standard_normal((dim, len(masks) + 1)))[0].T
    features = directions[grid] + 0.3 / np.sqrt(dim) * rng.standard_normal((h, w, dim))
    size = (h * patch, w * patch)
    return PatchFeatures(features.astype(np.float32), patch, shape, size, "oracle")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--photos", type=int, default=3)
    args = parser.parse_args()
    from pycocotools.coco import COCO as CocoApi

    coco = CocoApi(str(COCO / "annotations" / "instances_val2017.json"))
    with tempfile.TemporaryDirectory() as tmp:
        weights = save_random_weights(Path(tmp) / "vits16.pth", "dino_vits16", seed=0)
        square = SquareInput(Backbone("dino_vits16", weights=weights, device="cpu"), 480)
        rows = []
        for image_id in sorted(coco.getImgIds()):
            info = coco.loadImgs([image_id])[0]
            path = COCO / "val2017" / info["file_name"]
            anns = [a for a in coco.loadAnns(coco.getAnnIds(imgIds=[image_id], iscrowd=False)) if a["area"] > 4000]
            if not path.is_file() or len(anns) < 2:
                continue
            anns = sorted(anns, key=lambda a: -a["area"])[:MAX_INSTANCES]
            image = np.asarray(Image.open(path).convert("RGB"))
            truth = [coco.annToMask(a).astype(bool) for a in anns]
            random_vit = discover(square.extract(image), image, max_objects=3)
            oracle_found = discover(oracle(truth, image.shape[:2]), image, max_objects="auto")
            rows.append(
                [
                    drawn(image, truth),
                    drawn(image, [i.mask for i in random_vit], [i.box for i in random_vit]),
                    drawn(image, [i.mask for i in oracle_found], [i.box for i in oracle_found]),
                ]
            )
            if len(rows) == args.photos:
                break
    Image.fromarray(picture_grid(rows, row_height=200)).save(HERE / "discover.png", optimize=True)
    print(f"wrote {HERE / 'discover.png'}")


if __name__ == "__main__":
    main()
