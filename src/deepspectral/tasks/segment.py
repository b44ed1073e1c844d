"""Single-object segmentation (paper Sec. 3.4 and supplement).

Recipe, following the paper's code (lukemelas/deep-spectral-segmentation,
``extract.py``: ``_extract_single_region_segmentations`` then
``_extract_crf_segmentations``):

1. **Coarse mask**: the Fiedler eigenvector y₁ > 0 on the working grid — the *whole*
   positive region. Unlike localization, the reference does not keep only the largest
   connected component here (``segmap = eigenvector > threshold`` with threshold 0). The
   sign convention of :func:`~deepspectral.spectral.orient_eigenvectors` makes the
   positive side the minority of the grid. If it is empty the result is empty.
2. **Upsample** the mask, nearest neighbour, from the grid to the cropped input image
   (``decomposition.crop_size``), then **replicate the right and bottom edges** up to the
   full input size (supplement: the crop to a multiple of the patch size drops those
   strips).
3. **Dense CRF** (``crf=True``): a one-hot unary from that mask, refined by
   :func:`deepspectral.crf.dense_crf` on the input image (the original resized to
   ``decomposition.input_size``, i.e. bounded by ``max_size``, so a 12-MP photo stays
   cheap). As in the reference, the edge-replicated mask and the CRF cover the whole
   input image, so the dropped strips are refined by their own colours too.
4. **Back to the original size**: if the input image was downscaled, the soft foreground
   probability is resized bilinearly to ``decomposition.image_size`` and thresholded at 0.5.
"""

from __future__ import annotations

import numpy as np

from .. import defaults
from ..spectral import Decomposition, coarse_mask

__all__ = ["segment_object", "segment_object_probability"]


def _crf_settings(crf_params: dict | None) -> dict:
    params = dict(defaults.CRF_PARAMS)
    if crf_params is None:
        return params
    if not isinstance(crf_params, dict):
        raise ValueError(f"crf_params: expected a dict or None, got {type(crf_params).__name__}")
    unknown = sorted(set(crf_params) - set(params))
    if unknown:
        raise ValueError(f"crf_params: unknown key(s) {unknown}; valid keys are {sorted(params)}")
    params.update(crf_params)
    return params


def segment_object_probability(
    decomposition: Decomposition,
    image,
    *,
    crf: bool = True,
    crf_params: dict | None = None,
) -> np.ndarray:
    """Soft foreground map of the main object at the original image size.

    With ``crf=True`` it is the dense CRF's posterior foreground marginal; with
    ``crf=False`` the 0/1 upsampled coarse mask. Either way it is bilinearly resized to
    the original size when the decomposition worked on a downscaled image. Useful for
    threshold-free metrics (max F_β); :func:`segment_object` thresholds it at 0.5.

    Parameters
    ----------
    decomposition : Decomposition
        From :func:`deepspectral.decompose` on ``image``.
    image : PIL.Image.Image or (H, W, 3) uint8
        The original image (same size as ``decomposition.image_size``).
    crf : bool, default True
        Refine with the dense CRF (needs ``pip install "deepspectral[crf]"``).
    crf_params : dict, optional
        Overrides of ``defaults.CRF_PARAMS`` (keys: ``bilateral_weight``,
        ``bilateral_xy_std``, ``bilateral_rgb_std``, ``gaussian_weight``,
        ``gaussian_xy_std``, ``iterations``).

    Returns
    -------
    (H, W) float32 in [0, 1]
    """
    if not isinstance(decomposition, Decomposition):
        raise ValueError(f"decomposition: expected a Decomposition, got {type(decomposition).__name__}")
    if not isinstance(crf, (bool, np.bool_)):
        raise ValueError(f"crf: expected True or False, got {crf!r}")
    params = _crf_settings(crf_params)
    geometry = decomposition.geometry
    input_image = geometry.input_image(image)  # checks the image's size
    foreground = geometry.grid_to_input(coarse_mask(decomposition))
    if crf:
        from ..crf import dense_crf

        one_hot = np.stack([~foreground, foreground]).astype(np.float32)
        probability = dense_crf(input_image, one_hot, **params)[1]
    else:
        probability = foreground.astype(np.float32)
    return geometry.input_maps_to_image(probability[None])[0]


def segment_object(
    decomposition: Decomposition,
    image,
    *,
    crf: bool = True,
    crf_params: dict | None = None,
) -> np.ndarray:
    """Mask of the main object at the original image size (paper Sec. 3.4).

    The Fiedler eigenvector's positive region on the working grid (the whole region, as
    in the paper's code), upsampled to the input image with right/bottom edges
    replicated, refined by a dense CRF (``crf=True``) and mapped back to the original
    size (see the module docstring for each step).

    Parameters
    ----------
    decomposition : Decomposition
        From :func:`deepspectral.decompose` on ``image``.
    image : PIL.Image.Image or (H, W, 3) uint8
        The original image (same size as ``decomposition.image_size``).
    crf : bool, default True
        Refine with the dense CRF (needs ``pip install "deepspectral[crf]"``); ``False``
        returns the upsampled coarse mask.
    crf_params : dict, optional
        Overrides of ``defaults.CRF_PARAMS``, see :func:`deepspectral.crf.dense_crf`.

    Returns
    -------
    mask : (H, W) bool
    """
    return segment_object_probability(decomposition, image, crf=crf, crf_params=crf_params) > 0.5
