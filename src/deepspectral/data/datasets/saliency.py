"""Single-object segmentation from an image folder and a mask folder.

- ``ecssd``, ``duts-te``, ``dut-omron`` — the official layouts (:func:`load_saliency`).
- ``masks`` — users' own data: ``--images DIR --masks DIR`` (:func:`load_mask_folder`);
  mask files share the image's relative path (or stem) with any image extension.

Masks are binarised at :data:`~deepspectral.data.datasets.base.MASK_THRESHOLD` when read.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

from ..images import IMAGE_EXTENSIONS
from .base import CROPS, Dataset, Sample, center_cropped

__all__ = [
    "SALIENCY_DATASETS",
    "load_mask_folder",
    "load_saliency",
]

#: Official folder names: (dataset folders, image folders, mask folders).
_SALIENCY_LAYOUTS = {
    "ecssd": (("ECSSD", "ecssd"), ("images", "image", "Imgs"), ("ground_truth_mask", "masks", "GT", "gt")),
    "duts-te": (("DUTS-TE", "duts-te"), ("DUTS-TE-Image", "images", "Imgs"), ("DUTS-TE-Mask", "masks", "GT", "gt")),
    "dut-omron": (
        ("DUT-OMRON", "dut-omron", "DUT-OMRON-image"),
        ("DUT-OMRON-image", "images", "Imgs"),
        ("pixelwiseGT-new-PNG", "DUT-OMRON-GT", "masks", "GT", "gt"),
    ),
}
#: The saliency benchmarks of the paper's Table 3 that :func:`load_saliency` reads.
SALIENCY_DATASETS = tuple(_SALIENCY_LAYOUTS)


def _files_by_key(folder: Path) -> dict[str, Path]:
    """Image files under ``folder`` (recursive; hidden files and folders skipped), by their
    relative POSIX path without extension (``a/x`` for ``folder/a/x.png``)."""
    found = {}
    for dirpath, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in files:
            path = Path(dirpath) / name
            if name.startswith(".") or path.suffix.lower() not in IMAGE_EXTENSIONS:
                continue
            found[PurePosixPath(*path.relative_to(folder).with_suffix("").parts).as_posix()] = path
    return found


def load_mask_folder(
    images: str | os.PathLike, masks: str | os.PathLike, *, name: str = "masks", crop: str = "none"
) -> Dataset:
    """Images and masks in two folders; a mask shares its image's relative path without
    extension (``images/a/x.jpg`` - ``masks/a/x.png``) or, failing that, its stem (when
    exactly one mask has that stem).

    Parameters
    ----------
    images, masks : path
    name : str
    crop : {"none", "center"}
        ``center``: the largest centred square of image and mask (CUB protocol).

    Returns
    -------
    Dataset
        Task ``segmentation``, samples sorted by relative path; images without a mask are
        left out (noted).

    Raises
    ------
    ValueError
        A folder is missing or holds no image file, ``crop`` is unknown, or no mask
        matches any image.
    """
    images, masks = Path(images), Path(masks)
    for arg, folder in (("images", images), ("masks", masks)):
        if not folder.is_dir():
            raise ValueError(f"{arg}: no such folder: '{folder}'")
    if crop not in CROPS:
        raise ValueError(f"crop: expected 'none' or 'center', got {crop!r}")
    image_files = _files_by_key(images)
    mask_files = _files_by_key(masks)
    for arg, what, folder, found in (("images", "image", images, image_files), ("masks", "mask", masks, mask_files)):
        if not found:
            raise ValueError(f"{arg}: no {what} files in '{folder}' (is it the right folder?)")
    by_stem: dict[str, list[Path]] = {}
    for key, path in mask_files.items():
        by_stem.setdefault(PurePosixPath(key).name, []).append(path)
    samples, missing = [], 0
    for key in sorted(image_files):
        mask = mask_files.get(key)
        if mask is None:
            stem_matches = by_stem.get(PurePosixPath(key).name, [])
            mask = stem_matches[0] if len(stem_matches) == 1 else None
        if mask is None:
            missing += 1
            continue
        samples.append(Sample(image_id=key, image_path=image_files[key], mask_path=mask))
    if not samples:
        raise ValueError(f"masks: no mask in '{masks}' matches an image of '{images}' (by relative path or stem)")
    if crop == "center":
        samples = [center_cropped(s) for s in samples]
    notes = [f"{missing} image(s) without a mask left out"] if missing else []
    return Dataset(name=name, task="segmentation", samples=samples, root=images, notes=notes)


def load_saliency(name: str, root: str | os.PathLike) -> Dataset:
    """ECSSD, DUTS-TE or DUT-OMRON in their official layouts.

    Parameters
    ----------
    name : {"ecssd", "duts-te", "dut-omron"}
        One of :data:`SALIENCY_DATASETS`.
    root : path
        The dataset folder or its parent: ``ECSSD/{images,ground_truth_mask}``,
        ``DUTS-TE/{DUTS-TE-Image,DUTS-TE-Mask}``, ``DUT-OMRON-image/`` +
        ``pixelwiseGT-new-PNG/`` (the archives' nested folders are found too).

    Returns
    -------
    Dataset
        As :func:`load_mask_folder` on the first image and mask folders found, named ``name``.
    """
    if name not in _SALIENCY_LAYOUTS:
        raise ValueError(f"name: expected one of {sorted(_SALIENCY_LAYOUTS)}, got {name!r}")
    root = Path(root)
    dataset_dirs, image_dirs, mask_dirs = _SALIENCY_LAYOUTS[name]
    bases = [root] + [root / d for d in dataset_dirs]
    for base in bases:
        for image_dir in image_dirs:
            # DUT-OMRON's archives nest: DUT-OMRON-image/DUT-OMRON-image/*.jpg
            for images in (base / image_dir / image_dir, base / image_dir):
                if not images.is_dir():
                    continue
                for mask_dir in mask_dirs:
                    for masks in (base / mask_dir / mask_dir, base / mask_dir, root / mask_dir):
                        if masks.is_dir() and masks != images:
                            return load_mask_folder(images, masks, name=name)
    raise ValueError(
        f"root: no {name} image and mask folders under '{root}' (looked for {image_dirs} + {mask_dirs}); "
        f"download it with: deepspectral data download {name} --root {root}, or use "
        "--dataset masks --images DIR --masks DIR"
    )
