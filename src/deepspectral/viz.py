"""Pictures of what happened: eigenvectors as colour maps, boxes, mask overlays.

numpy in, ``uint8`` RGB arrays out; no plotting library needed.
"""

from __future__ import annotations

import numpy as np

from .geometry import ImageGeometry, as_rgb_array, resize_image, resize_nearest

__all__ = ["colormap", "eigenvector_figure", "draw_box", "overlay_mask"]

# viridis sampled at 0, 0.1, ..., 1 (matplotlib's colour map, CC0); linear in between.
_VIRIDIS = np.array(
    [
        (0x44, 0x01, 0x54), (0x48, 0x24, 0x75), (0x41, 0x44, 0x87), (0x35, 0x5F, 0x8D),
        (0x2A, 0x78, 0x8E), (0x21, 0x91, 0x8C), (0x22, 0xA8, 0x84), (0x44, 0xBF, 0x70),
        (0x7A, 0xD1, 0x51), (0xBD, 0xDF, 0x26), (0xFD, 0xE7, 0x25),
    ],
    dtype=np.float64,
)

_GAP_COLOUR = 255
_UNCOVERED_COLOUR = 128


def colormap(values: np.ndarray) -> np.ndarray:
    """Map values in [0, 1] (clipped; NaN -> 0) to viridis colours.

    Parameters
    ----------
    values : (...,) float

    Returns
    -------
    (..., 3) uint8
    """
    values = np.nan_to_num(np.asarray(values, dtype=np.float64), nan=0.0)
    position = np.clip(values, 0.0, 1.0) * (len(_VIRIDIS) - 1)
    low = np.minimum(np.floor(position).astype(np.int64), len(_VIRIDIS) - 2)
    frac = (position - low)[..., None]
    colours = _VIRIDIS[low] * (1.0 - frac) + _VIRIDIS[low + 1] * frac
    return np.clip(np.rint(colours), 0, 255).astype(np.uint8)


def _eigenvector_panel(vector: np.ndarray, decomposition, size: tuple[int, int]) -> np.ndarray:
    """One eigenvector (h, w) as a colour picture of ``size`` (the original image's size,
    or that size scaled down); zero is the middle colour and the scale is symmetric (the
    sign carries meaning). The strip the grid does not cover (crop to a multiple of the
    patch size) is grey."""
    peak = float(np.max(np.abs(vector))) if vector.size else 0.0
    normalised = 0.5 + 0.5 * vector / peak if peak > 0 else np.full(vector.shape, 0.5)
    # the picture is the original image at another size: the same geometry maps onto it
    shown = ImageGeometry(size, decomposition.input_size, decomposition.patch_size)
    crop_h, crop_w = decomposition.crop_size
    _, _, covered_w, covered_h = (max(1, int(v)) for v in shown.input_boxes_to_image([[0, 0, crop_w, crop_h]])[0])
    panel = np.full((size[0], size[1], 3), _UNCOVERED_COLOUR, dtype=np.uint8)
    panel[:covered_h, :covered_w] = resize_nearest(colormap(normalised), (covered_h, covered_w))
    return panel


