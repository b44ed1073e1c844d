"""Image geometry: every size of one image and every mapping between them, in one place.

One image passes through four frames (all sizes ``(height, width)``):

- the **original** image, ``image_size`` (H, W) — where every result is reported;
- the **input** image, ``input_size`` (H_in, W_in): the original resized so that its longest
  side is at most ``max_size`` (Lanczos, antialiased), or the original itself;
- the **crop**, ``crop_size`` (H_c, W_c): the input cropped to a multiple of the patch size P
  by dropping the bottom rows / right columns (the paper's recipe); the backbone sees it.
  With ``fit="pad"`` (TokenCut's boxes) the input is instead padded at the bottom / right
  to the next multiple of P (zeros after the normalisation, added by the backbone) and
  ``crop_size`` is that padded size; :meth:`ImageGeometry.for_image` with ``fit="resize"``
  (TokenCut's saliency masks) resizes the image straight to a multiple of P, so the crop is
  the whole input;
- the **working grid**, ``grid_size`` (h, w) = crop // 8 (at least 1×1): the paper's
  intermediate resolution, on which the affinity and the eigenvectors live; the colour
  image of the KNN affinity is the crop shrunk onto it by PIL's antialiased bilinear
  resize, as the paper's code makes it (:func:`grid_colours_of_crop`).

:class:`ImageGeometry` holds the first three sizes (the rest follows) and maps results back
to the original image with one rule per kind of data:

- **boxes** (grid cells → original pixels): edges scaled, rounded to the nearest pixel,
  clipped to the image;
- **labels and masks** (nearest neighbour): each target pixel takes the source pixel
  under its centre, ``src = floor((i + 1/2) · n_src / n_dst)``, computed exactly in
  integers (for the integer factor grid → crop this is ``i // 8``);
- **maps and probabilities** (bilinear, half-pixel centres, as
  ``torch.nn.functional.interpolate(align_corners=False)``: :func:`resize_bilinear`).

Between the crop and the input the dropped bottom rows / right columns are filled by
repeating the last row / column (the supplement's edge replication); with ``fit="pad"``
the padded strip is dropped instead.

Nothing else in the package rounds a coordinate or resizes a result.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from . import defaults

__all__ = [
    "ImageGeometry",
    "as_rgb_array",
    "input_size_for",
    "resize_image",
    "grid_colours_of_crop",
    "resize_bilinear",
    "resize_nearest",
    "linear_taps",
    "bilinear_taps",
    "interpolation_matrix",
    "working_grid",
    "mask_to_box",
    "FITS",
    "NEAREST_RULES",
]

#: How an input image is made to fit the patch grid (see :meth:`ImageGeometry.for_image`):
#: "crop" (the paper's: drop the bottom rows / right columns), "pad" (TokenCut's boxes:
#: zero-pad the normalised input at the bottom / right), "resize" (TokenCut's saliency:
#: Lanczos-resize to the nearest multiple of the patch size; stored as a "crop" geometry
#: whose input size is already a multiple).
FITS = ("crop", "pad", "resize")
#: Nearest-neighbour rules of :func:`resize_nearest`: "centre" (the pixel under the target
#: pixel's centre) or "floor" (``src = floor(i · n_src / n_dst)``, what
#: ``torch.nn.functional.interpolate(mode="nearest")`` does; TokenCut's masks use it).
NEAREST_RULES = ("centre", "floor")


# ---------------------------------------------------------------------------------------
# Images as arrays
# ---------------------------------------------------------------------------------------


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
    if max_size is not None and (
        isinstance(max_size, bool) or not isinstance(max_size, (int, np.integer)) or max_size < 1
    ):
        raise ValueError(f"max_size: expected a positive integer or None, got {max_size!r}")
    height, width = image_size
    if max_size is None or max(height, width) <= max_size:
        return (int(height), int(width))
    scale = max_size / max(height, width)
    return (max(1, round(height * scale)), max(1, round(width * scale)))


def resize_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize an ``(H, W, 3) uint8`` image to ``size = (H', W')`` with antialiasing
    (PIL's Lanczos filter). Returns the input unchanged when the size already matches."""
    if tuple(image.shape[:2]) == tuple(size):
        return image
    from PIL import Image

    resized = Image.fromarray(image).resize((int(size[1]), int(size[0])), Image.Resampling.LANCZOS)
    return np.asarray(resized, dtype=np.uint8)


