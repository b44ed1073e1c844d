"""What every dataset loader returns, and the readers of ground-truth files.

A loader returns a :class:`Dataset`: a name, a task and a list of :class:`Sample` (an
image file plus its ground truth: boxes, a mask file or a label map). Images and masks are
read lazily, one sample at a time, so a bad file fails that sample only.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from ..images import ImageLoadError, load_image

__all__ = [
    "Sample",
    "Dataset",
    "MASK_THRESHOLD",
    "TASKS",
    "CROPS",
    "read_mask",
    "read_label_map",
    "polygons_to_mask",
    "center_cropped",
]

#: Masks are foreground where the grey value is >= this (0..255): the midpoint of the
#: 8-bit range, the binarisation of the saliency benchmarks and of CUB's averaged masks.
MASK_THRESHOLD = 128
#: The tasks a :class:`Dataset` can be for: boxes (CorLoc), one foreground mask per image
#: (IoU), or class label maps (mIoU).
TASKS = ("localization", "segmentation", "semantic")
#: Crops a loader can apply to image and mask: ``none``, or ``center`` (the largest centred
#: square, the CUB protocol; see :func:`center_cropped`).
CROPS = ("none", "center")


# ---------------------------------------------------------------------------------------
# Samples and datasets
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    """One image and its ground truth.

    Attributes
    ----------
    image_id : str
        Name of the image within its dataset (relative path without extension, or the
        dataset's own id); output names use it.
    image_path : pathlib.Path
    boxes_xyxy : (M, 4) float64 or None
        Ground-truth boxes in continuous pixel coordinates of the (cropped) image.
    difficult : (M,) bool or None
        VOC's ``difficult`` flag per box (all False elsewhere).
    classes : tuple of str
        Class name of each box (empty when unknown).
    mask_path : pathlib.Path or None
        Binary foreground mask (read by :meth:`load_mask`).
    label_path : pathlib.Path or None
        Semantic label map (read by :meth:`load_labels`).
    image_size : (H, W) or None
        Size the annotations were made for (before any crop), used to check the file.
    crop_xyxy : (x1, y1, x2, y2) or None
        Crop applied to the image and the mask (CUB).
    instances : tuple of dict
        COCO instances of the image (``bbox``, ``segmentation``, ``area``, ``iscrowd``),
        for :meth:`largest_instance_mask`.
    """

    image_id: str
    image_path: Path
    boxes_xyxy: np.ndarray | None = None
    difficult: np.ndarray | None = None
    classes: tuple = ()
    mask_path: Path | None = None
    label_path: Path | None = None
    image_size: tuple[int, int] | None = None
    crop_xyxy: tuple[int, int, int, int] | None = None
    instances: tuple = field(default=(), repr=False)

    @property
    def name(self) -> str:
        """How messages and ``errors.json`` name the sample (its ``image_id``)."""
        return self.image_id

    def _crop(self, array: np.ndarray) -> np.ndarray:
        """``array`` (``(H, W, ...)``) cut to :attr:`crop_xyxy` (as is when there is none)."""
        if self.crop_xyxy is None:
            return array
        x1, y1, x2, y2 = self.crop_xyxy
        return np.ascontiguousarray(array[y1:y2, x1:x2])

    def load_image(self) -> np.ndarray:
        """The image as ``(H, W, 3) uint8`` in the orientation of its annotations.

        The EXIF orientation is applied (:func:`deepspectral.data.images.load_image`)
        unless the annotations were made on the stored pixels: when the annotated size
        is known and only the un-rotated file matches it, the stored pixels are used.

        Raises
        ------
        ValueError
            Neither the oriented nor the stored pixels have the annotated size.
        """
        image = load_image(self.image_path)
        if self.image_size is not None and tuple(image.shape[:2]) != tuple(self.image_size):
            raw = _load_raw_rgb(self.image_path)
            if tuple(raw.shape[:2]) != tuple(self.image_size):
                raise ValueError(
                    f"{self.image_path}: image is {raw.shape[1]}x{raw.shape[0]} but its annotation says "
                    f"{self.image_size[1]}x{self.image_size[0]}"
                )
            image = raw
        return self._crop(image)

    def load_mask(self, *, threshold: int = MASK_THRESHOLD) -> np.ndarray:
        """The ground-truth mask, ``(H, W) bool`` (grey value >= ``threshold``), cropped like
        the image; a COCO sample without a mask file gives its :meth:`largest_instance_mask`."""
        if self.mask_path is None:
            if self.instances:
                return self.largest_instance_mask()
            raise ValueError(f"{self.image_id}: this sample has no mask")
        return self._crop(read_mask(self.mask_path, threshold=threshold))

    def load_labels(self) -> np.ndarray:
        """The semantic label map, ``(H, W) uint8`` (class indices, 255 = ignore)."""
        if self.label_path is None:
            raise ValueError(f"{self.image_id}: this sample has no label map")
        return self._crop(read_label_map(self.label_path))

    def largest_instance_mask(self) -> np.ndarray:
        """Mask ``(H, W) bool`` of the largest non-crowd COCO instance (by annotated area)."""
        candidates = [a for a in self.instances if not a.get("iscrowd", 0)]
        if not candidates or self.image_size is None:
            raise ValueError(f"{self.image_id}: no non-crowd instance to make a mask from")
        best = max(candidates, key=lambda a: float(a.get("area", 0.0)))
        return self._crop(polygons_to_mask(best.get("segmentation", []), self.image_size))


@dataclass
class Dataset:
    """A named list of samples for one task.

    Attributes
    ----------
    name : str
    task : {"localization", "segmentation", "semantic"}
        One of :data:`TASKS`.
    samples : list of Sample
    root : pathlib.Path or None
    notes : list of str
        What the loader skipped or assumed (printed by the commands).
    """

    name: str
    task: str
    samples: list
    root: Path | None = None
    notes: list = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> Sample:
        return self.samples[index]

    def __iter__(self) -> Iterator[Sample]:
        return iter(self.samples)

    def subset(self, *, limit: int | None = None, seed: int | None = None) -> "Dataset":
        """The first ``limit`` samples, or ``limit`` samples drawn without replacement with
        ``seed`` (kept in dataset order). ``limit=None`` keeps them all."""
        if limit is None or limit >= len(self.samples):
            return self
        if not isinstance(limit, (int, np.integer)) or limit < 1:
            raise ValueError(f"limit: expected an integer >= 1 or None, got {limit!r}")
        if seed is None:
            chosen = self.samples[:limit]
        else:
            index = np.sort(np.random.default_rng(seed).choice(len(self.samples), size=limit, replace=False))
            chosen = [self.samples[i] for i in index]
        return replace(self, samples=list(chosen), notes=list(self.notes))


def center_cropped(sample: Sample) -> Sample:
    """``sample`` with :attr:`Sample.crop_xyxy` set to the largest centred square of its
    image (the image header is read for the size; the pixels are not decoded)."""
    from PIL import Image

    with Image.open(sample.image_path) as image:
        width, height = image.size
    side = min(width, height)
    x1, y1 = (width - side) // 2, (height - side) // 2
    return replace(sample, crop_xyxy=(x1, y1, x1 + side, y1 + side))


# ---------------------------------------------------------------------------------------
# Reading ground truth files
# ---------------------------------------------------------------------------------------

def _load_raw_rgb(path: Path) -> np.ndarray:
    """The stored pixels as ``(H, W, 3) uint8`` RGB, without applying the EXIF orientation."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB")).copy()
    except OSError as error:
        raise ImageLoadError(path, f"cannot read ({error})") from None


