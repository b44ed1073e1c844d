"""Turning user images into ``(H, W, 3) uint8`` RGB arrays, and resizing them."""

from __future__ import annotations

import numpy as np

from .. import defaults

__all__ = ["as_rgb_array", "input_size_for", "resize_image"]


def as_rgb_array(image) -> np.ndarray:
    """Return ``image`` as a C-contiguous ``(H, W, 3) uint8`` RGB array.

    Parameters
    ----------
    image : PIL.Image.Image or numpy.ndarray
        A PIL image of any mode, or an array ``(H, W)``, ``(H, W, 1)``, ``(H, W, 3)`` or
        ``(H, W, 4)`` of dtype uint8 (or float in [0, 1]). Alpha is dropped.
    """
    if hasattr(image, "mode") and hasattr(image, "convert"):  # PIL image
        if image.mode != "RGB":
            image = image.convert("RGB")
        return np.ascontiguousarray(np.asarray(image, dtype=np.uint8))
    array = np.asarray(image)
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3 or array.shape[2] not in (1, 3, 4):
        raise ValueError(
            f"image: expected an (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) array, got shape {array.shape}"
        )
    if array.dtype != np.uint8:
        if np.issubdtype(array.dtype, np.floating):
            array = np.clip(np.rint(array * 255.0), 0, 255).astype(np.uint8)
        else:
            raise ValueError(f"image: expected dtype uint8 or float in [0, 1], got {array.dtype}")
    if array.shape[2] == 1:
        array = np.repeat(array, 3, axis=2)
    return np.ascontiguousarray(array[:, :, :3])


def input_size_for(image_size: tuple[int, int], max_size: int | None) -> tuple[int, int]:
    """Size ``(H, W)`` an image of ``image_size`` is resized to so its longest side is at
    most ``max_size`` (aspect ratio kept, each side at least 1). ``None`` keeps the size."""
    height, width = image_size
    if max_size is None or max(height, width) <= max_size:
        return (int(height), int(width))
    if max_size < 1:
        raise ValueError(f"max_size: expected a positive integer or None, got {max_size!r}")
    scale = max_size / max(height, width)
    return (max(1, round(height * scale)), max(1, round(width * scale)))


def resize_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize an ``(H, W, 3) uint8`` image to ``size = (H', W')`` with antialiasing
    (PIL's Lanczos filter). Returns the input unchanged when the size already matches."""
    if tuple(image.shape[:2]) == tuple(size):
        return image
    from PIL import Image

    resized = Image.fromarray(image).resize((size[1], size[0]), Image.Resampling.LANCZOS)
    return np.asarray(resized, dtype=np.uint8)