def grid_colours_of_crop(crop: np.ndarray, grid_size: tuple[int, int]) -> np.ndarray:
    """The colour image of the KNN affinity: a crop ``(H_c, W_c, 3) uint8`` resized to the
    working grid ``grid_size = (h, w)``, as ``(h, w, 3) float32`` in [0, 1].

    The paper's code (``extract/extract.py``, ``_extract_eig``) makes it with PIL's
    ``Image.resize(..., Image.BILINEAR)`` of the image file, values rounded to uint8 and
    divided by 255: when shrinking (by 8 here) PIL's bilinear filter is widened to the
    whole footprint of an output pixel (a triangle over 2 × 8 source pixels per axis),
    i.e. antialiased, unlike the 2-tap bilinear of :func:`resize_bilinear`. This is that
    resize, of the *cropped* image (the paper's code resizes the uncropped file onto the
    grid of the crop, a misalignment of up to one patch that is not copied here).
    """
    from PIL import Image

    crop = np.asarray(crop)
    if crop.ndim != 3 or crop.shape[2] != 3 or crop.dtype != np.uint8:
        raise ValueError(f"crop: expected an (H, W, 3) uint8 array, got shape {crop.shape} dtype {crop.dtype}")
    h, w = int(grid_size[0]), int(grid_size[1])
    if h < 1 or w < 1:
        raise ValueError(f"grid_size: expected positive sizes, got {grid_size}")
    small = Image.fromarray(np.ascontiguousarray(crop)).resize((w, h), Image.Resampling.BILINEAR)
    return np.asarray(small, dtype=np.float32) / np.float32(255.0)


