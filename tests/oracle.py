"""Oracle patch features: what a perfect backbone would give for a known object mask.

``oracle_features(mask)`` builds :class:`deepspectral.PatchFeatures` whose patches are one
random unit direction where the patch lies mostly inside the object and another one
elsewhere, plus seeded Gaussian noise. Crop and grid follow the real backbone exactly:
the mask is resized to ``input_size_for(mask.shape, max_size)``, cropped by dropping the
bottom rows / right columns to a multiple of ``patch_size`` and split into
``(H // P, W // P)`` patches. Everything downstream of the backbone (affinity, spectral
decomposition, localization, segmentation) should then recover the object.

``oracle_instance_features(masks)`` does the same for several objects (object discovery,
#14): each instance its own direction, the background another, all orthonormal; a patch
takes the direction of the region (an instance or the background) that covers most of it.
``instance_masks(sample)`` gives the instance masks of a COCO sample.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from deepspectral.geometry import input_size_for
from deepspectral.features import PatchFeatures

__all__ = ["oracle_features", "oracle_instance_features", "instance_masks", "patch_labels", "resize_mask",
           "shared_data_dir", "iou"]


def shared_data_dir() -> Path:
    """Folder of the shared test data (``$DEEPSPECTRAL_SHARED_DATA`` or
    ``<repo>/../shared/data``); it may not exist."""
    override = os.environ.get("DEEPSPECTRAL_SHARED_DATA")
    if override:
        return Path(override)
    return Path(__file__).resolve().parents[2] / "shared" / "data"


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two boolean masks (1.0 when both are empty)."""
    a = np.asarray(a, dtype=bool)
    b = np.asarray(b, dtype=bool)
    union = np.logical_or(a, b).sum()
    if union == 0:
        return 1.0
    return float(np.logical_and(a, b).sum() / union)


