"""Object localization (paper Sec. 3.3): a box around the Fiedler eigenvector's segment.

A decomposition made by another recipe (``settings["method"]``, see
:mod:`deepspectral.recipes`) gets that recipe's box (TokenCut: the seed's component).
:func:`detect` adds the confidence of :mod:`deepspectral.recipes.scores` and reports no
box below ``min_score``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import defaults
from ..geometry import mask_to_box
from ..recipes import method_of, tokencut
from ..recipes.scores import check_min_score, spectral_score
from ..spectral import Decomposition, coarse_mask

__all__ = ["localize", "detect", "Detection", "largest_component"]


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

    A TokenCut decomposition gets TokenCut's box instead
    (:func:`deepspectral.recipes.tokencut.box`).

    Returns
    -------
    box_xyxy : (x1, y1, x2, y2) int
        Pixels of the original image, ``x2``/``y2`` exclusive.
    """
    if not isinstance(decomposition, Decomposition):
        raise ValueError(f"decomposition: expected a Decomposition, got {type(decomposition).__name__}")
    if method_of(decomposition) == tokencut.NAME:
        return tokencut.box(decomposition)
    box_grid = mask_to_box(largest_component(coarse_mask(decomposition)))
    if box_grid is None:
        height, width = decomposition.image_size
        return (0, 0, int(width), int(height))
    return tuple(int(v) for v in decomposition.geometry.grid_boxes_to_image([box_grid])[0])


@dataclass(frozen=True)
class Detection:
    """A box with its confidence.

    Attributes
    ----------
    box : (x1, y1, x2, y2) int or None
        Pixels of the original image (``x2``, ``y2`` exclusive); None: "no object" (the
        score was below ``min_score``).
    score : float
        In [0, 1], :func:`deepspectral.recipes.scores.spectral_score` (the relative
        eigengap ``1 − λ₁/λ₂``).
    """

    box: tuple[int, int, int, int] | None
    score: float


def detect(decomposition: Decomposition, *, min_score: float = defaults.MIN_SCORE) -> Detection:
    """:func:`localize` with a confidence: the box, or None when the score is below
    ``min_score`` (a number in [0, 1]; 0, the default, always gives a box)."""
    if not isinstance(decomposition, Decomposition):
        raise ValueError(f"decomposition: expected a Decomposition, got {type(decomposition).__name__}")
    min_score = check_min_score(min_score)
    score = spectral_score(decomposition)
    if score < min_score:
        return Detection(None, score)
    return Detection(localize(decomposition), score)
