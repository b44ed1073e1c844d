"""What the server sends back as files and pictures: PNG and ``.npz`` bytes, RGBA shown on
a checkerboard. The pictures themselves (eigenvector panels, boxes, mask overlays, the
grid of results) are :mod:`deepspectral.viz`'s."""

from __future__ import annotations

import io
import tempfile
from pathlib import Path

import numpy as np

__all__ = ["png_bytes", "npz_bytes", "on_checkerboard", "as_rgb", "CHECKER_SQUARE", "DISPLAY_HEIGHT"]

#: Side of a checkerboard square behind transparent pixels (pixels), the usual
#: image-editor look.
CHECKER_SQUARE = 16
_CHECKER_LIGHT, _CHECKER_DARK = 255, 204
#: Height of the pictures the web page shows (downloads keep the full size).
DISPLAY_HEIGHT = 480


def png_bytes(picture: np.ndarray) -> bytes:
    """A PNG of an ``(H, W)`` (grey), ``(H, W, 3)`` (RGB) or ``(H, W, 4)`` (RGBA) ``uint8`` array."""
    from PIL import Image

    array = np.ascontiguousarray(picture)
    if array.dtype != np.uint8 or array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (3, 4)):
        raise ValueError(f"picture: expected an (H, W), (H, W, 3) or (H, W, 4) uint8 array, got {array.shape} {array.dtype}")
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def npz_bytes(decomposition) -> bytes:
    """The ``.npz`` of ``decomposition`` in the format of
    :func:`deepspectral.store.save_decomposition` (written in a temporary folder)."""
    from ..store import save_decomposition

    with tempfile.TemporaryDirectory(prefix="deepspectral-npz-") as folder:
        path = save_decomposition(Path(folder) / "eigs.npz", decomposition)
        return path.read_bytes()


def on_checkerboard(rgba: np.ndarray, *, square: int = CHECKER_SQUARE) -> np.ndarray:
    """An ``(H, W, 4) uint8`` RGBA picture composited on a grey checkerboard (how
    transparency is usually shown) → ``(H, W, 3) uint8``."""
    rgba = np.asarray(rgba)
    if rgba.ndim != 3 or rgba.shape[2] != 4:
        raise ValueError(f"rgba: expected an (H, W, 4) array, got shape {rgba.shape}")
    if square < 1:
        raise ValueError(f"square: expected a positive integer, got {square!r}")
    height, width = rgba.shape[:2]
    rows = (np.arange(height) // square)[:, None]
    cols = (np.arange(width) // square)[None, :]
    board = np.where((rows + cols) % 2 == 0, _CHECKER_LIGHT, _CHECKER_DARK).astype(np.float32)[:, :, None]
    alpha = rgba[:, :, 3:4].astype(np.float32) / 255.0
    out = rgba[:, :, :3].astype(np.float32) * alpha + board * (1.0 - alpha)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def as_rgb(picture: np.ndarray) -> np.ndarray:
    """An ``(H, W)`` grey or ``(H, W, 3)`` ``uint8`` picture as ``(H, W, 3)``."""
    picture = np.asarray(picture, dtype=np.uint8)
    if picture.ndim == 2:
        return np.repeat(picture[:, :, None], 3, axis=2)
    if picture.ndim != 3 or picture.shape[2] != 3:
        raise ValueError(f"picture: expected an (H, W) or (H, W, 3) array, got shape {picture.shape}")
    return picture
