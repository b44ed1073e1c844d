"""Resumable on-disk cache of patch features and decompositions.

Layout (readable without this library: plain ``.npz`` files and JSON)::

    CACHE/
      features/<k[:2]>/<k>.npz    features (h, w, C) float16, patch_size, image_size,
                                  input_size, metadata (JSON: backbone, block, feature, ...)
      eigs/<k[:2]>/<k>.npz        as written by Decomposition.save_npz (float32)

``k`` is a SHA-256 key of the image *content*, every setting that changes the result and
:data:`CACHE_FORMAT_VERSION`: change a setting and you get new entries, never a stale hit.
Every file is written to a temporary name and renamed, so a killed run leaves either a
complete entry or none.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from .features import PatchFeatures
from .runner import atomic_savez
from .spectral import Decomposition

__all__ = ["CACHE_FORMAT_VERSION", "Store", "file_digest", "cache_key", "remove_stale_temp_files"]

#: Bump when the meaning or layout of cached files changes.
CACHE_FORMAT_VERSION = 1


def file_digest(path: str | os.PathLike, *, chunk_size: int = 1 << 20) -> str:
    """SHA-256 hex digest of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


def cache_key(content_digest: str, settings: dict) -> str:
    """Key of one cache entry: image content + settings + cache format version."""
    payload = json.dumps(
        {"content": content_digest, "settings": settings, "format": CACHE_FORMAT_VERSION},
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(payload.encode()).hexdigest()


class Store:
    """A cache folder of features and decompositions (see the module docstring).

    Parameters
    ----------
    root : path
        Cache folder, created when missing.
    """

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        remove_stale_temp_files(self.root)

    def _path(self, kind: str, key: str) -> Path:
        return self.root / kind / key[:2] / f"{key}.npz"

    # ----------------------------------------------------------------- features
    def load_features(self, key: str) -> PatchFeatures | None:
        """Cached features (as float32) or ``None``; an unreadable entry counts as missing."""
        path = self._path("features", key)
        if not path.exists():
            return None
        try:
            with np.load(path, allow_pickle=False) as data:
                meta = json.loads(str(data["metadata"]))
                return PatchFeatures(
                    features=data["features"].astype(np.float32),
                    patch_size=int(data["patch_size"]),
                    image_size=tuple(int(v) for v in data["image_size"]),
                    input_size=tuple(int(v) for v in data["input_size"]),
                    backbone=meta["backbone"],
                    block=int(meta["block"]),
                    feature=meta["feature"],
                    cls=data["cls"].astype(np.float32) if "cls" in data.files else None,
                )
        except (OSError, ValueError, KeyError):
            return None

    def save_features(self, key: str, features: PatchFeatures) -> PatchFeatures:
        """Store ``features`` as float16 and return them as they will load back (float16
        rounded), so a run that resumes from the cache computes exactly what an
        uninterrupted run computed."""
        half = features.features.astype(np.float16)
        arrays = {
            "features": half,
            "patch_size": np.array(features.patch_size),
            "image_size": np.array(features.image_size),
            "input_size": np.array(features.input_size),
            "metadata": np.array(
                json.dumps({"backbone": features.backbone, "block": features.block, "feature": features.feature})
            ),
        }
        if features.cls is not None:
            arrays["cls"] = features.cls.astype(np.float16)
        atomic_savez(self._path("features", key), arrays)
        return PatchFeatures(
            features=half.astype(np.float32),
            patch_size=features.patch_size,
            image_size=tuple(features.image_size),
            input_size=tuple(features.input_size),
            backbone=features.backbone,
            block=features.block,
            feature=features.feature,
            cls=None if features.cls is None else features.cls.astype(np.float16).astype(np.float32),
        )

    # ----------------------------------------------------------- decompositions
    def load_decomposition(self, key: str) -> Decomposition | None:
        """Cached decomposition or ``None``; an unreadable entry counts as missing."""
        path = self._path("eigs", key)
        if not path.exists():
            return None
        try:
            return Decomposition.load_npz(path)
        except (OSError, ValueError, KeyError):
            return None

    def save_decomposition(self, key: str, decomposition: Decomposition) -> None:
        """Store a decomposition (atomic)."""
        path = self._path("eigs", key)
        path.parent.mkdir(parents=True, exist_ok=True)
        decomposition.save_npz(path)


def remove_stale_temp_files(folder: str | os.PathLike) -> int:
    """Delete temporary files ``.<name>.<pid>.<token>.tmp`` (see
    :func:`deepspectral.runner.atomic_write`) left under ``folder`` by processes that no
    longer run (a killed run). Returns how many were removed."""
    removed = 0
    for path in Path(folder).rglob(".*.tmp"):
        try:
            pid = int(path.name.rsplit(".", 3)[-3])
        except (ValueError, IndexError):
            continue
        if pid != os.getpid() and not _process_exists(pid):
            path.unlink(missing_ok=True)
            removed += 1
    return removed


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
