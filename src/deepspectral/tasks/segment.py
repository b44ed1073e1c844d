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
from ..data.images import as_rgb_array, resize_image
from ..spectral import Decomposition
from .localize import coarse_mask

__all__ = ["segment_object", "segment_object_probability", "upsample_grid_mask"]


def upsample_grid_mask(mask: np.ndarray, crop_size: tuple[int, int], size: tuple[int, int] | None = None) -> np.ndarray:
    """Nearest-neighbour upsampling of a grid mask, then right/bottom edge replication.

    Parameters
    ----------
    mask : (h, w) array
        Values on the working grid (any dtype).
    crop_size : (H_c, W_c)
        Pixels the grid covers; pixel ``(i, j)`` takes cell
        ``(i * h // H_c, j * w // W_c)`` (OpenCV's ``INTER_NEAREST`` rule).
    size : (H, W), optional
        Final size (``>= crop_size``); the last row / column is repeated to reach it.
        Defaults to ``crop_size``.

    Returns
    -------
    (H, W) array of ``mask.dtype``
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask: expected shape (h, w), got {mask.shape}")
    crop_h, crop_w = (int(v) for v in crop_size)
    if crop_h < 1 or crop_w < 1:
        raise ValueError(f"crop_size: expected positive sizes, got {crop_size}")
    height, width = (crop_h, crop_w) if size is None else (int(v) for v in size)
    if height < crop_h or width < crop_w:
        raise ValueError(f"size: expected at least crop_size {crop_size}, got {size}")
    grid_h, grid_w = mask.shape
    rows = np.minimum(np.arange(crop_h) * grid_h // crop_h, grid_h - 1)
    cols = np.minimum(np.arange(crop_w) * grid_w // crop_w, grid_w - 1)
    upsampled = mask[rows[:, None], cols[None, :]]
    if (height, width) != (crop_h, crop_w):
        upsampled = np.pad(upsampled, ((0, height - crop_h), (0, width - crop_w)), mode="edge")
    return upsampled


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


def _resize_probability(probability: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of an ``(h, w)`` float map to ``size = (H, W)`` (pixel centres
    aligned, as ``align_corners=False``)."""
    if tuple(probability.shape) == tuple(size):
        return probability
    from PIL import Image

    resized = Image.fromarray(np.ascontiguousarray(probability, dtype=np.float32)).resize(
        (int(size[1]), int(size[0])), Image.Resampling.BILINEAR
    )
    return np.clip(np.asarray(resized, dtype=np.float32), 0.0, 1.0)


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
    rgb = as_rgb_array(image)
    if tuple(rgb.shape[:2]) != tuple(decomposition.image_size):
        raise ValueError(
            f"image: size {tuple(rgb.shape[:2])} does not match the size {tuple(decomposition.image_size)} "
            "the decomposition was computed on"
        )
    input_size = tuple(int(v) for v in decomposition.input_size)
    foreground = upsample_grid_mask(coarse_mask(decomposition), decomposition.crop_size, input_size)
    if crf:
        from ..crf import dense_crf

        input_image = resize_image(rgb, input_size)
        one_hot = np.stack([~foreground, foreground]).astype(np.float32)
        probability = dense_crf(input_image, one_hot, **params)[1]
    else:
        probability = foreground.astype(np.float32)
    return _resize_probability(probability, tuple(decomposition.image_size))


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
