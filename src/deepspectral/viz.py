"""Pictures of what happened: eigenvectors as colour maps, boxes, mask overlays, and the
evaluation's figures (a grid of example rows, a histogram of per-image IoU).

numpy in, ``uint8`` RGB arrays out; no plotting library needed.
"""

from __future__ import annotations

import numpy as np

from .geometry import ImageGeometry, as_rgb_array, resize_image, resize_nearest

__all__ = [
    "colormap",
    "eigenvector_figure",
    "draw_box",
    "overlay_mask",
    "localization_row",
    "segmentation_row",
    "picture_grid",
    "iou_histogram",
    "FIGURE_ROW_HEIGHT",
]

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

#: Height of one row of :func:`picture_grid`, pixels.
FIGURE_ROW_HEIGHT = 160
#: Gap between the panels and rows of :func:`picture_grid`, pixels.
_GRID_GAP = 4
# Colours of the evaluation pictures: a box judged correct / wrong, the ground truth, a
# predicted mask (overlay_mask's default), the histogram's bars and its line at 0.5.
_CORRECT, _WRONG, _GROUND_TRUTH = (0, 200, 0), (230, 0, 0), (40, 90, 255)
_MASK_COLOUR = (255, 64, 64)
_BAR_COLOUR, _THRESHOLD_COLOUR = (70, 110, 200), (230, 0, 0)


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
    patch size) is grey; a grid over a zero-padded input (``fit="pad"``) has its padded
    strip cut off, so each cell stays over the pixels it describes."""
    peak = float(np.max(np.abs(vector))) if vector.size else 0.0
    normalised = 0.5 + 0.5 * vector / peak if peak > 0 else np.full(vector.shape, 0.5)
    geometry = decomposition.geometry
    if geometry.fit == "pad":
        return resize_nearest(geometry.grid_to_input(colormap(normalised)), size)
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


# ---------------------------------------------------------------------------------------
# Evaluation figures (deepspectral eval: OUT/figure.png, OUT/iou_histogram.png)
# ---------------------------------------------------------------------------------------


def _fiedler_panel(image: np.ndarray, decomposition) -> np.ndarray:
    """The first non-constant eigenvector (the only one when K = 1) as a picture of the
    image's size, drawn as :func:`eigenvector_figure` draws it."""
    vectors = decomposition.eigenvectors
    vector = vectors[1] if vectors.shape[0] > 1 else vectors[0]
    return _eigenvector_panel(vector, decomposition, tuple(image.shape[:2]))


def localization_row(image, decomposition, box_xyxy, gt_boxes, correct: bool, coarse) -> list[np.ndarray]:
    """One row of the localization figure (as the paper's Fig. 4).

    Parameters
    ----------
    image : (H, W, 3) uint8
        The original image of the decomposition.
    decomposition : Decomposition
    box_xyxy : (x1, y1, x2, y2)
        The predicted box, pixels of the image.
    gt_boxes : (M, 4) array_like
        Ground-truth boxes, ``xyxy`` pixels.
    correct : bool
        Whether the box counts for CorLoc (drawn green, else red).
    coarse : (h, w) bool
        The coarse object mask on the patch grid.

    Returns
    -------
    list of (H, W, 3) uint8
        ``[image, Fiedler eigenvector, boxes (ground truth blue), coarse mask overlay]``.
    """
    picture = image
    for g in gt_boxes:
        picture = draw_box(picture, [int(round(v)) for v in g], color=_GROUND_TRUTH)
    picture = draw_box(picture, box_xyxy, color=_CORRECT if correct else _WRONG)
    return [image, _fiedler_panel(image, decomposition), picture, overlay_mask(image, coarse, color=_MASK_COLOUR)]


def segmentation_row(image, decomposition, mask, gt) -> list[np.ndarray]:
    """One row of the segmentation figure.

    Parameters
    ----------
    image : (H, W, 3) uint8
        The original image of the decomposition.
    decomposition : Decomposition
    mask : (H, W) bool
        The predicted mask.
    gt : (H, W) bool
        The ground-truth mask.

    Returns
    -------
    list of (H, W, 3) uint8
        ``[image, Fiedler eigenvector, predicted mask overlay, ground truth overlay (blue)]``.
    """
    return [
        image,
        _fiedler_panel(image, decomposition),
        overlay_mask(image, mask, color=_MASK_COLOUR),
        overlay_mask(image, gt, color=_GROUND_TRUTH),
    ]


