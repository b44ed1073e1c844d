"""Object localization (paper Sec. 3.3): a box around the Fiedler eigenvector's segment."""

from __future__ import annotations

import numpy as np

from ..spectral import Decomposition

__all__ = ["localize", "largest_component", "coarse_mask", "grid_box_to_pixels"]


def coarse_mask(decomposition: Decomposition, index: int = 1) -> np.ndarray:
    """``y_index > 0`` on the working grid, ``(h, w) bool``. With fewer than two
    eigenvectors (a one-cell grid) the whole grid is returned."""
    if decomposition.eigenvectors.shape[0] <= index:
        return np.ones(decomposition.grid_size, dtype=bool)
    return decomposition.eigenvectors[index] > 0


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 8-connected component of a ``(h, w) bool`` mask (ties: the first in
    scan order). An empty mask is returned unchanged."""
    from scipy import ndimage

    labels, count = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
    if count == 0:
        return mask.copy()
    sizes = np.bincount(labels.ravel(), minlength=count + 1)
    sizes[0] = 0
    return labels == int(np.argmax(sizes))


def grid_box_to_pixels(decomposition: Decomposition, box_grid: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
    """Map a box ``(x1, y1, x2, y2)`` in grid cells (x2, y2 exclusive) to pixels of the
    original image, clipped to the image."""
    x1, y1, x2, y2 = box_grid
    cell_y, cell_x = decomposition.cell_size
    scale_y, scale_x = decomposition.scale
    height, width = decomposition.image_size
    box = (
        int(np.clip(round(x1 * cell_x * scale_x), 0, width)),
        int(np.clip(round(y1 * cell_y * scale_y), 0, height)),
        int(np.clip(round(x2 * cell_x * scale_x), 0, width)),
        int(np.clip(round(y2 * cell_y * scale_y), 0, height)),
    )
    return box


def localize(decomposition: Decomposition) -> tuple[int, int, int, int]:
    """Box around the main object (paper Sec. 3.3 and supplement).

    The Fiedler eigenvector y₁ is thresholded at 0 on the working grid (its positive side
    is the minority by the sign convention); the largest 8-connected component of that
    region gives the box, scaled from grid cells to pixels of the original image and
    clipped to it. An empty region gives the whole image.

    Returns
    -------
    box_xyxy : (x1, y1, x2, y2) int
        Pixels of the original image, ``x2``/``y2`` exclusive.
    """
    if not isinstance(decomposition, Decomposition):
        raise ValueError(f"decomposition: expected a Decomposition, got {type(decomposition).__name__}")
    region = largest_component(coarse_mask(decomposition))
    if not region.any():
        height, width = decomposition.image_size
        return (0, 0, int(width), int(height))
    ys, xs = np.nonzero(region)
    return grid_box_to_pixels(decomposition, (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1))
