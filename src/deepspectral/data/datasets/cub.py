"""CUB-200-2011 with its segmentations (single-object segmentation, ``cub``).

The test split (``train_test_split.txt``, 5,794 images) with the separate
``segmentations`` archive; the largest centred square of image and mask is used
(:data:`CUB_CROP`, the centre crop of the Voynov et al. / Melas-Kyriazi et al. protocol
the paper follows, kept at full resolution).
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

from .base import CROPS, Dataset, Sample, center_cropped

__all__ = ["CUB_CROP", "CUB_SPLITS", "load_cub"]

#: Crop used on CUB: "center" (largest centred square) or "none".
CUB_CROP = "center"
#: ``test`` (``is_training_image = 0``, the evaluation split), ``train`` or ``all``.
CUB_SPLITS = ("test", "train", "all")


def load_cub(root: str | os.PathLike, *, split: str = "test", crop: str = CUB_CROP) -> Dataset:
    """CUB-200-2011 with its segmentations.

    Parameters
    ----------
    root : path
        Holds ``CUB_200_2011/{images.txt,train_test_split.txt,images/}`` (or is that
        folder) and ``segmentations/`` (beside or inside ``CUB_200_2011``).
    split : {"test", "train", "all"}
        ``test``: ``is_training_image = 0``, 5,794 images, the evaluation split.
    crop : {"none", "center"}
        ``center``: the largest centred square of image and mask (:data:`CUB_CROP`).

    Returns
    -------
    Dataset
        Named ``cub``, task ``segmentation``, samples in ``images.txt`` id order. The CUB
        masks average several annotators; they are binarised at 128 when read. Images
        without a segmentation are left out (noted).
    """
    root = Path(root)
    if split not in CUB_SPLITS:
        raise ValueError(f"split: expected 'test', 'train' or 'all', got {split!r}")
    if crop not in CROPS:
        raise ValueError(f"crop: expected 'none' or 'center', got {crop!r}")
    cub = next((p for p in (root / "CUB_200_2011", root) if (p / "images.txt").is_file()), None)
    if cub is None:
        raise ValueError(
            f"root: no CUB_200_2011/images.txt under '{root}'; download it with: deepspectral data download cub --root {root}"
        )
    segmentations = next(
        (p for p in (cub / "segmentations", cub.parent / "segmentations", root / "segmentations") if p.is_dir()), None
    )
    if segmentations is None:
        raise ValueError(f"root: no segmentations/ folder beside or inside '{cub}' (the separate CUB segmentations archive)")
    paths = dict(line.split(maxsplit=1) for line in (cub / "images.txt").read_text().splitlines() if line.strip())
    training = {}
    split_file = cub / "train_test_split.txt"
    if split != "all":
        if not split_file.is_file():
            raise ValueError(f"root: '{split_file}' is missing")
        training = dict(line.split() for line in split_file.read_text().splitlines() if line.strip())
    samples, missing = [], 0
    for image_id, relative in sorted(paths.items(), key=lambda kv: int(kv[0])):
        if split == "test" and training.get(image_id) != "0":
            continue
        if split == "train" and training.get(image_id) != "1":
            continue
        relative = relative.strip()
        mask = segmentations / PurePosixPath(relative).with_suffix(".png")
        if not mask.is_file():
            missing += 1
            continue
        samples.append(
            Sample(image_id=str(PurePosixPath(relative).with_suffix("")), image_path=cub / "images" / relative, mask_path=mask)
        )
    if crop == "center":
        samples = [center_cropped(s) for s in samples]
    notes = [f"{missing} image(s) without a segmentation left out"] if missing else []
    return Dataset(name="cub", task="segmentation", samples=samples, root=cub, notes=notes)
