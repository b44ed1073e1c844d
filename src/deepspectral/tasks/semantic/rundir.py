"""The run folder of a semantic segmentation: every file and folder name, written once.

``semseg fit`` (:mod:`.fit`), ``load_run`` (:mod:`.predict`) and self-training
(:mod:`deepspectral.tasks.selftrain`) all read and write the folder through this module;
it imports no other module of the package (a leaf, so that it breaks no cycle)::

    run/semseg.json              settings, backbone, class count, per-stage timings
    run/semseg.partial.json      what an interrupted fit measured (only then)
    run/centroids.npy            (K, C) float32 cluster centroids
    run/images.json              one record per image: relative name, file, label PNG
    run/segments/<name>.npz      per-image segments + features (the resumable cache)
    run/labels/<name>.png        indexed PNG label maps at the original size (PALETTE)
    run/clusters.jpg             sample crops per cluster (paper Fig. 10)
    run/selftrain/checkpoint.pt  self-training state (``semseg train``; resumable)
    run/selftrain/model.pt       the trained network (what ``load_model`` reads)
    run/selftrain/train.json     self-training settings and losses
"""

from __future__ import annotations

import json
import os
from pathlib import Path, PurePath

import numpy as np

__all__ = [
    "RUN_FILE",
    "PARTIAL_FILE",
    "CENTROIDS_FILE",
    "IMAGES_FILE",
    "SEGMENTS_DIR",
    "LABELS_DIR",
    "FIGURE_FILE",
    "MODEL_DIR",
    "MODEL_FILE",
    "CHECKPOINT_FILE",
    "LOG_FILE",
    "FORMAT_VERSION",
    "PALETTE",
    "segments_path",
    "labels_path",
    "model_path",
    "read_run_info",
    "read_images",
    "save_label_png",
    "voc_palette",
]

#: Settings, class count and timings of the fit (JSON).
RUN_FILE = "semseg.json"
#: What an interrupted fit measured: images computed, seconds per stage, peak memory (JSON).
PARTIAL_FILE = "semseg.partial.json"
#: ``(K, C) float32`` centroids of the dataset-level k-means (``.npy``).
CENTROIDS_FILE = "centroids.npy"
#: One record per labelled image (JSON list).
IMAGES_FILE = "images.json"
#: Per-image segments cache, ``SEGMENTS_DIR/<name>.npz``.
SEGMENTS_DIR = "segments"
#: Label maps, ``LABELS_DIR/<name>.png``.
LABELS_DIR = "labels"
#: Sample crops per cluster.
FIGURE_FILE = "clusters.jpg"
#: Folder of the self-training outputs.
MODEL_DIR = "selftrain"
#: Final self-trained weights and settings (in ``MODEL_DIR``).
MODEL_FILE = "model.pt"
#: Resumable self-training state (in ``MODEL_DIR``).
CHECKPOINT_FILE = "checkpoint.pt"
#: Self-training settings and per-step losses (in ``MODEL_DIR``).
LOG_FILE = "train.json"
#: ``format`` field of ``RUN_FILE``.
FORMAT_VERSION = 1


def segments_path(run_dir: str | os.PathLike, relative: PurePath) -> Path:
    """``run_dir/segments/<relative>.npz``: the per-image cache of one input image.

    Parameters
    ----------
    run_dir : str or os.PathLike
    relative : pathlib.PurePath
        The image's output name (``InputImage.relative``), sub-folders kept.
    """
    return Path(run_dir).joinpath(SEGMENTS_DIR, *relative.parts[:-1], relative.name + ".npz")


def labels_path(run_dir: str | os.PathLike, relative: PurePath) -> Path:
    """``run_dir/labels/<relative>.png``: the label map of one input image."""
    return Path(run_dir).joinpath(LABELS_DIR, *relative.parts[:-1], relative.name + ".png")


def model_path(run_dir: str | os.PathLike) -> Path:
    """``run_dir/selftrain/model.pt``: the self-trained network (present once trained)."""
    return Path(run_dir) / MODEL_DIR / MODEL_FILE


def read_run_info(run_dir: str | os.PathLike) -> dict:
    """The contents of ``run_dir/semseg.json`` (``settings``, ``n_labels``, ...).

    Raises
    ------
    FileNotFoundError
        The folder has no ``semseg.json`` (it was not written by ``semseg fit``).
    """
    path = Path(run_dir) / RUN_FILE
    if not path.is_file():
        raise FileNotFoundError(f"run_dir: '{run_dir}' has no {RUN_FILE}; create it with `deepspectral semseg fit`")
    return json.loads(path.read_text(encoding="utf-8"))


def read_images(run_dir: str | os.PathLike) -> list[dict]:
    """Records of ``images.json``: ``image`` (name), ``file`` (absolute path of the input),
    ``labels`` (label PNG relative to the run), ``segments`` (segment features)."""
    return json.loads((Path(run_dir) / IMAGES_FILE).read_text(encoding="utf-8"))


def voc_palette(n: int = 256) -> np.ndarray:
    """The PASCAL VOC colour palette, ``(n, 3) uint8`` (0 black, 1 dark red, 2 green, ...,
    255 the "void" cream colour, as in VOC's own PNGs).

    Colour ``i`` spreads the bits of ``i`` over the channels, three at a time, from the
    most significant bit of each channel down (``VOClabelcolormap.m`` of the VOC devkit).
    """
    palette = np.zeros((n, 3), dtype=np.uint8)
    for index in range(n):
        value, r, g, b = index, 0, 0, 0
        for bit in range(8):
            r |= ((value >> 0) & 1) << (7 - bit)
            g |= ((value >> 1) & 1) << (7 - bit)
            b |= ((value >> 2) & 1) << (7 - bit)
            value >>= 3
        palette[index] = (r, g, b)
    return palette


#: Fixed palette of the label PNGs, ``(256, 3) uint8``: label 0 (background) black,
#: labels 1..K the VOC colours.
PALETTE = voc_palette()


def save_label_png(path: str | os.PathLike, labels: np.ndarray) -> Path:
    """Write a label map as an indexed ("P" mode) PNG with :data:`PALETTE`, atomically.

    Parameters
    ----------
    path : str or os.PathLike
    labels : (H, W) uint8

    Returns
    -------
    pathlib.Path
        ``path``. Reading it back with PIL gives the labels (``np.asarray(Image.open(p))``).
    """
    from PIL import Image

    from ...files import atomic_write

    labels = np.asarray(labels)
    if labels.ndim != 2 or labels.dtype != np.uint8:
        raise ValueError(f"labels: expected an (H, W) uint8 array, got {labels.shape} {labels.dtype}")
    image = Image.frombytes("P", (labels.shape[1], labels.shape[0]), np.ascontiguousarray(labels).tobytes())
    image.putpalette(PALETTE.ravel().tolist())
    return atomic_write(path, lambda handle: image.save(handle, format="PNG"))
