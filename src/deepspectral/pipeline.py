"""Images in, decompositions out, for whole folders: batching, caching, overlap.

:class:`Pipeline` runs the per-image recipe (decode → backbone features → eigen-step)
over many images and yields the results in input order:

- features are extracted in batches (``batch_size``; images bucketed by size, so padding
  never changes a result);
- the eigen-step of one batch runs in ``workers`` threads while the backbone works on the
  next batch (numpy / scipy / numba release the GIL);
- with a :class:`~deepspectral.store.Store`, features (float16) and decompositions are
  cached under a key of the image *content* and every setting that changes them, so a
  killed run resumes where it stopped and recomputes nothing it finished. Features are
  always rounded to float16 when a cache is used, so a resumed run and an uninterrupted
  one produce the same bytes.

A failure of one image (unreadable file, too small, ...) is returned for that image and
never stops the others.
"""

from __future__ import annotations

import contextlib
import os
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from . import defaults
from .spectral import Decomposition, decompose, single_threaded_blas
from .store import Store, cache_key, file_digest

__all__ = ["Pipeline", "ImageResult", "estimate_cache_bytes"]


@dataclass
class ImageResult:
    """What the pipeline produced for one input (``error`` set when it failed)."""

    item: object
    image: np.ndarray | None = None
    decomposition: Decomposition | None = None
    error: BaseException | None = None

    def get(self) -> tuple[np.ndarray, Decomposition]:
        """``(image, decomposition)``, or raise the image's error."""
        if self.error is not None:
            raise self.error
        return self.image, self.decomposition


