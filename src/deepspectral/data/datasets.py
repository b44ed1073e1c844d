"""Evaluation datasets in the layouts people have on disk.

Every loader returns a :class:`Dataset`: a name, a task and a list of :class:`Sample`
(an image file plus its ground truth: boxes, a mask file or a label map). Images and
masks are read lazily, one sample at a time, so a bad file fails that sample only.

Localization (boxes, continuous ``xyxy`` pixel coordinates, as in the LOST evaluation):

- ``voc07`` / ``voc12`` — ``VOCdevkit/VOC20xx/{JPEGImages,Annotations,ImageSets/Main}``,
  the ``trainval`` split, *all* objects of each XML (the ``difficult`` flag is kept in
  :attr:`Sample.difficult` but every box counts for CorLoc, as in LOST and the paper).
  VOC coordinates are 1-based inclusive pixel indices: ``xmin - 1, ymin - 1, xmax, ymax``.
- ``coco20k`` — COCO ``train2014`` images + ``instances_train2014.json`` restricted to the
  19,817 images of LOST's list (shipped: ``deepspectral/data/coco_20k_filenames.txt``);
  boxes of all non-crowd instances, ``[x, y, x + w, y + h]`` rounded to integers as LOST does.
- ``coco-json`` — any COCO-style json + image folder (``--images DIR --annotations FILE``).

Single-object segmentation (masks binarised at 128):

- ``ecssd``, ``duts-te``, ``dut-omron`` — image folder + mask folder (official layouts).
- ``cub`` — CUB-200-2011 test split (``train_test_split.txt``, 5,794 images) with the
  ``segmentations`` archive; the largest centred square of image and mask is used
  (:data:`CUB_CROP`, the centre crop of the Voynov et al. / Melas-Kyriazi et al. protocol
  the paper follows, kept at full resolution).
- ``masks`` — users' own data: ``--images DIR --masks DIR``, mask files share the image's
  relative path (or stem) with any image extension.

Semantic segmentation: :func:`load_voc_segmentation` (VOC12 ``SegmentationClass``,
``val``; 255 = ignore).
"""

from __future__ import annotations

import json
import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path, PurePosixPath

import numpy as np

from .images import IMAGE_EXTENSIONS, ImageLoadError, load_image

__all__ = [
    "Sample",
    "Dataset",
    "DATASETS",
    "LOCALIZATION_DATASETS",
    "SEGMENTATION_DATASETS",
    "MASK_THRESHOLD",
    "CUB_CROP",
    "VOC_CLASSES",
    "load_dataset",
    "load_voc_boxes",
    "load_voc_segmentation",
    "load_coco_boxes",
    "load_coco20k",
    "coco20k_filenames",
    "load_mask_folder",
    "load_saliency",
    "load_cub",
    "find_voc_year",
    "read_mask",
    "read_label_map",
    "polygons_to_mask",
]

#: Masks are foreground where the grey value is >= this (0..255).
MASK_THRESHOLD = 128
#: Crop used on CUB: "center" (largest centred square) or "none".
CUB_CROP = "center"
#: The 20 PASCAL VOC classes, background first (index = label of SegmentationClass).
VOC_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip

LOCALIZATION_DATASETS = ("voc07", "voc12", "coco20k", "coco-json")
SEGMENTATION_DATASETS = ("ecssd", "duts-te", "dut-omron", "cub", "masks")
DATASETS = LOCALIZATION_DATASETS + SEGMENTATION_DATASETS

_COCO20K_LIST = "coco_20k_filenames.txt"


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

    def _crop(self, array: np.ndarray) -> np.ndarray:
        if self.crop_xyxy is None:
            return array
        x1, y1, x2, y2 = self.crop_xyxy
        return np.ascontiguousarray(array[y1:y2, x1:x2])

    def load_image(self) -> np.ndarray:
        """The image as ``(H, W, 3) uint8`` in the orientation of its annotations.

        The EXIF orientation is applied (:func:`deepspectral.data.images.load_image`)
        unless the annotations were made on the stored pixels: when the annotated size
        is known and only the un-rotated file matches it, the stored pixels are used.
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
        the image."""
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

    def __iter__(self):
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