def _fit_height(image: np.ndarray, height: int) -> np.ndarray:
    """``image`` scaled to ``height`` pixels high, aspect ratio kept."""
    h, w = image.shape[:2]
    return resize_image(image, (height, max(1, round(w * height / h))))


def picture_grid(rows: list, *, row_height: int = FIGURE_ROW_HEIGHT) -> np.ndarray:
    """Tile rows of panels into one picture.

    Parameters
    ----------
    rows : list of list of (H, W, 3) uint8
        At least one row; panels may differ in size.
    row_height : int
        Every panel is scaled to this many pixels high (aspect ratio kept).

    Returns
    -------
    (R, C, 3) uint8
        The rows one above the other, panels separated by white gaps, each row padded
        with white to the widest.
    """
    if not rows:
        raise ValueError("rows: expected at least one row of panels")
    if not isinstance(row_height, (int, np.integer)) or row_height < 1:
        raise ValueError(f"row_height: expected an integer >= 1, got {row_height!r}")
    lines = []
    for panels in rows:
        scaled = [_fit_height(np.asarray(p, dtype=np.uint8), row_height) for p in panels]
        parts = []
        for index, panel in enumerate(scaled):
            if index:
                parts.append(np.full((row_height, _GRID_GAP, 3), _GAP_COLOUR, np.uint8))
            parts.append(panel)
        lines.append(np.concatenate(parts, axis=1))
    width = max(line.shape[1] for line in lines)
    out = []
    for index, line in enumerate(lines):
        if index:
            out.append(np.full((_GRID_GAP, width, 3), _GAP_COLOUR, np.uint8))
        pad = np.full((row_height, width - line.shape[1], 3), _GAP_COLOUR, np.uint8)
        out.append(np.concatenate([line, pad], axis=1))
    return np.ascontiguousarray(np.concatenate(out, axis=0))


def iou_histogram(values, *, bins: int = 20, size: tuple[int, int] = (200, 400)) -> np.ndarray:
    """A bar chart of per-image IoU over ``[0, 1]`` (numpy only).

    Parameters
    ----------
    values : iterable of float or None
        Per-image IoU; ``None`` and non-finite values are left out, the rest clipped to
        ``[0, 1]``.
    bins : int
        Bars, equal widths over ``[0, 1]``.
    size : (height, width)
        Of the picture, pixels.

    Returns
    -------
    (height, width, 3) uint8
        Bars scaled to the tallest, tick marks every 0.1 on the axis, a red line at 0.5
        (the CorLoc threshold).
    """
    if not isinstance(bins, (int, np.integer)) or bins < 1:
        raise ValueError(f"bins: expected an integer >= 1, got {bins!r}")
    values = np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=np.float64)
    height, width = size
    margin = 10
    if height <= 2 * margin + 5 or width <= 2 * margin + bins:
        raise ValueError(f"size: expected (height, width) larger than ({2 * margin + 5}, {2 * margin + bins}), got {size!r}")
    canvas = np.full((height, width, 3), 255, np.uint8)
    counts, _ = np.histogram(np.clip(values, 0, 1), bins=bins, range=(0.0, 1.0))
    top = max(int(counts.max()) if counts.size else 0, 1)
    plot_w, plot_h = width - 2 * margin, height - 2 * margin
    bar_w = plot_w / bins
    for index, count in enumerate(counts):
        bar_h = int(round(plot_h * count / top))
        x1 = margin + int(round(index * bar_w)) + 1
        x2 = margin + int(round((index + 1) * bar_w)) - 1
        if bar_h:
            canvas[height - margin - bar_h : height - margin, x1:x2] = _BAR_COLOUR
    canvas[height - margin, margin : width - margin] = 0
    for tick in range(11):
        x = margin + int(round(tick * plot_w / 10))
        canvas[height - margin : height - margin + 5, max(x - 1, 0) : x + 1] = 0
    x_half = margin + plot_w // 2
    canvas[margin : height - margin, x_half : x_half + 1] = _THRESHOLD_COLOUR
    return canvas
