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

Other recipes and refinements (``refine``; the recipe is read from the decomposition):

- **TokenCut** (:mod:`deepspectral.recipes.tokencut`): the coarse mask is the seed's
  4-connected component on the patch grid, upsampled to the original image with torch's
  ``"nearest"`` rule, as TokenCut's saliency code does; its default refinement is the
  bilateral solver.
- ``refine="bilateral"``: the fast bilateral solver (:func:`deepspectral.bilateral.refine_mask`,
  TokenCut's settings) on the original image with the coarse mask at the original size as
  target; the solver's output is the probability (TokenCut thresholds it at 0.5 for its
  published numbers). Images longer than ``defaults.BILATERAL_MAX_SIZE`` (1024) on a side
  are solved at that size and the output resized bilinearly (the solver's cost grows with
  the pixels).
- ``min_score``: below it (:func:`deepspectral.recipes.scores.spectral_score`) the mask is
  empty ("no object").
"""

from __future__ import annotations

import numpy as np

from .. import defaults
from ..geometry import as_rgb_array, input_size_for, resize_bilinear, resize_image
from ..recipes import method_of, tokencut
from ..recipes.scores import check_min_score, spectral_score
from ..spectral import Decomposition, coarse_mask

__all__ = ["segment_object", "segment_object_probability", "resolve_refine"]


def resolve_refine(decomposition: Decomposition, *, crf: bool | None = None, refine: str | None = None) -> str:
    """The refinement to apply: ``refine`` when given (one of ``defaults.REFINEMENTS``),
    else ``"crf"`` / ``"none"`` for ``crf=True`` / ``False``, else the recipe's default
    (``defaults.REFINE``: dsm → crf, tokencut → bilateral)."""
    if crf is not None and not isinstance(crf, (bool, np.bool_)):
        raise ValueError(f"crf: expected True, False or None, got {crf!r}")
    if refine is not None:
        if refine not in defaults.REFINEMENTS:
            raise ValueError(f"refine: expected one of {defaults.REFINEMENTS}, got {refine!r}")
        if crf is not None and (refine == "crf") != bool(crf):
            raise ValueError(f"crf: crf={crf!r} contradicts refine={refine!r}; give one of them")
        return refine
    if crf is not None:
        return "crf" if crf else "none"
    return defaults.REFINE.get(method_of(decomposition), "crf")


def _bilateral_probability(mask: np.ndarray, image: np.ndarray, params: dict | None) -> np.ndarray:
    """The bilateral solver's output for a mask ``(H, W) bool`` on ``image`` (original size),
    solved at most at ``defaults.BILATERAL_MAX_SIZE`` a side."""
    from ..bilateral import refine_mask

    params = dict(params or {})
    unknown = sorted(set(params) - set(defaults.BILATERAL_PARAMS))
    if unknown:
        raise ValueError(f"bilateral_params: unknown key(s) {unknown}; valid keys are {sorted(defaults.BILATERAL_PARAMS)}")
    size = input_size_for(mask.shape, defaults.BILATERAL_MAX_SIZE)
    if size == tuple(mask.shape):
        return refine_mask(image, mask, **params)
    from ..geometry import resize_nearest

    small = refine_mask(resize_image(image, size), resize_nearest(mask, size), **params)
    return np.clip(resize_bilinear(small, mask.shape), 0.0, 1.0)


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
    crf: bool | None = None,
    crf_params: dict | None = None,
    refine: str | None = None,
    bilateral_params: dict | None = None,
    min_score: float = defaults.MIN_SCORE,
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
    crf : bool or None
        ``True``: refine with the dense CRF (needs ``pip install "deepspectral[crf]"``),
        ``False``: no refinement; None (default): see ``refine``.
    crf_params : dict, optional
        Overrides of ``defaults.CRF_PARAMS`` (keys: ``bilateral_weight``,
        ``bilateral_xy_std``, ``bilateral_rgb_std``, ``gaussian_weight``,
        ``gaussian_xy_std``, ``iterations``).
    refine : {"none", "crf", "bilateral"} or None
        The refinement (:func:`resolve_refine`; None: from ``crf``, else the recipe's:
        the CRF for the paper's recipe, the bilateral solver for TokenCut).
    bilateral_params : dict, optional
        Overrides of ``defaults.BILATERAL_PARAMS`` for ``refine="bilateral"``.
    min_score : float in [0, 1], default 0
        Below this score (:func:`deepspectral.recipes.scores.spectral_score`) the map is 0.

    Returns
    -------
    (H, W) float32 in [0, 1]
    """
    if not isinstance(decomposition, Decomposition):
        raise ValueError(f"decomposition: expected a Decomposition, got {type(decomposition).__name__}")
    refine = resolve_refine(decomposition, crf=crf, refine=refine)
    params = _crf_settings(crf_params)
    min_score = check_min_score(min_score)
    geometry = decomposition.geometry
    input_image = geometry.input_image(image)  # checks the image's size
    if spectral_score(decomposition) < min_score:
        return np.zeros(decomposition.image_size, dtype=np.float32)
    if method_of(decomposition) == tokencut.NAME:
        grid_mask, rule = tokencut.foreground(decomposition), "floor"
    else:
        grid_mask, rule = coarse_mask(decomposition), "centre"
    if refine == "bilateral":
        mask = geometry.grid_to_image(grid_mask, rule=rule)
        return _bilateral_probability(mask, as_rgb_array(image), bilateral_params)
    if refine == "none" and rule == "floor":  # TokenCut: nearest straight to the original
        return geometry.grid_to_image(grid_mask, rule=rule).astype(np.float32)
    foreground = geometry.grid_to_input(grid_mask, rule=rule)
    if refine == "crf":
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
    crf: bool | None = None,
    crf_params: dict | None = None,
    refine: str | None = None,
    bilateral_params: dict | None = None,
    min_score: float = defaults.MIN_SCORE,
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
    crf : bool or None
        ``True``: refine with the dense CRF (needs ``pip install "deepspectral[crf]"``);
        ``False``: the upsampled coarse mask; None (default): see ``refine``.
    crf_params : dict, optional
        Overrides of ``defaults.CRF_PARAMS``, see :func:`deepspectral.crf.dense_crf`.
    refine, bilateral_params, min_score
        See :func:`segment_object_probability` (``refine`` None: the CRF for the paper's
        recipe, the bilateral solver for TokenCut, unless ``crf`` says otherwise).

    Returns
    -------
    mask : (H, W) bool
    """
    return (
        segment_object_probability(
            decomposition, image, crf=crf, crf_params=crf_params, refine=refine,
            bilateral_params=bilateral_params, min_score=min_score,
        )
        > 0.5
    )
