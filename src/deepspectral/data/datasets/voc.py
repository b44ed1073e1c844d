"""PASCAL VOC: boxes of VOC07 / VOC12 (localization) and VOC12 label maps (semantic).

Layout: ``VOCdevkit/VOC20xx/{JPEGImages,Annotations,ImageSets/Main}`` (boxes) and
``SegmentationClass`` + ``ImageSets/Segmentation`` (label maps).

- ``voc07`` / ``voc12`` — the ``trainval`` split, *all* objects of each XML (the
  ``difficult`` flag is kept in :attr:`Sample.difficult` but every box counts for CorLoc,
  as in LOST and the paper). VOC coordinates are 1-based inclusive pixel indices; the
  boxes are continuous ``xyxy`` pixel coordinates: ``xmin - 1, ymin - 1, xmax, ymax``.
- :func:`load_voc_segmentation` — VOC12 ``SegmentationClass``, ``val``; 255 = ignore.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

from .base import Dataset, Sample

__all__ = [
    "VOC_CLASSES",
    "VOC_YEARS",
    "find_voc_year",
    "load_voc_boxes",
    "load_voc_segmentation",
]

#: The 20 PASCAL VOC classes, background first (index = label of SegmentationClass).
VOC_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip
#: The VOC challenges whose boxes the paper evaluates (Table 1: VOC07 and VOC12 trainval).
VOC_YEARS = (2007, 2012)


def find_voc_year(root: str | os.PathLike, year: int) -> Path:
    """The ``VOC<year>`` folder under ``root``.

    Parameters
    ----------
    root : path
        That folder, the ``VOCdevkit`` folder, a parent of it, or a folder one of whose
        sub-folders holds ``VOCdevkit``.
    year : int

    Returns
    -------
    pathlib.Path
        The first candidate named ``VOC<year>`` that holds ``JPEGImages/``.

    Raises
    ------
    ValueError
        None found (the message says how to download it).
    """
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
    """The image ids of an ``ImageSets`` list (first word of each non-empty line)."""
    if not path.is_file():
        raise ValueError(f"split: the list '{path}' does not exist")
    return [line.split()[0] for line in path.read_text().splitlines() if line.strip()]


def _parse_voc_xml(path: Path) -> tuple[tuple[int, int] | None, np.ndarray, np.ndarray, tuple]:
    """One VOC annotation file.

    Returns
    -------
    image_size : (H, W) or None
        The annotated size (None when missing or not positive).
    boxes : (M, 4) float64
        Continuous ``xyxy`` pixel coordinates.
    difficult : (M,) bool
    classes : tuple of str, length M
    """
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


def load_voc_boxes(root: str | os.PathLike, *, year: int = 2007, split: str = "trainval") -> Dataset:
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
        Named ``voc07`` / ``voc12``, task ``localization``; every object's box
        (``difficult`` ones too, flagged), ``(M, 4) float64`` continuous ``xyxy``.
        Images without an annotation file, or with an unreadable one, are left out (noted).
    """
    if year not in VOC_YEARS:
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


def load_voc_segmentation(root: str | os.PathLike, *, year: int = 2012, split: str = "val") -> Dataset:
    """PASCAL VOC ``SegmentationClass`` label maps (default VOC12 ``val``, 1,449 images).

    Parameters
    ----------
    root : path
        Folder holding ``VOCdevkit/VOC<year>`` (or that folder itself).
    year : int
    split : str
        A list of ``ImageSets/Segmentation`` (``train``, ``val``, ``trainval``).

    Returns
    -------
    Dataset
        Task ``semantic``; each sample's :meth:`Sample.load_labels` gives ``(H, W) uint8``
        palette indices: 0 background, 1..20 :data:`VOC_CLASSES`, 255 the ignored object
        borders. Images without a label map are left out (noted).
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
