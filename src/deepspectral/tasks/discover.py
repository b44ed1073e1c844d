"""Several objects per image (MaskCut, CutLER): instance masks at the original image size.

Per image, from its patch features (:func:`discover`):

1. **Cuts** on the patch grid: :func:`deepspectral.recipes.maskcut.maskcut` (TokenCut's
   graph at ``tau``, repeated, taken patches zeroed, the drop rules, earlier objects
   subtracted), up to ``max_objects`` cuts, or — ``max_objects="auto"`` — until a cut's
   score falls below ``min_score``.
2. **Work image**: each object is upsampled from the grid to the image the backbone saw
   (``features.input_size``: MaskCut's 480 × 480 square with ``--resize 480``) by torch's
   ``"nearest"`` rule, as MaskCut's ``F.interpolate``.
3. **Dense CRF** (``refine="crf"``, MaskCut's ``crf.py``): on the work image (the original
   resized there by Lanczos, MaskCut's ``I_new``), unary from the softmax of the 0/1 mask
   taken as logits (``p = e / (1 + e)`` inside, ``1 / (1 + e)`` outside), Gaussian kernel
   (sxy 3, compat 7), bilateral kernel (sxy 50, srgb 5, compat 10), 10 mean-field
   iterations (``defaults.MASKCUT_CRF_PARAMS``); the MAP labelling, holes filled
   (``scipy.ndimage.binary_fill_holes``); a refined mask whose IoU with the unrefined one is
   below 0.5 is dropped.
4. **Back to the original size** as MaskCut: the 0/255 mask resized by PIL's default
   (bicubic) filter, then ``value > max / 2`` set to the maximum and the rest to the
   minimum, and the non-zero pixels kept. An instance left empty is dropped.

Each instance gets its tight box, its area and its cut's score
(:func:`deepspectral.recipes.maskcut.cut_score`, ``1 − λ₁``).

Which features: the keys of the last block (TokenCut's and MaskCut's), extracted with
``fit="resize"`` (each side resized to a multiple of the patch size, as MaskCut's
``utils.resize_pil``); MaskCut's square input is the original resized to ``S × S`` first
(the command's ``--resize S``: :class:`SquareInput`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from .. import defaults
from ..features import PatchFeatures
from ..geometry import as_rgb_array, mask_to_box, resize_image, resize_nearest
from ..recipes import maskcut as maskcut_recipe

__all__ = [
    "Instance",
    "discover",
    "resolve_max_objects",
    "refine_with_crf",
    "mask_to_original",
    "SquareInput",
    "CRF_KEEP_IOU",
]

#: MaskCut's ``metric.IoU(mask1, mask2) < 0.5`` after the CRF: the refined mask is dropped.
CRF_KEEP_IOU = 0.5


@dataclass(frozen=True)
class Instance:
    """One discovered object.

    Attributes
    ----------
    mask : (H, W) bool
        At the original image size.
    box : (x1, y1, x2, y2) int
        Tight box of the mask in pixels (``x2``, ``y2`` exclusive).
    area : int
        Pixels of the mask.
    score : float
        In [0, 1]: the score of the cut that found it (``1 − λ₁``).
    cut : int
        Which cut (0-based) found it.
    """

    mask: np.ndarray
    box: tuple[int, int, int, int]
    area: int
    score: float
    cut: int


def resolve_max_objects(max_objects, min_score) -> tuple[int, float | None]:
    """``(cuts to make, score to stop below)`` for ``max_objects`` (an integer >= 1, or
    ``"auto"``) and ``min_score`` (None or a number in [0, 1]); ``ValueError`` naming the
    argument otherwise. ``"auto"`` makes up to ``defaults.AUTO_MAX_OBJECTS`` cuts and stops
    below ``min_score`` (default ``defaults.AUTO_MIN_SCORE``); a number makes that many,
    stopping below ``min_score`` only when one is given."""
    if min_score is not None and (
        isinstance(min_score, bool) or not isinstance(min_score, (int, float, np.integer, np.floating)) or not 0 <= min_score <= 1
    ):
        raise ValueError(f"min_score: expected None or a number in [0, 1], got {min_score!r}")
    if isinstance(max_objects, str) and max_objects == "auto":
        return defaults.AUTO_MAX_OBJECTS, float(defaults.AUTO_MIN_SCORE if min_score is None else min_score)
    if isinstance(max_objects, bool) or not isinstance(max_objects, (int, np.integer)) or max_objects < 1:
        raise ValueError(f"max_objects: expected an integer >= 1 or 'auto', got {max_objects!r}")
    return int(max_objects), None if min_score is None else float(min_score)


def refine_with_crf(image: np.ndarray, mask: np.ndarray, crf_params: dict | None = None) -> np.ndarray:
    """MaskCut's CRF step on one mask (see the module docstring, step 3).

    Parameters
    ----------
    image : (H, W, 3) uint8
        The work image.
    mask : (H, W) bool
        The object upsampled to it.
    crf_params : dict, optional
        Overrides of ``defaults.MASKCUT_CRF_PARAMS``.

    Returns
    -------
    (H, W) bool
        The refined mask, holes filled; empty when its IoU with ``mask`` is below 0.5.
    """
    from scipy import ndimage

    from ..crf import dense_crf

    mask = np.asarray(mask, dtype=bool)
    params = {**defaults.MASKCUT_CRF_PARAMS, **(crf_params or {})}
    inside = np.e / (1.0 + np.e)  # softmax of the logits (0, 1) for (background, object)
    foreground = np.where(mask, inside, 1.0 - inside)
    marginals = dense_crf(image, np.stack([1.0 - foreground, foreground]), **params)
    refined = ndimage.binary_fill_holes(marginals[1] > marginals[0])
    overlap = maskcut_recipe.mask_iou(mask, refined)
    if overlap < CRF_KEEP_IOU:  # NaN (both empty) passes, as MaskCut's
        return np.zeros_like(mask)
    return refined


def mask_to_original(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """MaskCut's way back: the 0/255 mask ``(h, w) bool`` resized to ``size = (H, W)`` by
    PIL's default filter (bicubic), values above half the maximum set to the maximum, the
    others to the minimum, non-zero kept; ``(H, W) bool``."""
    from PIL import Image

    picture = Image.fromarray(np.asarray(mask, dtype=bool).astype(np.uint8) * 255)
    values = np.asarray(picture.resize((int(size[1]), int(size[0]))))
    upper, lower = int(values.max()), int(values.min())
    return np.where(values > upper / 2.0, upper, lower) != 0


def discover(
    features: PatchFeatures,
    image,
    *,
    max_objects: int | str = defaults.MAX_OBJECTS,
    min_score: float | None = None,
    tau: float = defaults.MASKCUT_TAU,
    eps: float = defaults.TOKENCUT_EPS,
    refine: str = defaults.DISCOVER_REFINE,
    crf_params: dict | None = None,
    solver: str = "lanczos",
    sign: str = defaults.MASKCUT_SIGN,
) -> list[Instance]:
    """Instance masks of up to ``max_objects`` objects of one image (MaskCut).

    Parameters
    ----------
    features : PatchFeatures
        Keys of the last block of ``image`` (``Backbone.extract(image, fit="resize")``, or
        through :class:`SquareInput` for MaskCut's square), or oracle features;
        ``features.image_size`` must be the image's size.
    image : PIL.Image.Image or (H, W, 3) uint8
        The original image.
    max_objects : int >= 1 or "auto", default 3
        Cuts made; ``"auto"``: up to ``defaults.AUTO_MAX_OBJECTS``, stopping at the first
        cut whose score is below ``min_score``.
    min_score : float in [0, 1] or None
        Stop at the first cut scoring below it (default: never for a number of objects,
        ``defaults.AUTO_MIN_SCORE`` for ``"auto"``).
    tau : float, default 0.15
        Cosine threshold of the binary graph.
    eps : float, default 1e-5
        Weight of the other pairs of patches.
    refine : {"crf", "none"}, default "crf"
        MaskCut's dense CRF (needs ``pip install "deepspectral[crf]"``) or none.
    crf_params : dict, optional
        Overrides of ``defaults.MASKCUT_CRF_PARAMS``.
    solver : {"lanczos", "dense"}, default "lanczos"
        The eigen-step (:func:`deepspectral.recipes.maskcut.cut_eigenpairs`).
    sign : {"seed", "lapack"}, default "seed"
        How a cut whose side depends on the eigenvector's sign is decided:
        :mod:`deepspectral.recipes.maskcut`, "Sign" (``"lapack"``: CutLER's output).

    Returns
    -------
    list of Instance
        In the order of the cuts (at most one per cut; dropped or emptied cuts give none).
    """
    if not isinstance(features, PatchFeatures):
        raise ValueError(f"features: expected PatchFeatures, got {type(features).__name__}")
    n_cuts, stop_below = resolve_max_objects(max_objects, min_score)
    if refine not in defaults.DISCOVER_REFINEMENTS:
        raise ValueError(f"refine: expected one of {defaults.DISCOVER_REFINEMENTS}, got {refine!r}")
    maskcut_recipe.check_cut_settings(n_cuts=n_cuts, tau=tau, eps=eps, min_score=stop_below, solver=solver, sign=sign)
    rgb = as_rgb_array(image)
    if tuple(rgb.shape[:2]) != tuple(features.image_size):
        raise ValueError(f"image: expected the size of the features' image {tuple(features.image_size)}, got {rgb.shape[:2]}")
    cuts = maskcut_recipe.maskcut(
        features.features, n_cuts=n_cuts, tau=tau, eps=eps, min_score=stop_below, solver=solver, sign=sign
    )
    work_size = tuple(features.input_size)
    work_image = resize_image(rgb, work_size) if refine == "crf" else None
    instances = []
    for index, cut in enumerate(cuts):
        if not cut.mask.any():
            continue
        mask = resize_nearest(cut.mask, work_size, rule="floor")
        if refine == "crf":
            mask = refine_with_crf(work_image, mask, crf_params)
            if not mask.any():
                continue
        full = mask_to_original(mask, features.image_size)
        if not full.any():
            continue
        instances.append(Instance(mask=full, box=mask_to_box(full), area=int(full.sum()), score=cut.score, cut=index))
    return instances


class SquareInput:
    """A backbone seen through MaskCut's square input: each image is resized (Lanczos) to
    ``size × size``, whatever its aspect ratio, before the backbone's ``fit="resize"``
    extraction; the features keep the original ``image_size`` (their ``input_size`` is the
    square), so masks go back to the original pixels.

    Parameters
    ----------
    backbone : deepspectral.Backbone
        Or anything with ``extract`` / ``extract_batch`` and the attributes the engine reads.
    size : int >= 1
        Side of the square (MaskCut: 480).
    """

    def __init__(self, backbone, size: int) -> None:
        if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
            raise ValueError(f"size: expected an integer >= 1, got {size!r}")
        self.backbone = backbone
        self.size = int(size)

    def __getattr__(self, name):  # weights, block, feature, precision, device, patch_size...
        if name == "backbone":
            raise AttributeError(name)
        return getattr(self.backbone, name)

    @property
    def name(self) -> str:
        """The backbone's name and the square (part of the engine's cache keys)."""
        return f"{self.backbone.name}@square{self.size}"

    def _square(self, image) -> np.ndarray:
        return resize_image(as_rgb_array(image), (self.size, self.size))

    def _restore(self, features: PatchFeatures, image) -> PatchFeatures:
        return dataclasses.replace(features, image_size=tuple(int(v) for v in as_rgb_array(image).shape[:2]))

    def extract(self, image, *, max_size=None, fit: str = "resize", **kwargs) -> PatchFeatures:
        """``backbone.extract`` of the square image (``max_size`` and ``fit`` are ignored:
        the square decides the input)."""
        return self._restore(self.backbone.extract(self._square(image), max_size=None, fit="resize", **kwargs), image)

    def extract_batch(self, images, *, max_size=None, fit: str = "resize", **kwargs) -> list:
        """``backbone.extract_batch`` of the square images."""
        found = self.backbone.extract_batch([self._square(image) for image in images], max_size=None, fit="resize", **kwargs)
        return [self._restore(features, image) for features, image in zip(found, images)]