# ---------------------------------------------------------------------------------------
# Reading ground truth files
# ---------------------------------------------------------------------------------------


def _load_raw_rgb(path: Path) -> np.ndarray:
    """The stored pixels as RGB, without applying the EXIF orientation."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB")).copy()
    except OSError as error:
        raise ImageLoadError(path, f"cannot read ({error})") from None


def read_mask(path, *, threshold: int = MASK_THRESHOLD) -> np.ndarray:
    """Read a mask image as ``(H, W) bool``: grey value (or palette index for 2-colour
    palettes, 1-bit images as 0/255) ``>= threshold``; colour masks use their luminance."""
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


def read_label_map(path) -> np.ndarray:
    """Read a palette (or greyscale) PNG label map as ``(H, W) uint8`` class indices (the
    palette indices, not the colours)."""
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


def polygons_to_mask(segmentation, size: tuple[int, int]) -> np.ndarray:
    """Rasterise COCO polygons (``[[x1, y1, x2, y2, ...], ...]``) or an uncompressed RLE
    (``{"counts": [...], "size": [H, W]}``) to ``(H, W) bool``."""
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


# ---------------------------------------------------------------------------------------
# PASCAL VOC
# ---------------------------------------------------------------------------------------


def find_voc_year(root, year: int) -> Path:
    """The ``VOC<year>`` folder under ``root`` (``root`` may be that folder, the
    ``VOCdevkit`` folder or a parent of it)."""
    root = Path(root)
    name = f"VOC{year}"
    candidates = [root, root / name, root / "VOCdevkit" / name]
    candidates += [p / "VOCdevkit" / name for p in sorted(root.glob("*")) if p.is_dir()] if root.is_dir() else []
    for candidate in candidates:
        if candidate.name == name and (candidate / "JPEGImages").is_dir():
            return candidate
    raise ValueError(
        f"root: no {name} folder with JPEGImages/ under '{root}' (expected VOCdevkit/{name}/JPEGImages, "
        f"Annotations, ImageSets); download it with: deepspectral data download voc{str(year)[2:]} --root {root}"
    )


def _read_split(path: Path) -> list[str]:
    if not path.is_file():
        raise ValueError(f"split: the list '{path}' does not exist")
    return [line.split()[0] for line in path.read_text().splitlines() if line.strip()]


def _parse_voc_xml(path: Path) -> tuple[tuple[int, int] | None, np.ndarray, np.ndarray, tuple]:
    tree = ET.parse(path)
    annotation = tree.getroot()
    size = annotation.find("size")
    image_size = None
    if size is not None and size.findtext("height") and size.findtext("width"):
        height, width = int(float(size.findtext("height"))), int(float(size.findtext("width")))
        if height > 0 and width > 0:
            image_size = (height, width)
    boxes, difficult, classes = [], [], []
    for obj in annotation.iter("object"):
        box = obj.find("bndbox")
        if box is None:
            continue
        # 1-based inclusive pixel indices -> continuous coordinates (as LOST)
        x1 = float(box.findtext("xmin")) - 1
        y1 = float(box.findtext("ymin")) - 1
        x2 = float(box.findtext("xmax"))
        y2 = float(box.findtext("ymax"))
        boxes.append((x1, y1, x2, y2))
        difficult.append((obj.findtext("difficult") or "0").strip() == "1")
        classes.append((obj.findtext("name") or "").strip())
    return (
        image_size,
        np.asarray(boxes, dtype=np.float64).reshape(-1, 4),
        np.asarray(difficult, dtype=bool),
        tuple(classes),
    )


def load_voc_boxes(root, *, year: int = 2007, split: str = "trainval") -> Dataset:
    """PASCAL VOC boxes of one split (default ``trainval``, the CorLoc protocol).

    Parameters
    ----------
    root : path
        Folder holding ``VOCdevkit/VOC<year>`` (or that folder itself).
    year : {2007, 2012}
    split : str
        A list of ``ImageSets/Main`` (``trainval``, ``train``, ``val``, ``test``).

    Returns
    -------
    Dataset
        Task ``localization``; every object's box (``difficult`` ones too, flagged).
    """
    if year not in (2007, 2012):
        raise ValueError(f"year: expected 2007 or 2012, got {year!r}")
    voc = find_voc_year(root, year)
    ids = _read_split(voc / "ImageSets" / "Main" / f"{split}.txt")
    samples, notes = [], []
    missing = 0
    for image_id in ids:
        xml = voc / "Annotations" / f"{image_id}.xml"
        if not xml.is_file():
            missing += 1
            continue
        try:
            image_size, boxes, difficult, classes = _parse_voc_xml(xml)
        except (ET.ParseError, TypeError, ValueError) as error:
            notes.append(f"{xml}: unreadable annotation ({error}); left out")
            continue
        samples.append(
            Sample(
                image_id=image_id,
                image_path=voc / "JPEGImages" / f"{image_id}.jpg",
                boxes_xyxy=boxes,
                difficult=difficult,
                classes=classes,
                image_size=image_size,
            )
        )
    if missing:
        notes.append(f"{missing} image(s) of {split}.txt have no Annotations/*.xml; left out")
    name = f"voc{str(year)[2:]}"
    return Dataset(name=name, task="localization", samples=samples, root=voc, notes=notes)


def load_voc_segmentation(root, *, year: int = 2012, split: str = "val") -> Dataset:
    """PASCAL VOC ``SegmentationClass`` label maps (default VOC12 ``val``, 1,449 images).

    Labels are the palette indices: 0 background, 1..20 :data:`VOC_CLASSES`, 255 the
    ignored object borders.
    """
    voc = find_voc_year(root, year)
    ids = _read_split(voc / "ImageSets" / "Segmentation" / f"{split}.txt")
    samples, missing = [], 0
    for image_id in ids:
        label = voc / "SegmentationClass" / f"{image_id}.png"
        if not label.is_file():
            missing += 1
            continue
        samples.append(Sample(image_id=image_id, image_path=voc / "JPEGImages" / f"{image_id}.jpg", label_path=label))
    notes = [f"{missing} image(s) of {split}.txt have no SegmentationClass/*.png; left out"] if missing else []
    return Dataset(name=f"voc{str(year)[2:]}", task="semantic", samples=samples, root=voc, notes=notes)


# ---------------------------------------------------------------------------------------
# COCO
# ---------------------------------------------------------------------------------------


def coco20k_filenames() -> list[str]:
    """The 19,817 COCO train2014 file names of COCO20k, as published by LOST
    (github.com/valeoai/LOST, ``datasets/coco_20k_filenames.txt``, Apache-2.0)."""
    text = resources.files("deepspectral.data").joinpath(_COCO20K_LIST).read_text()
    return [line.strip() for line in text.splitlines() if line.strip()]


def _read_image_list(path) -> list[str]:
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"image_list: no such file: '{path}'")
    return [line.strip() for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]


def load_coco_boxes(
    images,
    annotations,
    *,
    image_list=None,
    name: str = "coco-json",
    round_boxes: bool = False,
) -> Dataset:
    """A COCO-style dataset: boxes of all non-crowd instances of each image.

    Parameters
    ----------
    images : path
        Folder the json's ``file_name`` entries are relative to.
    annotations : path
        COCO instances json (``images``, ``annotations`` with ``bbox = [x, y, w, h]``).
    image_list : sequence of str or path, optional
        Keep only these images (file names; a leading folder such as ``train2014/`` is
        ignored). A path is read as a text file, one name a line.
    name : str
    round_boxes : bool
        Round box corners to integers (what LOST does on COCO20k).

    Returns
    -------
    Dataset
        Task ``localization``; images with no non-crowd instance are left out (noted).
    """
    images = Path(images)
    annotations = Path(annotations)
    if not images.is_dir():
        raise ValueError(f"images: no such folder: '{images}'")
    if not annotations.is_file():
        raise ValueError(f"annotations: no such file: '{annotations}'")
    try:
        data = json.loads(annotations.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"annotations: cannot read '{annotations}' as json: {error}") from None
    if not isinstance(data, dict) or "images" not in data:
        raise ValueError(f"annotations: '{annotations}' is not a COCO json (no 'images' list)")
    categories = {c["id"]: c.get("name", str(c["id"])) for c in data.get("categories", [])}
    per_image: dict = {}
    for ann in data.get("annotations", []):
        per_image.setdefault(ann["image_id"], []).append(ann)
    keep = None
    if image_list is not None:
        names = _read_image_list(image_list) if isinstance(image_list, (str, os.PathLike)) else list(image_list)
        keep = {PurePosixPath(n).name for n in names}
    samples, notes = [], []
    no_boxes = 0
    entries = sorted(data["images"], key=lambda e: e["file_name"])
    for entry in entries:
        file_name = entry["file_name"]
        if keep is not None and PurePosixPath(file_name).name not in keep:
            continue
        anns = per_image.get(entry["id"], [])
        boxes, classes = [], []
        for ann in anns:
            if ann.get("iscrowd", 0):
                continue
            x, y, w, h = (float(v) for v in ann["bbox"])
            box = [x, y, x + w, y + h]
            if round_boxes:
                box = [float(int(round(v))) for v in box]
            boxes.append(box)
            classes.append(categories.get(ann.get("category_id"), ""))
        if not boxes:
            no_boxes += 1
            continue
        samples.append(
            Sample(
                image_id=str(PurePosixPath(file_name).with_suffix("")),
                image_path=images / file_name,
                boxes_xyxy=np.asarray(boxes, dtype=np.float64),
                difficult=np.zeros(len(boxes), dtype=bool),
                classes=tuple(classes),
                image_size=(int(entry["height"]), int(entry["width"])) if "height" in entry else None,
                instances=tuple(anns),
            )
        )
    if keep is not None:
        found = len(samples) + no_boxes
        if found < len(keep):
            notes.append(f"{len(keep) - found} image(s) of the image list are not in '{annotations.name}'")
    if no_boxes:
        notes.append(f"{no_boxes} image(s) without a non-crowd instance left out")
    return Dataset(name=name, task="localization", samples=samples, root=images, notes=notes)


def load_coco20k(root, *, image_list=None) -> Dataset:
    """COCO20k (LOST's 19,817 COCO train2014 images, non-crowd boxes rounded as LOST does).

    ``root`` holds ``train2014/`` (or ``images/train2014/``) and
    ``annotations/instances_train2014.json``; ``image_list`` replaces the shipped list.
    """
    root = Path(root)
    images = next((p for p in (root / "train2014", root / "images" / "train2014") if p.is_dir()), None)
    annotations = next(
        (p for p in (root / "annotations" / "instances_train2014.json", root / "instances_train2014.json") if p.is_file()),
        None,
    )
    if images is None or annotations is None:
        raise ValueError(
            f"root: expected train2014/ and annotations/instances_train2014.json under '{root}'; "
            f"download them with: deepspectral data download coco20k --root {root}"
        )
    names = image_list if image_list is not None else coco20k_filenames()
    return load_coco_boxes(images, annotations, image_list=names, name="coco20k", round_boxes=True)


# ---------------------------------------------------------------------------------------
# Image folder + mask folder
# ---------------------------------------------------------------------------------------


def _files_by_key(folder: Path) -> dict[str, Path]:
    found = {}
    for dirpath, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in files:
            path = Path(dirpath) / name
            if name.startswith(".") or path.suffix.lower() not in IMAGE_EXTENSIONS:
                continue
            found[PurePosixPath(*path.relative_to(folder).with_suffix("").parts).as_posix()] = path
    return found


def load_mask_folder(images, masks, *, name: str = "masks", crop: str = "none") -> Dataset:
    """Images and masks in two folders; a mask shares its image's relative path without
    extension (``images/a/x.jpg`` - ``masks/a/x.png``) or, failing that, its stem.

    Parameters
    ----------
    images, masks : path
    name : str
    crop : {"none", "center"}
        ``center``: the largest centred square of image and mask (CUB protocol).

    Returns
    -------
    Dataset
        Task ``segmentation``; images without a mask are left out (noted).
    """
    images, masks = Path(images), Path(masks)
    for arg, folder in (("images", images), ("masks", masks)):
        if not folder.is_dir():
            raise ValueError(f"{arg}: no such folder: '{folder}'")
    if crop not in ("none", "center"):
        raise ValueError(f"crop: expected 'none' or 'center', got {crop!r}")
    image_files = _files_by_key(images)
    mask_files = _files_by_key(masks)
    by_stem: dict[str, list[Path]] = {}
    for key, path in mask_files.items():
        by_stem.setdefault(PurePosixPath(key).name, []).append(path)
    samples, missing = [], 0
    for key in sorted(image_files):
        mask = mask_files.get(key)
        if mask is None:
            stem_matches = by_stem.get(PurePosixPath(key).name, [])
            mask = stem_matches[0] if len(stem_matches) == 1 else None
        if mask is None:
            missing += 1
            continue
        samples.append(Sample(image_id=key, image_path=image_files[key], mask_path=mask))
    if not samples:
        raise ValueError(f"masks: no mask in '{masks}' matches an image of '{images}' (by relative path or stem)")
    if crop == "center":
        samples = [_center_cropped(s) for s in samples]
    notes = [f"{missing} image(s) without a mask left out"] if missing else []
    return Dataset(name=name, task="segmentation", samples=samples, root=images, notes=notes)


def _center_cropped(sample: Sample) -> Sample:
    from PIL import Image

    with Image.open(sample.image_path) as image:
        width, height = image.size
    side = min(width, height)
    x1, y1 = (width - side) // 2, (height - side) // 2
    return replace(sample, crop_xyxy=(x1, y1, x1 + side, y1 + side))


#: Official folder names: (dataset folders, image folders, mask folders).
_SALIENCY_LAYOUTS = {
    "ecssd": (("ECSSD", "ecssd"), ("images", "image", "Imgs"), ("ground_truth_mask", "masks", "GT", "gt")),
    "duts-te": (("DUTS-TE", "duts-te"), ("DUTS-TE-Image", "images", "Imgs"), ("DUTS-TE-Mask", "masks", "GT", "gt")),
    "dut-omron": (
        ("DUT-OMRON", "dut-omron", "DUT-OMRON-image"),
        ("DUT-OMRON-image", "images", "Imgs"),
        ("pixelwiseGT-new-PNG", "DUT-OMRON-GT", "masks", "GT", "gt"),
    ),
}


def load_saliency(name: str, root) -> Dataset:
    """ECSSD, DUTS-TE or DUT-OMRON in their official layouts under ``root`` (the dataset
    folder or its parent): ``ECSSD/{images,ground_truth_mask}``,
    ``DUTS-TE/{DUTS-TE-Image,DUTS-TE-Mask}``, ``DUT-OMRON-image/`` + ``pixelwiseGT-new-PNG/``."""
    if name not in _SALIENCY_LAYOUTS:
        raise ValueError(f"name: expected one of {sorted(_SALIENCY_LAYOUTS)}, got {name!r}")
    root = Path(root)
    dataset_dirs, image_dirs, mask_dirs = _SALIENCY_LAYOUTS[name]
    bases = [root] + [root / d for d in dataset_dirs]
    for base in bases:
        for image_dir in image_dirs:
            # DUT-OMRON's archives nest: DUT-OMRON-image/DUT-OMRON-image/*.jpg
            for images in (base / image_dir / image_dir, base / image_dir):
                if not images.is_dir():
                    continue
                for mask_dir in mask_dirs:
                    for masks in (base / mask_dir / mask_dir, base / mask_dir, root / mask_dir):
                        if masks.is_dir() and masks != images:
                            return load_mask_folder(images, masks, name=name)
    raise ValueError(
        f"root: no {name} image and mask folders under '{root}' (looked for {image_dirs} + {mask_dirs}); "
        f"download it with: deepspectral data download {name} --root {root}, or use "
        "--dataset masks --images DIR --masks DIR"
    )


def load_cub(root, *, split: str = "test", crop: str = CUB_CROP) -> Dataset:
    """CUB-200-2011 with its segmentations.

    ``root`` holds ``CUB_200_2011/{images.txt,train_test_split.txt,images/}`` and
    ``segmentations/`` (beside or inside ``CUB_200_2011``). ``split`` is ``test``
    (``is_training_image = 0``, 5,794 images, the evaluation split), ``train`` or ``all``.
    The CUB masks average several annotators; they are binarised at 128.
    """
    root = Path(root)
    if split not in ("test", "train", "all"):
        raise ValueError(f"split: expected 'test', 'train' or 'all', got {split!r}")
    if crop not in ("none", "center"):
        raise ValueError(f"crop: expected 'none' or 'center', got {crop!r}")
    cub = next((p for p in (root / "CUB_200_2011", root) if (p / "images.txt").is_file()), None)
    if cub is None:
        raise ValueError(
            f"root: no CUB_200_2011/images.txt under '{root}'; download it with: deepspectral data download cub --root {root}"
        )
    segmentations = next(
        (p for p in (cub / "segmentations", cub.parent / "segmentations", root / "segmentations") if p.is_dir()), None
    )
    if segmentations is None:
        raise ValueError(f"root: no segmentations/ folder beside or inside '{cub}' (the separate CUB segmentations archive)")
    paths = dict(line.split(maxsplit=1) for line in (cub / "images.txt").read_text().splitlines() if line.strip())
    training = {}
    split_file = cub / "train_test_split.txt"
    if split != "all":
        if not split_file.is_file():
            raise ValueError(f"root: '{split_file}' is missing")
        training = dict(line.split() for line in split_file.read_text().splitlines() if line.strip())
    samples, missing = [], 0
    for image_id, relative in sorted(paths.items(), key=lambda kv: int(kv[0])):
        if split == "test" and training.get(image_id) != "0":
            continue
        if split == "train" and training.get(image_id) != "1":
            continue
        relative = relative.strip()
        mask = segmentations / PurePosixPath(relative).with_suffix(".png")
        if not mask.is_file():
            missing += 1
            continue
        samples.append(
            Sample(image_id=str(PurePosixPath(relative).with_suffix("")), image_path=cub / "images" / relative, mask_path=mask)
        )
    if crop == "center":
        samples = [_center_cropped(s) for s in samples]
    notes = [f"{missing} image(s) without a segmentation left out"] if missing else []
    return Dataset(name="cub", task="segmentation", samples=samples, root=cub, notes=notes)


# ---------------------------------------------------------------------------------------
# One entry point
# ---------------------------------------------------------------------------------------


def load_dataset(
    name: str,
    *,
    root=None,
    images=None,
    masks=None,
    annotations=None,
    image_list=None,
) -> Dataset:
    """Load an evaluation dataset by name.

    Parameters
    ----------
    name : str
        One of :data:`DATASETS`: ``voc07``, ``voc12``, ``coco20k`` (need ``root``),
        ``coco-json`` (``images`` + ``annotations``), ``ecssd``, ``duts-te``,
        ``dut-omron``, ``cub`` (``root``), ``masks`` (``images`` + ``masks``).
    root, images, masks, annotations : path, optional
    image_list : path, optional
        Text file of image names to keep (COCO datasets; replaces the COCO20k list).

    Returns
    -------
    Dataset
    """
    if name not in DATASETS:
        raise ValueError(f"dataset: expected one of {', '.join(DATASETS)}, got {name!r}")

    def need(**values):
        for arg, value in values.items():
            if value is None:
                raise ValueError(f"--{arg}: required with --dataset {name}")

    if name in ("voc07", "voc12"):
        need(root=root)
        return load_voc_boxes(root, year=2007 if name == "voc07" else 2012)
    if name == "coco20k":
        need(root=root)
        return load_coco20k(root, image_list=image_list)
    if name == "coco-json":
        need(images=images, annotations=annotations)
        return load_coco_boxes(images, annotations, image_list=image_list)
    if name == "masks":
        need(images=images, masks=masks)
        return load_mask_folder(images, masks)
    if name == "cub":
        need(root=root)
        return load_cub(root)
    need(root=root)
    return load_saliency(name, root)