# ---------------------------------------------------------------------------------------
# Resampling of arrays
# ---------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=64)
def linear_taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray]:
    """1-D linear interpolation of ``torch.nn.functional.interpolate`` with
    ``align_corners=False`` (half-pixel centres, no antialiasing) as 2 taps per output.

    Returns
    -------
    index : (n_out, 2) int64
        The two input samples each output reads (equal at the borders).
    weight : (n_out, 2) float32
        Their weights, summing to 1. Both arrays are cached: do not modify them.
    """
    if n_in < 1 or n_out < 1:
        raise ValueError(f"n_in, n_out: expected positive sizes, got {n_in}, {n_out}")
    src = np.maximum((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0.0)
    lo = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    frac = (src - lo).astype(np.float32)
    index = np.stack([lo, np.minimum(lo + 1, n_in - 1)], axis=1)
    weight = np.stack([1.0 - frac, frac], axis=1).astype(np.float32)
    index.flags.writeable = weight.flags.writeable = False
    return index, weight


def interpolation_matrix(n_in: int, n_out: int):
    """:func:`linear_taps` as a matrix.

    Returns
    -------
    (n_out, n_in) float32 scipy CSR matrix with at most 2 entries per row, rows summing to 1.
    """
    import scipy.sparse

    index, weight = linear_taps(n_in, n_out)
    rows = np.repeat(np.arange(n_out), 2)
    return scipy.sparse.csr_matrix((weight.ravel(), (rows, index.ravel())), shape=(n_out, n_in), dtype=np.float32)


def resize_bilinear(array: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of an ``(h, w, ...)`` array to ``(H, W, ...)`` float32 exactly as
    ``torch.nn.functional.interpolate(mode="bilinear", align_corners=False)`` does."""
    h, w = array.shape[:2]
    array = np.asarray(array, dtype=np.float32)
    if (h, w) == tuple(size):
        return array
    # separable 2-tap gathers: no matrix product, so no BLAS thread pool is woken (see
    # affinity.feature_affinity on why the eigen-step keeps to one BLAS library)
    index, weight = linear_taps(h, int(size[0]))
    shape = (-1,) + (1,) * (array.ndim - 1)
    out = weight[:, 0].reshape(shape) * array[index[:, 0]] + weight[:, 1].reshape(shape) * array[index[:, 1]]
    index, weight = linear_taps(w, int(size[1]))
    shape = (1, -1) + (1,) * (array.ndim - 2)
    out = weight[:, 0].reshape(shape) * out[:, index[:, 0]] + weight[:, 1].reshape(shape) * out[:, index[:, 1]]
    return np.ascontiguousarray(out, dtype=np.float32)


@functools.lru_cache(maxsize=32)
def bilinear_taps(size_in: tuple[int, int], size_out: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """The 2-D bilinear operator of :func:`resize_bilinear` as 4 taps per output pixel.

    Returns
    -------
    taps : (H * W, 4) int64
        Input pixels (row-major indices) each output pixel reads.
    weights : (H * W, 4) float32
        Their weights (summing to 1). Both arrays are cached: do not modify them.
    """
    iy, wy = linear_taps(size_in[0], size_out[0])
    ix, wx = linear_taps(size_in[1], size_out[1])
    taps = np.ascontiguousarray((iy[:, None, :, None] * size_in[1] + ix[None, :, None, :]).reshape(-1, 4))
    weights = np.ascontiguousarray((wy[:, None, :, None] * wx[None, :, None, :]).reshape(-1, 4), dtype=np.float32)
    taps.flags.writeable = weights.flags.writeable = False
    return taps, weights


def _nearest_index(n_in: int, n_out: int, rule: str = "centre") -> np.ndarray:
    """Source index of each of ``n_out`` samples: the one under its centre,
    ``floor((i + 1/2) · n_in / n_out)``, or with ``rule="floor"`` ``floor(i · n_in / n_out)``,
    in exact integer arithmetic."""
    i = np.arange(n_out, dtype=np.int64)
    if rule == "floor":
        return np.minimum((i * n_in) // n_out, n_in - 1)
    return np.minimum(((2 * i + 1) * n_in) // (2 * n_out), n_in - 1)


def resize_nearest(array: np.ndarray, size: tuple[int, int], *, rule: str = "centre") -> np.ndarray:
    """Nearest-neighbour resize of an ``(h, w, ...)`` array (any dtype) to ``(H, W, ...)``,
    each target pixel taking the source pixel under its centre (see the module docstring),
    or with ``rule="floor"`` the source pixel ``floor(i · h / H)`` (torch's ``"nearest"``)."""
    if rule not in NEAREST_RULES:
        raise ValueError(f"rule: expected one of {NEAREST_RULES}, got {rule!r}")
    array = np.asarray(array)
    h, w = array.shape[:2]
    if (h, w) == tuple(size):
        return array
    rows = _nearest_index(h, int(size[0]), rule)
    cols = _nearest_index(w, int(size[1]), rule)
    return np.ascontiguousarray(array[rows[:, None], cols[None, :]])


def _pad_edges(array: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Repeat the last row / column of ``(h, w, ...)`` up to ``size = (H, W)`` (H >= h, W >= w)."""
    h, w = array.shape[:2]
    if (h, w) == tuple(size):
        return array
    pad = ((0, int(size[0]) - h), (0, int(size[1]) - w)) + ((0, 0),) * (array.ndim - 2)
    return np.pad(array, pad, mode="edge")


# ---------------------------------------------------------------------------------------
# Grids and boxes
# ---------------------------------------------------------------------------------------


def working_grid(crop_size: tuple[int, int]) -> tuple[int, int]:
    """The intermediate resolution ``(H_c // 8, W_c // 8)`` of the paper (at least 1x1)."""
    stride = defaults.GRID_STRIDE
    return (max(1, int(crop_size[0]) // stride), max(1, int(crop_size[1]) // stride))


def mask_to_box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """Bounding box ``(x1, y1, x2, y2)`` of the True cells of an ``(h, w)`` mask, ``x2`` /
    ``y2`` exclusive, in the mask's own cells; ``None`` for an empty mask."""
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 2:
        raise ValueError(f"mask: expected shape (h, w), got {mask.shape}")
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    return (int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1)


@dataclass(frozen=True)
class ImageGeometry:
    """The sizes of one image on its way through the pipeline, and the maps between them.

    Parameters
    ----------
    image_size : (H, W)
        The original image.
    input_size : (H_in, W_in)
        The image the backbone was given, before the crop (``image_size`` resized by
        ``max_size``, see :meth:`for_image`).
    patch_size : int
        Patch size P of the backbone; the crop is ``input_size`` rounded down to multiples of P.
    fit : {"crop", "pad"}, default "crop"
        ``"pad"``: the patch grid covers the input padded at the bottom / right to the next
        multiple of P (rounded up), and ``crop_size`` is that padded size.
    """

    image_size: tuple[int, int]
    input_size: tuple[int, int]
    patch_size: int
    fit: str = "crop"

    def __post_init__(self) -> None:
        object.__setattr__(self, "image_size", (int(self.image_size[0]), int(self.image_size[1])))
        object.__setattr__(self, "input_size", (int(self.input_size[0]), int(self.input_size[1])))
        object.__setattr__(self, "patch_size", int(self.patch_size))
        if self.patch_size < 1:
            raise ValueError(f"patch_size: expected a positive integer, got {self.patch_size}")
        if self.fit not in ("crop", "pad"):
            raise ValueError(f"fit: expected 'crop' or 'pad', got {self.fit!r}")

    @classmethod
    def for_image(
        cls, image_size: tuple[int, int], patch_size: int, max_size: int | None, *, fit: str = "crop"
    ) -> "ImageGeometry":
        """The geometry of an image of ``image_size`` given to a backbone with patches of
        ``patch_size`` under ``max_size`` (longest input side; ``None``: no limit).

        ``fit`` (one of :data:`FITS`) says how the input meets the patch grid: ``"crop"``
        (default), ``"pad"`` or ``"resize"``: the input size is ``input_size_for(image_size,
        max_size)`` rounded to the nearest multiple of P on each side (at least P), as
        TokenCut's saliency code does (``round(W / P) · P``); the image is resized there in
        one Lanczos step.

        Raises
        ------
        ValueError
            ``max_size`` is not a positive integer or None, ``fit`` is unknown, or the input
            image is smaller than one patch.
        """
        if fit not in FITS:
            raise ValueError(f"fit: expected one of {FITS}, got {fit!r}")
        input_size = input_size_for(image_size, max_size)
        if fit == "resize":
            p = int(patch_size)
            # Python's round() halves to even, as TokenCut's int(round(w / patch_size))
            input_size = tuple(max(p, int(round(side / p)) * p) for side in input_size)
        geometry = cls(image_size, input_size, patch_size, "pad" if fit == "pad" else "crop")
        if min(geometry.patch_grid) == 0:
            resized = f", resized from {image_size[0]}x{image_size[1]}" if tuple(input_size) != tuple(image_size) else ""
            raise ValueError(
                f"image: the image ({input_size[0]}x{input_size[1]} pixels{resized}) is smaller than one "
                f"patch of {patch_size} pixels"
            )
        return geometry

    # ------------------------------------------------------------------ sizes
    @property
    def patch_grid(self) -> tuple[int, int]:
        """Patch grid ``(H_in // P, W_in // P)`` of the backbone (rounded up with ``fit="pad"``)."""
        p = self.patch_size
        if self.fit == "pad":
            return (-(-self.input_size[0] // p), -(-self.input_size[1] // p))
        return (self.input_size[0] // p, self.input_size[1] // p)

    @property
    def padding(self) -> tuple[int, int]:
        """Rows / columns ``(bottom, right)`` added to the input (``fit="pad"``; else 0, 0)."""
        return (self.crop_size[0] - min(self.crop_size[0], self.input_size[0]),
                self.crop_size[1] - min(self.crop_size[1], self.input_size[1]))

    @property
    def crop_size(self) -> tuple[int, int]:
        """The input cropped to a multiple of the patch size, ``(H_c, W_c)`` (with
        ``fit="pad"``: the input padded to a multiple of the patch size)."""
        h, w = self.patch_grid
        return (h * self.patch_size, w * self.patch_size)

    @property
    def grid_size(self) -> tuple[int, int]:
        """The working grid ``(h, w)`` (see :func:`working_grid`)."""
        return working_grid(self.crop_size)

    @property
    def cell_size(self) -> tuple[float, float]:
        """Size ``(dy, dx)`` of one working-grid cell in input pixels."""
        h, w = self.grid_size
        return (self.crop_size[0] / h, self.crop_size[1] / w)

    @property
    def scale(self) -> tuple[float, float]:
        """Factor ``(sy, sx)`` from input pixels to original pixels."""
        return (self.image_size[0] / self.input_size[0], self.image_size[1] / self.input_size[1])

    # ------------------------------------------------------------------ the image itself
    def crop(self, image) -> np.ndarray:
        """The pixels the backbone sees: ``image`` (original size) resized to the input size
        and cropped, ``(H_c, W_c, 3) uint8``, C-contiguous. With ``fit="pad"`` the input
        image itself ``(H_in, W_in, 3)``: the backbone pads it after normalising."""
        rgb = self._check_image(image)
        if self.fit == "pad":
            return np.ascontiguousarray(resize_image(rgb, self.input_size))
        crop_h, crop_w = self.crop_size
        return np.ascontiguousarray(resize_image(rgb, self.input_size)[:crop_h, :crop_w])

    def input_image(self, image) -> np.ndarray:
        """``image`` (original size) resized to the input size, ``(H_in, W_in, 3) uint8``."""
        return resize_image(self._check_image(image), self.input_size)

    def grid_colours(self, image) -> np.ndarray:
        """The crop's colours on the working grid, ``(h, w, 3) float32`` in [0, 1]: what the
        colour affinity of the decomposition sees (see :func:`grid_colours_of_crop`)."""
        return self.crop_to_grid_colours(self.crop(image))

    def crop_to_grid_colours(self, crop: np.ndarray) -> np.ndarray:
        """:meth:`grid_colours` of an already made :meth:`crop` ``(H_c, W_c, 3) uint8``."""
        crop = np.asarray(crop)
        if tuple(crop.shape[:2]) != self.crop_size:
            raise ValueError(f"crop: size {tuple(crop.shape[:2])} does not match the crop size {self.crop_size}")
        return grid_colours_of_crop(crop, self.grid_size)

    def _check_image(self, image) -> np.ndarray:
        rgb = as_rgb_array(image)
        if tuple(rgb.shape[:2]) != self.image_size:
            raise ValueError(
                f"image: size {tuple(rgb.shape[:2])} does not match the size {self.image_size} "
                "the features were extracted from"
            )
        return rgb

    # ------------------------------------------------------------------ back to the original
    def grid_boxes_to_input(
        self, boxes_grid: np.ndarray, *, expand: float = 0.0, grid_size: tuple[int, int] | None = None
    ) -> np.ndarray:
        """Boxes ``(n, 4)`` ``(x1, y1, x2, y2)`` in grid cells (x2, y2 exclusive) → input
        pixels, grown by ``expand`` input pixels on every side, rounded, clipped to the
        input image. ``grid_size``: the grid the cells belong to, covering the crop
        (default: the working grid; e.g. :attr:`patch_grid`). Returns ``(n, 4) int64``."""
        boxes = np.asarray(boxes_grid, dtype=np.float64).reshape(-1, 4)
        cell_y, cell_x = self._cell(grid_size)
        scaled = boxes * np.array([cell_x, cell_y, cell_x, cell_y]) + np.array([-expand, -expand, expand, expand])
        return self._round_clip(scaled, self.input_size)

    def input_boxes_to_image(self, boxes_input: np.ndarray) -> np.ndarray:
        """Boxes ``(n, 4)`` in input pixels → original pixels (rounded, clipped), ``(n, 4) int64``."""
        scale_y, scale_x = self.scale
        scaled = np.asarray(boxes_input, dtype=np.float64).reshape(-1, 4) * np.array([scale_x, scale_y, scale_x, scale_y])
        return self._round_clip(scaled, self.image_size)

    def grid_boxes_to_image(self, boxes_grid: np.ndarray, *, grid_size: tuple[int, int] | None = None) -> np.ndarray:
        """Boxes ``(n, 4)`` in grid cells → original pixels, ``(n, 4) int64``: each edge
        scaled by the cell size, then by the input-to-original scale, rounded, clipped.
        ``grid_size`` as in :meth:`grid_boxes_to_input`."""
        boxes = np.asarray(boxes_grid, dtype=np.float64).reshape(-1, 4)
        cell_y, cell_x = self._cell(grid_size)
        scale_y, scale_x = self.scale
        in_pixels = boxes * np.array([cell_x, cell_y, cell_x, cell_y])
        return self._round_clip(in_pixels * np.array([scale_x, scale_y, scale_x, scale_y]), self.image_size)

    def _cell(self, grid_size: tuple[int, int] | None) -> tuple[float, float]:
        if grid_size is None:
            return self.cell_size
        return (self.crop_size[0] / grid_size[0], self.crop_size[1] / grid_size[1])

    @staticmethod
    def _round_clip(boxes: np.ndarray, size: tuple[int, int]) -> np.ndarray:
        limit = np.array([size[1], size[0], size[1], size[0]])
        return np.clip(np.round(boxes), 0, limit).astype(np.int64)

    def _crop_to_input(self, array: np.ndarray) -> np.ndarray:
        """``(H_c, W_c, ...)`` → ``(H_in, W_in, ...)``: dropped strips edge-replicated, or
        with ``fit="pad"`` the padded strips cut off."""
        if self.fit == "pad":
            return np.ascontiguousarray(array[: self.input_size[0], : self.input_size[1]])
        return _pad_edges(array, self.input_size)

    def grid_to_input(self, grid: np.ndarray, *, rule: str = "centre") -> np.ndarray:
        """Per-cell values ``(h, w, ...)`` covering the crop (any grid size, any dtype) →
        ``(H_in, W_in, ...)``: nearest neighbour to the crop (``rule`` of
        :func:`resize_nearest`), the dropped strips filled by edge replication (with
        ``fit="pad"``: the padded strips cut off)."""
        return self._crop_to_input(resize_nearest(grid, self.crop_size, rule=rule))

    def grid_to_image(self, grid: np.ndarray, *, rule: str = "centre") -> np.ndarray:
        """Labels or a mask ``(h, w)`` covering the crop → ``(H, W)`` on the original image
        (nearest neighbour throughout, ``rule`` of :func:`resize_nearest`), same dtype.
        With ``rule="floor"`` and a grid of integer-factor cells (``crop = P · grid``, the
        patch grid) the two steps equal one direct floor-rule resize grid → original
        (``⌊⌊i·H_in/H⌋/P⌋ = ⌊i·h/H⌋`` when ``H_in = P·h``)."""
        return resize_nearest(self.grid_to_input(grid, rule=rule), self.image_size, rule=rule)

    def input_maps_to_image(self, maps: np.ndarray) -> np.ndarray:
        """Soft maps ``(L, H_in, W_in)`` on the input image → ``(L, H, W) float32`` on the
        original (bilinear), clipped to [0, 1]."""
        maps = np.asarray(maps, dtype=np.float32)
        out = resize_bilinear(np.moveaxis(maps, 0, -1), self.image_size)
        return np.clip(np.moveaxis(out, -1, 0), 0.0, 1.0).astype(np.float32)

    def crop_maps_to_image(self, maps: np.ndarray) -> np.ndarray:
        """Soft maps ``(L, h', w')`` covering the crop (any resolution) → ``(L, H, W)
        float32`` on the original: bilinear to the crop, edges replicated to the input size,
        bilinear to the original, clipped to [0, 1]."""
        out = resize_bilinear(np.moveaxis(np.asarray(maps, dtype=np.float32), 0, -1), self.crop_size)
        out = self._crop_to_input(out)
        out = resize_bilinear(out, self.image_size)
        return np.clip(np.moveaxis(out, -1, 0), 0.0, 1.0).astype(np.float32)
