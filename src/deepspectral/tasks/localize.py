"""Object localization (paper Sec. 3.3): a box around the Fiedler eigenvector's segment."""

from __future__ import annotations

import numpy as np

from ..geometry import mask_to_box
from ..spectral import Decomposition, coarse_mask

__all__ = ["localize", "largest_component"]


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
    box_grid = mask_to_box(largest_component(coarse_mask(decomposition)))
    if box_grid is None:
        height, width = decomposition.image_size
        return (0, 0, int(width), int(height))
    return tuple(int(v) for v in decomposition.geometry.grid_boxes_to_image([box_grid])[0])
