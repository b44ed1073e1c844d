"""Files of features and decompositions: the ``.npz`` format and the resumable cache.

A decomposition is written to ``.npz`` by :func:`save_decomposition` (what ``deepspectral
eigs`` writes) and read back by :func:`load_decomposition`. The cache keeps features and
decompositions of every image a run has seen (readable without this library: plain
``.npz`` files and JSON)::

    CACHE/
      features/<k[:2]>/<k>.npz    features (h, w, C) float32, patch_size, image_size,
                                  input_size, metadata (JSON: backbone, block, feature), cls
      eigs/<k[:2]>/<k>.npz        as written by save_decomposition

``k`` is a SHA-256 key of the decoded pixels (:func:`image_digest`), every setting that
changes the result and :data:`CACHE_FORMAT_VERSION`: change a setting and you get new
entries, never a stale hit. Features are stored exactly (float32), so a result computed
from the cache is the result computed without it. Every file is written to a temporary
name and renamed, so a killed run leaves either a complete entry or none.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from ._version import __version__
from .files import atomic_savez, check_writable_folder, remove_stale_temp_files
from .features import PatchFeatures
from .spectral import Decomposition

__all__ = [
    "CACHE_FORMAT_VERSION",
    "Store",
    "cache_key",
    "image_digest",
    "save_decomposition",
    "load_decomposition",
]

#: Bump when the meaning or layout of cached files changes (2: features stored as float32,
#: keys of the decoded pixels; 3: the KNN colour image is the paper's antialiased PIL
#: bilinear resize of the crop, so decompositions cached before differ).
CACHE_FORMAT_VERSION = 3


def image_digest(image: np.ndarray) -> str:
    """Identity of a decoded image for cache keys: SHA-256 of its shape, dtype and pixels.
    The same pixels give the same key whatever file, format or crop they came from."""
    array = np.ascontiguousarray(image)
    digest = hashlib.sha256(f"{array.shape}{array.dtype.str}".encode())
    digest.update(memoryview(array).cast("B"))
    return digest.hexdigest()


def cache_key(content_id: str, settings: dict) -> str:
    """Key of one cache entry: image content + settings + cache format version."""
    payload = json.dumps(
        {"content": content_id, "settings": settings, "format": CACHE_FORMAT_VERSION},
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(payload.encode()).hexdigest()


# ---------------------------------------------------------------------------------------
# The .npz format of a decomposition
# ---------------------------------------------------------------------------------------


def save_decomposition(path: str | os.PathLike, decomposition: Decomposition) -> Path:
    """Write ``decomposition`` to ``path`` (``.npz``), atomically; the same decomposition
    always gives the same bytes.

    Keys: ``eigenvalues`` (K,) float64, ``eigenvectors`` (K, h, w) float32, ``image_size``,
    ``input_size``, ``crop_size`` (2,) int64, ``patch_size`` () int64 and ``metadata`` (a
    JSON string with the settings and the library version).
    """
    metadata = json.dumps({"settings": decomposition.settings, "version": __version__}, sort_keys=True)
    return atomic_savez(
        path,
        {
            "eigenvalues": decomposition.eigenvalues,
            "eigenvectors": decomposition.eigenvectors,
            "image_size": np.array(decomposition.image_size, dtype=np.int64),
            "input_size": np.array(decomposition.input_size, dtype=np.int64),
            "crop_size": np.array(decomposition.crop_size, dtype=np.int64),
            "patch_size": np.array(decomposition.patch_size, dtype=np.int64),
            "metadata": np.array(metadata),
        },
    )


def load_decomposition(path: str | os.PathLike) -> Decomposition:
    """Read a decomposition written by :func:`save_decomposition`."""
    with np.load(path, allow_pickle=False) as data:
        metadata = json.loads(str(data["metadata"]))
        return Decomposition(
            eigenvalues=data["eigenvalues"],
            eigenvectors=data["eigenvectors"],
            image_size=tuple(int(v) for v in data["image_size"]),
            input_size=tuple(int(v) for v in data["input_size"]),
            crop_size=tuple(int(v) for v in data["crop_size"]),
            patch_size=int(data["patch_size"]),
            settings=metadata["settings"],
        )


# ---------------------------------------------------------------------------------------
# The cache
# ---------------------------------------------------------------------------------------


class Store:
    """A cache folder of features and decompositions (see the module docstring).

    Parameters
    ----------
    root : path
        Cache folder, created when missing; temporary files left by killed runs are removed.

    Raises
    ------
    OSError
        When ``root`` cannot be created or written to (a file, a read-only folder).
    """

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = check_writable_folder(root)
        remove_stale_temp_files(self.root)

    def _path(self, kind: str, key: str) -> Path:
        return self.root / kind / key[:2] / f"{key}.npz"

    def load_features(self, key: str) -> PatchFeatures | None:
        """Cached features or ``None``; an unreadable entry counts as missing."""
        path = self._path("features", key)
        if not path.exists():
            return None
        try:
            with np.load(path, allow_pickle=False) as data:
                meta = json.loads(str(data["metadata"]))
                return PatchFeatures(
                    features=data["features"],
                    patch_size=int(data["patch_size"]),
                    image_size=tuple(int(v) for v in data["image_size"]),
                    input_size=tuple(int(v) for v in data["input_size"]),
                    backbone=meta["backbone"],
                    block=int(meta["block"]),
                    feature=meta["feature"],
                    cls=data["cls"] if "cls" in data.files else None,
                )
        except (OSError, ValueError, KeyError):
            return None

    def save_features(self, key: str, features: PatchFeatures) -> None:
        """Store ``features`` exactly as they are (atomic)."""
        arrays = {
            "features": np.asarray(features.features, dtype=np.float32),
            "patch_size": np.array(features.patch_size),
            "image_size": np.array(features.image_size),
            "input_size": np.array(features.input_size),
            "metadata": np.array(
                json.dumps({"backbone": features.backbone, "block": features.block, "feature": features.feature})
            ),
        }
        if features.cls is not None:
            arrays["cls"] = np.asarray(features.cls, dtype=np.float32)
        atomic_savez(self._path("features", key), arrays)

    def load_decomposition(self, key: str) -> Decomposition | None:
        """Cached decomposition or ``None``; an unreadable entry counts as missing."""
        path = self._path("eigs", key)
        if not path.exists():
            return None
        try:
            return load_decomposition(path)
        except (OSError, ValueError, KeyError):
            return None

    def save_decomposition(self, key: str, decomposition: Decomposition) -> None:
        """Store a decomposition (atomic)."""
        save_decomposition(self._path("eigs", key), decomposition)