def eigenvector_figure(image, decomposition, *, n_eigenvectors: int | None = None, max_height: int | None = None) -> np.ndarray:
    """The image and its first non-constant eigenvectors side by side.

    Parameters
    ----------
    image : PIL.Image.Image or (H, W, 3) uint8
        The original image of the decomposition.
    decomposition : Decomposition
    n_eigenvectors : int, optional
        How many non-constant eigenvectors to show (default: all, i.e. K - 1).
    max_height : int, optional
        Downscale the figure so that it is at most this tall (default: the image height).

    Returns
    -------
    (H, W', 3) uint8
        ``[image | y1 | y2 | ...]`` separated by thin white gaps. Each eigenvector is drawn
        with viridis, symmetric around zero (zero = the middle colour, the positive side
        brighter); the grid is stretched over the image area it covers, the uncovered
        border strip (crop to a multiple of the patch size) is grey.
    """
    rgb = as_rgb_array(image)
    if tuple(rgb.shape[:2]) != tuple(decomposition.image_size):
        raise ValueError(
            f"image: size {rgb.shape[:2]} does not match the decomposition's image size {tuple(decomposition.image_size)}"
        )
    available = decomposition.eigenvectors.shape[0] - 1
    if n_eigenvectors is None:
        n_eigenvectors = available
    if not isinstance(n_eigenvectors, (int, np.integer)) or n_eigenvectors < 0:
        raise ValueError(f"n_eigenvectors: expected an integer >= 0, got {n_eigenvectors!r}")
    if max_height is not None and (not isinstance(max_height, (int, np.integer)) or max_height < 1):
        raise ValueError(f"max_height: expected a positive integer or None, got {max_height!r}")
    height, width = rgb.shape[:2]
    if max_height is not None and height > max_height:
        size = (int(max_height), max(1, round(width * max_height / height)))
        rgb = resize_image(rgb, size)
    else:
        size = (height, width)
    gap = np.full((size[0], max(2, size[0] // 100), 3), _GAP_COLOUR, dtype=np.uint8)
    panels = [rgb]
    for index in range(1, 1 + min(int(n_eigenvectors), available)):
        panels += [gap, _eigenvector_panel(decomposition.eigenvectors[index], decomposition, size)]
    return np.ascontiguousarray(np.concatenate(panels, axis=1))


def draw_box(image, box_xyxy, color=(255, 0, 0), *, width: int | None = None) -> np.ndarray:
    """A copy of ``image`` with the outline of a box drawn inside its edges.

    Parameters
    ----------
    image : PIL.Image.Image or (H, W, 3) uint8
    box_xyxy : (x1, y1, x2, y2)
        Pixels, ``x2``/``y2`` exclusive; clipped to the image.
    color : (r, g, b)
    width : int, optional
        Line width in pixels (default: about 0.5 % of the shorter side, at least 2).

    Returns
    -------
    (H, W, 3) uint8
    """
    canvas = as_rgb_array(image).copy()
    height, width_px = canvas.shape[:2]
    if len(box_xyxy) != 4:
        raise ValueError(f"box_xyxy: expected (x1, y1, x2, y2), got {box_xyxy!r}")
    x1, y1, x2, y2 = (int(round(float(v))) for v in box_xyxy)
    x1, x2 = sorted((int(np.clip(x1, 0, width_px)), int(np.clip(x2, 0, width_px))))
    y1, y2 = sorted((int(np.clip(y1, 0, height)), int(np.clip(y2, 0, height))))
    if x2 <= x1 or y2 <= y1:
        return canvas
    if width is None:
        width = max(2, round(min(height, width_px) / 200))
    if width < 1:
        raise ValueError(f"width: expected a positive integer, got {width!r}")
    colour = np.asarray(color, dtype=np.uint8).reshape(3)
    line = min(int(width), (x2 - x1 + 1) // 2 or 1, (y2 - y1 + 1) // 2 or 1)
    canvas[y1 : y1 + line, x1:x2] = colour
    canvas[y2 - line : y2, x1:x2] = colour
    canvas[y1:y2, x1 : x1 + line] = colour
    canvas[y1:y2, x2 - line : x2] = colour
    return canvas


def overlay_mask(image, mask, color=(255, 64, 64), *, alpha: float = 0.5, outline: bool = True) -> np.ndarray:
    """A copy of ``image`` with ``mask`` tinted in ``color`` (and its outline drawn).

    Parameters
    ----------
    image : PIL.Image.Image or (H, W, 3) uint8
    mask : (H, W) bool, or (h, w) bool on a coarser grid (stretched to the image, nearest)
    color : (r, g, b)
    alpha : float in [0, 1]
        Opacity of the tint.
    outline : bool
        Draw the mask's boundary in the full colour.

    Returns
    -------
    (H, W, 3) uint8
    """
    canvas = as_rgb_array(image).copy()
    if not 0.0 <= float(alpha) <= 1.0:
        raise ValueError(f"alpha: expected a value in [0, 1], got {alpha!r}")
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask: expected an (H, W) array, got shape {mask.shape}")
    mask = mask.astype(bool)
    height, width = canvas.shape[:2]
    if mask.shape != (height, width):
        from PIL import Image

        mask = np.asarray(
            Image.fromarray(mask.astype(np.uint8) * 255).resize((width, height), Image.Resampling.NEAREST)
        ) > 127
    colour = np.asarray(color, dtype=np.float32).reshape(3)
    tinted = canvas[mask].astype(np.float32) * (1.0 - alpha) + colour * alpha
    canvas[mask] = np.clip(np.rint(tinted), 0, 255).astype(np.uint8)
    if outline and mask.any():
        from scipy import ndimage

        edge = mask & ~ndimage.binary_erosion(mask, border_value=0)
        canvas[edge] = colour.astype(np.uint8)
    return canvas