def read_mask(path: str | os.PathLike, *, threshold: int = MASK_THRESHOLD) -> np.ndarray:
    """Read a mask image as a binary mask.

    Parameters
    ----------
    path : path
        Any image PIL reads.
    threshold : int
        Foreground where the grey value ``>= threshold`` (0..255). Palette images use
        their grey conversion, 1-bit images are 0/255, 16-bit images are scaled to
        0..255 first (when their maximum exceeds 255), colour images use their luminance.

    Returns
    -------
    (H, W) bool

    Raises
    ------
    deepspectral.data.images.ImageLoadError
        The file is missing or unreadable.
    """
    from PIL import Image

    path = Path(path)
    try:
        with Image.open(path) as image:
            image.load()
            if image.mode == "1":
                return np.asarray(image, dtype=bool).copy()
            if image.mode == "P":
                image = image.convert("L")
            elif image.mode in ("I;16", "I;16B", "I;16L", "I"):
                array = np.asarray(image, dtype=np.float64)
                top = 65535.0 if array.max() > 255 else 255.0
                return array * (255.0 / top) >= threshold
            elif image.mode != "L":
                image = image.convert("L")
            return np.asarray(image) >= threshold
    except FileNotFoundError:
        raise ImageLoadError(path, "mask file missing") from None
    except OSError as error:
        raise ImageLoadError(path, f"cannot read the mask ({error})") from None


def read_label_map(path: str | os.PathLike) -> np.ndarray:
    """Read a palette (or greyscale) PNG label map.

    Returns
    -------
    (H, W) uint8
        The class indices: the palette indices, not the colours.

    Raises
    ------
    deepspectral.data.images.ImageLoadError
        The file is missing, unreadable or neither palette nor greyscale.
    """
    from PIL import Image

    path = Path(path)
    try:
        with Image.open(path) as image:
            image.load()
            if image.mode not in ("P", "L"):
                raise ImageLoadError(path, f"expected a palette or greyscale label map, got mode {image.mode}")
            return np.asarray(image, dtype=np.uint8).copy()
    except FileNotFoundError:
        raise ImageLoadError(path, "label map missing") from None
    except ImageLoadError:
        raise
    except OSError as error:
        raise ImageLoadError(path, f"cannot read the label map ({error})") from None


def polygons_to_mask(segmentation: Sequence[Sequence[float]] | dict, size: tuple[int, int]) -> np.ndarray:
    """Rasterise a COCO instance segmentation.

    Parameters
    ----------
    segmentation : list of list of float, or dict
        Polygons ``[[x1, y1, x2, y2, ...], ...]`` (pixel coordinates; polygons with
        fewer than 3 points are skipped) or an uncompressed RLE
        ``{"counts": [...], "size": [H, W]}`` (column-major runs, background first).
    size : (H, W)
        Size of the image.

    Returns
    -------
    (H, W) bool

    Raises
    ------
    ValueError
        A compressed (string) RLE: reading it needs pycocotools.
    """
    from PIL import Image, ImageDraw

    height, width = int(size[0]), int(size[1])
    if isinstance(segmentation, dict):
        counts = segmentation.get("counts")
        if not isinstance(counts, list):
            raise ValueError("segmentation: compressed RLE needs pycocotools; only polygons and plain RLE are read")
        flat = np.zeros(height * width, dtype=bool)
        position, value = 0, False
        for run in counts:
            if value:
                flat[position : position + run] = True
            position += run
            value = not value
        return flat.reshape(width, height).T  # column-major
    canvas = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    for polygon in segmentation:
        if len(polygon) >= 6:
            draw.polygon([(float(x), float(y)) for x, y in zip(polygon[0::2], polygon[1::2])], fill=1, outline=1)
    return np.asarray(canvas, dtype=bool)
