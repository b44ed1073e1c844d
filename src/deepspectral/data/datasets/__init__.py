"""Evaluation datasets in the layouts people have on disk, behind one name → loader registry.

Every loader returns a :class:`Dataset`: a name, a task and a list of :class:`Sample`
(an image file plus its ground truth: boxes, a mask file or a label map). Images and
masks are read lazily, one sample at a time, so a bad file fails that sample only.

:func:`load_dataset` looks a name up in :data:`DATASET_REGISTRY`:

=============  ============  ============================================  ================
name           task          needs (optional)                              module
=============  ============  ============================================  ================
``voc07``      localization  ``root``                                      :mod:`.voc`
``voc12``      localization  ``root``                                      :mod:`.voc`
``coco20k``    localization  ``root`` (``image_list``)                     :mod:`.coco`
``coco-json``  localization  ``images``, ``annotations`` (``image_list``)  :mod:`.coco`
``ecssd``      segmentation  ``root``                                      :mod:`.saliency`
``duts-te``    segmentation  ``root``                                      :mod:`.saliency`
``dut-omron``  segmentation  ``root``                                      :mod:`.saliency`
``cub``        segmentation  ``root``                                      :mod:`.cub`
``masks``      segmentation  ``images``, ``masks``                         :mod:`.saliency`
=============  ============  ============================================  ================

Localization boxes are continuous ``xyxy`` pixel coordinates (as in the LOST evaluation);
segmentation masks are binarised at :data:`MASK_THRESHOLD`. Semantic segmentation
(VOC12 ``SegmentationClass``) is read by :func:`load_voc_segmentation`, outside the
registry (``deepspectral eval semseg`` evaluates on VOC12 only).

Modules: :mod:`.base` (samples, datasets, ground-truth readers), :mod:`.voc`,
:mod:`.coco`, :mod:`.saliency` (image folder + mask folder), :mod:`.cub`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import partial
from typing import Callable

from .base import MASK_THRESHOLD, TASKS, Dataset, Sample, polygons_to_mask, read_label_map, read_mask
from .coco import coco20k_filenames, load_coco20k, load_coco_boxes
from .cub import CUB_CROP, load_cub
from .saliency import load_mask_folder, load_saliency
from .voc import VOC_CLASSES, find_voc_year, load_voc_boxes, load_voc_segmentation

__all__ = [
    "Sample",
    "Dataset",
    "DatasetEntry",
    "DATASET_REGISTRY",
    "DATASET_ARGUMENTS",
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

#: The keyword arguments of :func:`load_dataset` a loader can take (the ``eval``
#: command's ``--root``, ``--images``, ``--masks``, ``--annotations``, ``--image-list``).
DATASET_ARGUMENTS = ("root", "images", "masks", "annotations", "image_list")


@dataclass(frozen=True)
class DatasetEntry:
    """How :func:`load_dataset` builds one named dataset.

    Attributes
    ----------
    task : {"localization", "segmentation"}
        What the dataset's ground truth evaluates (one of the tasks of :class:`Dataset`).
    loader : callable
        Called with the ``required`` and ``optional`` arguments as keywords; returns a
        :class:`Dataset`.
    required : tuple of str
        Arguments of :data:`DATASET_ARGUMENTS` that must not be None, in the order they
        are checked.
    optional : tuple of str
        Arguments of :data:`DATASET_ARGUMENTS` passed on as given (None included).
    """

    task: str
    loader: Callable[..., Dataset]
    required: tuple[str, ...]
    optional: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"task: expected one of {', '.join(TASKS)}, got {self.task!r}")
        for arg in self.required + self.optional:
            if arg not in DATASET_ARGUMENTS:
                raise ValueError(f"required/optional: expected names of {', '.join(DATASET_ARGUMENTS)}, got {arg!r}")


#: Name → :class:`DatasetEntry`, localization datasets first (the order of :data:`DATASETS`
#: and of the ``--dataset`` choices).
DATASET_REGISTRY: dict[str, DatasetEntry] = {
    "voc07": DatasetEntry("localization", partial(load_voc_boxes, year=2007), ("root",)),
    "voc12": DatasetEntry("localization", partial(load_voc_boxes, year=2012), ("root",)),
    "coco20k": DatasetEntry("localization", load_coco20k, ("root",), ("image_list",)),
    "coco-json": DatasetEntry("localization", load_coco_boxes, ("images", "annotations"), ("image_list",)),
    "ecssd": DatasetEntry("segmentation", partial(load_saliency, "ecssd"), ("root",)),
    "duts-te": DatasetEntry("segmentation", partial(load_saliency, "duts-te"), ("root",)),
    "dut-omron": DatasetEntry("segmentation", partial(load_saliency, "dut-omron"), ("root",)),
    "cub": DatasetEntry("segmentation", load_cub, ("root",)),
    "masks": DatasetEntry("segmentation", load_mask_folder, ("images", "masks")),
}

#: Names of the datasets with boxes (``eval localization --dataset``).
LOCALIZATION_DATASETS = tuple(name for name, entry in DATASET_REGISTRY.items() if entry.task == "localization")
#: Names of the datasets with one foreground mask per image (``eval segmentation --dataset``).
SEGMENTATION_DATASETS = tuple(name for name, entry in DATASET_REGISTRY.items() if entry.task == "segmentation")
#: Every name :func:`load_dataset` accepts.
DATASETS = LOCALIZATION_DATASETS + SEGMENTATION_DATASETS


def load_dataset(
    name: str,
    *,
    root: str | os.PathLike | None = None,
    images: str | os.PathLike | None = None,
    masks: str | os.PathLike | None = None,
    annotations: str | os.PathLike | None = None,
    image_list: str | os.PathLike | None = None,
) -> Dataset:
    """Load an evaluation dataset by name.

    Parameters
    ----------
    name : str
        One of :data:`DATASETS`: ``voc07``, ``voc12``, ``coco20k`` (need ``root``),
        ``coco-json`` (``images`` + ``annotations``), ``ecssd``, ``duts-te``,
        ``dut-omron``, ``cub`` (``root``), ``masks`` (``images`` + ``masks``).
    root, images, masks, annotations : path, optional
        What the dataset needs (:attr:`DatasetEntry.required`); the others are ignored.
    image_list : path, optional
        Text file of image names to keep (COCO datasets; replaces the COCO20k list).

    Returns
    -------
    Dataset
        Task ``localization`` or ``segmentation`` (:attr:`DatasetEntry.task`).

    Raises
    ------
    ValueError
        ``name`` is not in :data:`DATASETS`, an argument the dataset needs is None, or the
        loader finds no such files (its message says what it looked for).
    """
    if name not in DATASETS:
        raise ValueError(f"dataset: expected one of {', '.join(DATASETS)}, got {name!r}")
    entry = DATASET_REGISTRY[name]
    given = {"root": root, "images": images, "masks": masks, "annotations": annotations, "image_list": image_list}
    for arg in entry.required:
        if given[arg] is None:
            needs = " and ".join(f"--{a.replace('_', '-')}" for a in entry.required)
            raise ValueError(
                f"--{arg.replace('_', '-')}: required with --dataset {name} (which needs {needs}), got None"
            )
    return entry.loader(**{arg: given[arg] for arg in entry.required + entry.optional})
