"""Oracle patch features: what a perfect backbone would give for a known object mask.

``oracle_features(mask)`` builds :class:`deepspectral.PatchFeatures` whose patches are one
random unit direction where the patch lies mostly inside the object and another one
elsewhere, plus seeded Gaussian noise. Crop and grid follow the real backbone exactly:
the mask is resized to ``input_size_for(mask.shape, max_size)``, cropped by dropping the
bottom rows / right columns to a multiple of ``patch_size`` and split into
``(H // P, W // P)`` patches. Everything downstream of the backbone (affinity, spectral
decomposition, localization, segmentation) should then recover the object.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from deepspectral.geometry import input_size_for
from deepspectral.features import PatchFeatures

__all__ = ["oracle_features", "resize_mask", "shared_data_dir", "iou"]


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
