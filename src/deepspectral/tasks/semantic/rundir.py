"""The run folder of a semantic segmentation: every file and folder name, written once.

``semseg fit`` (:mod:`.fit`), ``load_run`` (:mod:`.predict`) and self-training
(:mod:`deepspectral.tasks.selftrain`) all read and write the folder through this module;
it imports no other module of the package (a leaf, so that it breaks no cycle)::

    run/semseg.json              settings, backbone (+ its weights file and SHA-256), class
                                 count, per-stage timings
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
    "read_centroids",
    "weights_record",
    "check_weights_file",
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
#: What to do about a missing or damaged file that ``semseg fit`` writes.
_REFIT = "rerun `deepspectral semseg fit` with the same inputs and settings to write it again (it reuses the segments)"


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
    """The contents of ``run_dir/semseg.json`` (``settings``, ``n_labels``, ``weights``, ...).

    Raises
    ------
    FileNotFoundError
        The folder has no ``semseg.json`` (it was not written by ``semseg fit``, or the fit
        did not finish).
    ValueError
        ``semseg.json`` is not a JSON object with ``settings`` (damaged).
    """
    path = Path(run_dir) / RUN_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"run_dir: '{run_dir}' has no {RUN_FILE}; create it with `deepspectral semseg fit` (an interrupted fit "
            "writes it when rerun with the same inputs and settings)"
        )
    info = _read_json(path)
    if not isinstance(info, dict) or not isinstance(info.get("settings"), dict):
        raise ValueError(f"run_dir: '{path}' holds no run settings; {_REFIT}")
    return info


def read_images(run_dir: str | os.PathLike) -> list[dict]:
    """Records of ``images.json``: ``image`` (name), ``file`` (absolute path of the input),
    ``labels`` (label PNG relative to the run), ``segments`` (segment features)."""
    path = Path(run_dir) / IMAGES_FILE
    if not path.is_file():
        raise FileNotFoundError(f"run_dir: '{run_dir}' has no {IMAGES_FILE}; {_REFIT}")
    records = _read_json(path)
    if not isinstance(records, list):
        raise ValueError(f"run_dir: '{path}' is not a list of image records; {_REFIT}")
    return records


def _read_json(path: Path):
    """A JSON file of the run; a damaged one is a ``ValueError`` naming it and the fix."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as error:
        raise ValueError(f"run_dir: '{path}' is damaged (not UTF-8 text: {error.reason}); {_REFIT}") from None
    except json.JSONDecodeError as error:
        raise ValueError(f"run_dir: '{path}' is damaged (not valid JSON: {error.msg} at line {error.lineno}); "
                         f"{_REFIT}") from None


def read_centroids(run_dir: str | os.PathLike, n_clusters: int | None = None) -> np.ndarray:
    """The ``(K, C) float32`` centroids of ``run_dir/centroids.npy``.

    Parameters
    ----------
    run_dir : str or os.PathLike
    n_clusters : int, optional
        K the run's settings record; the file must have that many rows.

    Raises
    ------
    FileNotFoundError
        There is no ``centroids.npy`` (the fit did not reach its clustering).
    ValueError
        The file is not a readable ``.npy`` array of ``(K, C)`` finite floats; the message
        names the run folder and the fix.
    """
    path = Path(run_dir) / CENTROIDS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"run_dir: '{run_dir}' has no {CENTROIDS_FILE} (the fit did not finish); {_REFIT}")
    try:
        centroids = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as error:
        reason = "empty" if path.stat().st_size == 0 else f"not a .npy array: {type(error).__name__}"
        raise ValueError(f"run_dir: '{path}' is damaged ({reason}); {_REFIT}") from None
    wrong = (
        not isinstance(centroids, np.ndarray) or centroids.ndim != 2 or centroids.shape[0] < 1
        or not np.issubdtype(centroids.dtype, np.floating) or not np.isfinite(centroids).all()
        or (n_clusters is not None and centroids.shape[0] != n_clusters)
    )  # fmt: skip
    if wrong:
        expected = f"({n_clusters}, C)" if n_clusters is not None else "(K, C)"
        raise ValueError(
            f"run_dir: '{path}' is damaged (expected {expected} finite floats, got {centroids.shape} "
            f"{centroids.dtype}); {_REFIT}"
        )
    return centroids.astype(np.float32, copy=False)


def weights_record(weights: str | os.PathLike | None) -> dict | None:
    """What ``semseg.json`` records of the backbone's weights file: ``{"path": absolute
    path, "sha256": hex digest}``; ``None`` for the pretrained (hub) weights."""
    if weights is None:
        return None
    from ...files import file_digest

    path = Path(weights).expanduser().resolve()
    return {"path": str(path), "sha256": file_digest(path)}


def check_weights_file(run_dir: str | os.PathLike, record: dict | None, weights: str | os.PathLike | None, *,
                       given: bool) -> None:
    """Make sure ``weights`` is the weights file the run was fitted with.

    Parameters
    ----------
    run_dir : str or os.PathLike
        The run (named in the messages).
    record : dict or None
        ``semseg.json``'s ``weights`` (see :func:`weights_record`); ``None`` for a run
        fitted with the pretrained weights or written before the digest was recorded
        (then only the file's presence is checked).
    weights : path or None
        The file about to be loaded.
    given : bool
        Whether the caller passed ``weights`` (``--weights`` / ``weights=``) rather than
        taking the recorded path.

    Raises
    ------
    FileNotFoundError
        The recorded file is gone (moved or deleted) and no other was given.
    ValueError
        The file's SHA-256 is not the recorded one: features from it would not live in the
        space of the run's centroids.
    """
    if weights is None:
        return
    path = Path(weights).expanduser()
    how = "--weights FILE on the command line, load_run(..., weights=FILE) in Python"
    if not path.is_file():
        if given:
            raise FileNotFoundError(f"weights: no such file: '{path}'")
        raise FileNotFoundError(
            f"weights: the run '{run_dir}' was fitted with the backbone weights '{path}', which no longer exists "
            f"(moved or deleted); pass its new location ({how})"
        )
    wanted = (record or {}).get("sha256")
    if not wanted:
        return
    from ...files import file_digest

    found = file_digest(path)
    if found != wanted:
        raise ValueError(
            f"weights: '{path}' is not the file the run '{run_dir}' was fitted with (sha256 {found[:12]}..., the run "
            f"records {wanted[:12]}... for '{record.get('path')}'): its features would not match the run's "
            f"centroids; pass the original file ({how}) or fit the run again"
        )


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