class Pipeline:
    """A loaded backbone plus the decomposition settings, applied to many images.

    Parameters
    ----------
    backbone : deepspectral.Backbone
    max_size : int or None
        Longest side used for the decomposition (None: no limit).
    knn_lambda, n_eigenvectors, knn_kernel
        As in :func:`deepspectral.decompose`.
    store : Store, optional
        Cache of features and decompositions.
    batch_size : int, default 1
        Images per backbone forward pass.
    workers : int, default 1
        Threads running the eigen-step; with 2 or more it overlaps the backbone's work on
        the next batch.
    """

    def __init__(
        self,
        backbone,
        *,
        max_size: int | None = defaults.MAX_SIZE,
        knn_lambda: float = defaults.KNN_LAMBDA,
        n_eigenvectors: int = defaults.N_EIGENVECTORS,
        knn_kernel: str = defaults.KNN_KERNEL,
        store: Store | None = None,
        batch_size: int = 1,
        workers: int = 1,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size: expected an integer >= 1, got {batch_size!r}")
        if workers < 1:
            raise ValueError(f"workers: expected an integer >= 1, got {workers!r}")
        self.backbone = backbone
        self.max_size = max_size
        self.knn_lambda = float(knn_lambda)
        self.n_eigenvectors = int(n_eigenvectors)
        self.knn_kernel = knn_kernel
        self.store = store
        self.batch_size = batch_size
        self.workers = workers
        self._weights_id: str | None = None

    # ------------------------------------------------------------------ cache keys
    def feature_settings(self) -> dict:
        """Every setting that changes the features (part of their cache key)."""
        if self._weights_id is None:
            weights = getattr(self.backbone, "weights", None)
            self._weights_id = f"sha256:{file_digest(weights)}" if weights else "hub"
        return {
            "backbone": self.backbone.name,
            "weights": self._weights_id,
            "block": self.backbone.block,
            "feature": self.backbone.feature,
            "precision": self.backbone.precision,
            "max_size": self.max_size,
        }

    def decomposition_settings(self) -> dict:
        """Every setting that changes the decomposition (part of its cache key)."""
        return {
            **self.feature_settings(),
            "knn_lambda": self.knn_lambda,
            "n_eigenvectors": self.n_eigenvectors,
            "knn_kernel": self.knn_kernel,
        }

    # ------------------------------------------------------------------ running
    def run(self, items: Iterable) -> Iterator[ImageResult]:
        """Yield one :class:`ImageResult` per input (objects with a ``path``), in order."""
        from .data.images import load_image

        items = list(items)
        pool = ThreadPoolExecutor(max_workers=self.workers) if self.workers > 1 else None
        pending: deque[tuple[ImageResult, Future | None]] = deque()
        # with several eigen-steps at once, each gets one BLAS thread, for the whole run
        # (see single_threaded_blas); alone, the eigensolver uses every core
        blas = single_threaded_blas() if pool is not None else contextlib.nullcontext()
        blas.__enter__()
        try:
            for start in range(0, len(items), self.batch_size):
                chunk = [ImageResult(item) for item in items[start : start + self.batch_size]]
                todo = []  # (result, features key, decomposition key) still to compute
                for result in chunk:
                    try:
                        result.image = load_image(result.item.path)
                        keys = self._keys(result.item.path)
                        cached = self.store.load_decomposition(keys[1]) if self.store else None
                        if cached is not None and cached.image_size == tuple(result.image.shape[:2]):
                            result.decomposition = cached
                        else:
                            todo.append((result, *keys))
                    except Exception as error:  # reported per image by the caller
                        result.error = error
                futures: dict[int, Future] = {}
                for (result, _, eig_key), feats in zip(todo, self._features(todo)):
                    if isinstance(feats, BaseException):
                        result.error = feats
                    elif pool is None:
                        self._decompose(result, feats, eig_key)
                    else:
                        futures[id(result)] = pool.submit(self._decompose, result, feats, eig_key)
                pending.extend((result, futures.get(id(result))) for result in chunk)
                # yield in order what is ready; the previous batch must be done before the
                # backbone moves on, so at most two batches are in flight
                while pending and (len(pending) > len(chunk) or _ready(pending[0][1])):
                    yield self._finish(*pending.popleft())
            while pending:
                yield self._finish(*pending.popleft())
        finally:
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)
            blas.__exit__(None, None, None)

    def _keys(self, path) -> tuple[str | None, str | None]:
        if self.store is None:
            return None, None
        digest = file_digest(path)
        return cache_key(digest, self.feature_settings()), cache_key(digest, self.decomposition_settings())

    def _features(self, todo: list) -> list:
        """Features for each entry of ``todo`` (from the cache, else extracted in one
        batch); an exception object in place of the features of an image that failed."""
        out: list = [None] * len(todo)
        missing = []
        for index, (result, feat_key, _) in enumerate(todo):
            cached = self.store.load_features(feat_key) if self.store else None
            if cached is not None and cached.image_size == tuple(result.image.shape[:2]):
                out[index] = cached
            else:
                missing.append(index)
        if not missing:
            return out
        images = [todo[i][0].image for i in missing]
        try:
            extracted = self.backbone.extract_batch(images, max_size=self.max_size, batch_size=self.batch_size)
        except (ValueError, RuntimeError, MemoryError):  # isolate the image that failed
            extracted = []
            for image in images:
                try:
                    extracted.append(self.backbone.extract(image, max_size=self.max_size))
                except (ValueError, RuntimeError, MemoryError) as error:
                    extracted.append(error)
        for index, feats in zip(missing, extracted):
            if self.store is not None and not isinstance(feats, BaseException):
                feats = self.store.save_features(todo[index][1], feats)
            out[index] = feats
        return out

    def _decompose(self, result: ImageResult, features, eig_key: str | None) -> None:
        try:
            result.decomposition = decompose(
                features,
                result.image,
                knn_lambda=self.knn_lambda,
                n_eigenvectors=self.n_eigenvectors,
                knn_kernel=self.knn_kernel,
            )
            if self.store is not None:
                self.store.save_decomposition(eig_key, result.decomposition)
        except Exception as error:
            result.error = error

    @staticmethod
    def _finish(result: ImageResult, future: Future | None) -> ImageResult:
        if future is not None:
            future.result()  # errors are stored on the result itself
        return result


def _ready(future: Future | None) -> bool:
    return future is None or future.done()


def estimate_cache_bytes(paths: list, *, patch_size: int, embed_dim: int, n_eigenvectors: int, max_size: int | None, sample: int = 32) -> int:
    """Rough disk use of the cache for ``paths``: float16 features plus float32
    eigenvectors per image, from the sizes of up to ``sample`` image headers."""
    from PIL import Image

    from .data.images import input_size_for

    if not paths:
        return 0
    step = max(1, len(paths) // sample)
    per_image = []
    for path in paths[::step][:sample]:
        try:
            with Image.open(path) as handle:
                width, height = handle.size
        except (OSError, ValueError):
            continue
        h, w = input_size_for((height, width), max_size)
        grid = (h // patch_size) * (w // patch_size)
        per_image.append(grid * embed_dim * 2 + n_eigenvectors * (h // 8) * (w // 8) * 4 + 4096)
    return int(np.mean(per_image) * len(paths)) if per_image else 0


def default_cache_dir(out_dir: str | os.PathLike) -> Path:
    """The cache folder used when none is given: ``OUT/.cache``."""
    return Path(out_dir) / ".cache"
