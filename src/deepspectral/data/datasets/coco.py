"""COCO boxes: any COCO-style json (``coco-json``) and COCO20k (``coco20k``).

- ``coco20k`` — COCO ``train2014`` images + ``instances_train2014.json`` restricted to the
  19,817 images of LOST's list (shipped: ``deepspectral/data/coco_20k_filenames.txt``,
  read with :func:`coco20k_filenames`); boxes of all non-crowd instances,
  ``[x, y, x + w, y + h]`` rounded to integers as LOST does.
- ``coco-json`` — any COCO-style json + image folder (``--images DIR --annotations FILE``);
  boxes of all non-crowd instances, not rounded. For segmentation, a sample's mask is its
  largest non-crowd instance (:meth:`Sample.largest_instance_mask`).
"""

from __future__ import annotations

import json
import os
from importlib import resources
from pathlib import Path, PurePosixPath
from typing import Sequence

import numpy as np

from .base import Dataset, Sample

__all__ = [
    "coco20k_filenames",
    "load_coco_boxes",
    "load_coco20k",
]

#: The packaged list: a resource of ``deepspectral.data`` (pyproject's package-data ships
#: ``deepspectral/data/*.txt``).
_COCO20K_PACKAGE = "deepspectral.data"
_COCO20K_LIST = "coco_20k_filenames.txt"


def coco20k_filenames() -> list[str]:
    """The 19,817 COCO train2014 file names of COCO20k, as published by LOST
    (github.com/valeoai/LOST, ``datasets/coco_20k_filenames.txt``, Apache-2.0).

    Returns
    -------
    list of str
        ``train2014/COCO_train2014_<id>.jpg``, in the list's order.
    """
    text = resources.files(_COCO20K_PACKAGE).joinpath(_COCO20K_LIST).read_text()
    return [line.strip() for line in text.splitlines() if line.strip()]


def _read_image_list(path: str | os.PathLike) -> list[str]:
    """Non-empty, non-comment (``#``) lines of a text file, stripped."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"image_list: no such file: '{path}'")
    return [line.strip() for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]


def load_coco_boxes(
    images: str | os.PathLike,
    annotations: str | os.PathLike,
    *,
    image_list: Sequence[str] | str | os.PathLike | None = None,
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
        Task ``localization``, samples sorted by ``file_name``; boxes ``(M, 4) float64``
        continuous ``xyxy`` (``[x, y, x + w, y + h]``), each sample keeps its instances
        (crowd ones too) for :meth:`Sample.largest_instance_mask`. Images with no
        non-crowd instance are left out (noted).
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


def load_coco20k(
    root: str | os.PathLike, *, image_list: Sequence[str] | str | os.PathLike | None = None
) -> Dataset:
    """COCO20k (LOST's 19,817 COCO train2014 images, non-crowd boxes rounded as LOST does).

    Parameters
    ----------
    root : path
        Holds ``train2014/`` (or ``images/train2014/``) and
        ``annotations/instances_train2014.json`` (or ``instances_train2014.json``).
    image_list : sequence of str or path, optional
        Replaces the shipped list (:func:`coco20k_filenames`).

    Returns
    -------
    Dataset
        Named ``coco20k``, as :func:`load_coco_boxes` with ``round_boxes=True``.
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