def resize_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize a boolean mask to ``size = (H, W)`` (area-weighted, threshold 0.5)."""
    mask = np.asarray(mask, dtype=bool)
    if tuple(mask.shape) == tuple(size):
        return mask
    from PIL import Image

    resized = Image.fromarray(mask.astype(np.float32)).resize(
        (int(size[1]), int(size[0])), Image.Resampling.BILINEAR
    )
    return np.asarray(resized) > 0.5


def oracle_features(
    mask: np.ndarray,
    *,
    patch_size: int = 16,
    dim: int = 64,
    noise: float = 0.3,
    seed: int = 0,
    max_size: int | None = None,
) -> PatchFeatures:
    """Patch features made from a ground-truth object mask.

    Parameters
    ----------
    mask : (H, W) bool
        Object mask at the resolution of the original image.
    patch_size : int, default 16
        P of the imaginary backbone.
    dim : int, default 64
        Feature dimension.
    noise : float, default 0.3
        Standard deviation of the *norm* of the added Gaussian noise relative to the unit
        feature directions (each component gets ``noise / sqrt(dim)``).
    seed : int, default 0
        Seeds the two directions and the noise.
    max_size : int, optional
        As for the real backbone: the longest side of the image is first brought down to
        ``max_size`` (the features then describe the resized image).

    Returns
    -------
    PatchFeatures
        ``features`` of shape ``(H_in // P, W_in // P, dim)``, ``image_size = mask.shape``.
    """
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 2:
        raise ValueError(f"mask: expected shape (H, W), got {mask.shape}")
    image_size = (int(mask.shape[0]), int(mask.shape[1]))
    input_size = input_size_for(image_size, max_size)
    resized = resize_mask(mask, input_size)
    grid_h, grid_w = input_size[0] // patch_size, input_size[1] // patch_size
    if grid_h < 1 or grid_w < 1:
        raise ValueError(f"mask: image {input_size} is smaller than one {patch_size}-pixel patch")
    cropped = resized[: grid_h * patch_size, : grid_w * patch_size]
    inside = cropped.reshape(grid_h, patch_size, grid_w, patch_size).mean(axis=(1, 3)) > 0.5

    rng = np.random.default_rng(seed)
    directions = rng.standard_normal((2, dim))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    features = np.where(inside[:, :, None], directions[1], directions[0])
    features = features + rng.standard_normal((grid_h, grid_w, dim)) * (noise / np.sqrt(dim))
    return PatchFeatures(
        features=features.astype(np.float32),
        patch_size=int(patch_size),
        image_size=image_size,
        input_size=tuple(int(v) for v in input_size),
        backbone="oracle",
    )


def instance_masks(sample, *, crowd: bool = True) -> np.ndarray:
    """The instance masks of a COCO sample (``coco-json`` / ``coco20k``), ``(K, H, W) bool``
    in the order of its annotations; crowd regions too unless ``crowd=False`` (a backbone
    sees a crowd as well; the evaluation neither asks for it nor penalises finding it)."""
    from deepspectral.data.datasets import polygons_to_mask

    if sample.image_size is None:
        raise ValueError(f"{sample.image_id}: the sample has no image size")
    chosen = [a for a in sample.instances if crowd or not a.get("iscrowd", 0)]
    masks = [polygons_to_mask(a.get("segmentation", []), sample.image_size) for a in chosen]
    return np.asarray(masks, dtype=bool).reshape(len(masks), *sample.image_size)


def patch_labels(masks: np.ndarray, input_size: tuple[int, int], patch_size: int) -> np.ndarray:
    """Which region covers most of each patch: ``(H_in // P, W_in // P) int`` with 0 the
    background and k the k-th mask (1-based).

    The masks are resized to ``input_size`` (area-weighted, kept fractional), cropped by
    dropping the bottom rows / right columns to a multiple of ``patch_size`` as the real
    backbone does, and each patch goes to the region with the largest share of it (the
    background's share is what no mask covers); ties go to the lower label.
    """
    from PIL import Image

    masks = np.asarray(masks, dtype=bool)
    if masks.ndim != 3:
        raise ValueError(f"masks: expected shape (K, H, W), got {masks.shape}")
    grid_h, grid_w = int(input_size[0]) // patch_size, int(input_size[1]) // patch_size
    if grid_h < 1 or grid_w < 1:
        raise ValueError(f"input_size: {input_size} is smaller than one {patch_size}-pixel patch")
    shares = np.zeros((len(masks) + 1, grid_h, grid_w))
    for k, mask in enumerate(masks, start=1):
        resized = np.asarray(
            Image.fromarray(mask.astype(np.float32)).resize((int(input_size[1]), int(input_size[0])), Image.Resampling.BILINEAR)
        )
        crop = resized[: grid_h * patch_size, : grid_w * patch_size]
        shares[k] = crop.reshape(grid_h, patch_size, grid_w, patch_size).mean(axis=(1, 3))
    shares[0] = np.clip(1.0 - shares[1:].sum(axis=0), 0.0, None)
    return shares.argmax(axis=0)


def oracle_instance_features(
    masks: np.ndarray,
    *,
    patch_size: int = 16,
    dim: int = 64,
    noise: float = 0.3,
    seed: int = 0,
    max_size: int | None = None,
    input_size: tuple[int, int] | None = None,
) -> PatchFeatures:
    """Patch features made from ground-truth instance masks: what a perfect backbone would
    give for object discovery.

    Parameters
    ----------
    masks : (K, H, W) bool
        Instance masks at the resolution of the original image (K may be 0).
    patch_size : int, default 16
    dim : int, default 64
        Feature dimension; raised to ``K + 1`` when there are more regions.
    noise : float, default 0.3
        Norm of the added Gaussian noise relative to the unit directions (each component
        gets ``noise / sqrt(dim)``), as :func:`oracle_features`.
    seed : int, default 0
        Seeds the directions and the noise.
    max_size : int, optional
        The longest side is first brought down to ``max_size`` (as the real backbone).
    input_size : (H_in, W_in), optional
        The size the image is resized to instead (e.g. MaskCut's fixed 480 x 480, which
        ignores the aspect ratio); overrides ``max_size``.

    Returns
    -------
    PatchFeatures
        ``features`` ``(H_in // P, W_in // P, dim) float32``: patch ``(i, j)`` is the unit
        direction of :func:`patch_labels`'s region plus noise; the K + 1 directions are
        orthonormal (cosine 0 between different regions, 1 within one, before the noise).
    """
    masks = np.asarray(masks, dtype=bool)
    if masks.ndim != 3:
        raise ValueError(f"masks: expected shape (K, H, W), got {masks.shape}")
    image_size = (int(masks.shape[1]), int(masks.shape[2]))
    size = tuple(int(v) for v in input_size) if input_size is not None else input_size_for(image_size, max_size)
    labels = patch_labels(masks, size, patch_size)
    dim = max(int(dim), len(masks) + 1)
    rng = np.random.default_rng(seed)
    directions = np.linalg.qr(rng.standard_normal((dim, len(masks) + 1)))[0].T  # (K + 1, dim), orthonormal rows
    features = directions[labels] + rng.standard_normal((*labels.shape, dim)) * (noise / np.sqrt(dim))
    return PatchFeatures(
        features=features.astype(np.float32),
        patch_size=int(patch_size),
        image_size=image_size,
        input_size=size,
        backbone="oracle",
    )
