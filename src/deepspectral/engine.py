"""One engine for every dataset run: decode → features → cache → per-image work → outputs.

Every command that processes many images (``eigs``, ``localize``, ``segment``, ``matte``,
``semseg fit``, ``eval``) runs on this module:

- :func:`run_batch` walks the items with a progress bar and calls the per-image work;
  a per-image failure (:data:`deepspectral.errors.PER_IMAGE_ERRORS`) is recorded and
  skipped, a :class:`~deepspectral.errors.SetupError` stops the run; the failures are
  written to ``OUT/errors.json`` and the run ends with a :class:`RunSummary`.
- :class:`Engine` (a loaded backbone + the decomposition settings + the cache) turns items
  into :class:`ImageResult` objects — decoded image, features, decomposition — in input
  order: features are extracted in batches (``batch_size``; images bucketed by size, so
  padding never changes a result); the eigen-step of one batch runs in ``workers``
  threads while the backbone works on the next (numpy / scipy / numba release the GIL);
  with a :class:`~deepspectral.store.Store`, features and decompositions are cached under
  a key of the decoded pixels and every setting that changes them, so a killed run
  resumes where it stopped and an ``eval`` reuses what ``localize`` cached.
- :meth:`Engine.process` is the two together: ``work(result)`` is called for each
  result under :func:`run_batch`'s error policy.

An item is anything with a ``name`` (for messages) and ``load_image()`` (the decoded
``(H, W, 3) uint8`` image): :class:`deepspectral.data.images.InputImage` and the dataset
samples (:class:`deepspectral.data.datasets.Sample`) are items.
"""

from __future__ import annotations

import contextlib
import copy
import sys
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Protocol

import numpy as np

from . import defaults
from .errors import FATAL_ERRORS, PER_IMAGE_ERRORS, describe_error
from .features import PatchFeatures
from .files import (
    atomic_write_json,
    check_writable_folder,
    file_digest,
    recording_writes,
    remove_files,
    remove_stale_temp_files,
)
from .geometry import ImageGeometry
from .recipes import get_recipe
from .spectral import (
    Decomposition,
    check_decomposition_settings,
    check_grid_size,
    decompose,
    resolve_eigen_backend,
    single_threaded_blas,
)
from .store import Store, cache_key, image_digest

__all__ = [
    "Item",
    "ImageResult",
    "RunSummary",
    "Engine",
    "run_batch",
    "estimate_cache_bytes",
    "default_cache_dir",
    "ERRORS_FILE",
]

#: Name of the file listing the images that failed, in the output folder.
ERRORS_FILE = "errors.json"
#: Bytes of one cache entry besides its arrays (zip headers, JSON metadata), rounded up.
_ENTRY_OVERHEAD_BYTES = 4096


class Item(Protocol):
    """What the engine needs of one image to process."""

    name: str

    def load_image(self) -> np.ndarray: ...


# ---------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------


@dataclass
class RunSummary:
    """What a batch did.

    Attributes
    ----------
    done, failed : int
        Images processed successfully / that raised a per-image error.
    skipped : int
        Images left out because their outputs were already there (a resumed run).
    seconds : float
        Wall-clock time of the whole batch.
    errors : list of dict
        ``{"image": name, "error": "Type: message"}`` for every failed image, in input order
        (``"path"`` too for image files).
    errors_file : pathlib.Path or None
        Where ``errors`` were written (``None`` when nothing failed, no folder was given, or
        the file could not be written: then the failures were printed).
    """

    done: int = 0
    failed: int = 0
    skipped: int = 0
    seconds: float = 0.0
    errors: list = field(default_factory=list)
    errors_file: Path | None = None

    @property
    def total(self) -> int:
        return self.done + self.failed

    @property
    def seconds_per_image(self) -> float:
        return self.seconds / self.total if self.total else 0.0

    @property
    def ok(self) -> bool:
        return self.failed == 0

    def line(self, desc: str = "") -> str:
        """One-line summary, e.g. ``segment: 10 images done, 1 failed, 0.42 s per image``."""
        prefix = f"{desc}: " if desc else ""
        text = f"{prefix}{self.done} image{'s' if self.done != 1 else ''} done, {self.failed} failed, "
        if self.skipped:
            text += f"{self.skipped} already done (skipped), "
        text += f"{self.seconds_per_image:.2f} s per image"
        if self.errors_file is not None:
            text += f" (failures listed in {self.errors_file})"
        return text


def _error_record(item, error: BaseException) -> dict:
    record = {"image": str(getattr(item, "name", item)), "error": describe_error(error)}
    path = getattr(item, "path", None)
    if path is not None:
        record["path"] = str(path)
    return record


def run_batch(
    items: Iterable,
    work: Callable,
    *,
    out_dir=None,
    desc: str,
    verbose: bool = True,
    total: int | None = None,
    skipped: int = 0,
) -> RunSummary:
    """Call ``work(item)`` on every item with a progress bar; survive bad images.

    Parameters
    ----------
    items : iterable
        Anything; ``item.name`` (or ``str(item)``) names it in messages, ``item.path`` (if
        any) is recorded too. May be a generator (give ``total`` for the progress bar).
    work : callable
        Processes one item (and writes its outputs); its return value is ignored.
    out_dir : path, optional
        Output folder: created if missing and checked to be writable first (``OSError``
        otherwise); temporary files left there by a killed run are removed;
        ``errors.json`` is written there (atomically) when an image failed, and an
        ``errors.json`` left by an earlier run is removed when none did.
    desc : str
        Label of the progress bar and of the summary line.
    verbose : bool
        Show the progress bar (on a terminal) and print failures and the summary line.
    total : int, optional
        Number of items (default: ``len(items)`` when it has one).
    skipped : int, default 0
        Images the caller left out because they were done (reported in the summary).

    Returns
    -------
    RunSummary

    Notes
    -----
    Per-image errors (:data:`deepspectral.errors.PER_IMAGE_ERRORS`, e.g. a disk that
    fills up) are caught, reported and skipped, and the files ``work`` wrote for that
    image before failing are removed, so a failed image never leaves partial outputs.
    :data:`deepspectral.errors.FATAL_ERRORS` (the weights cannot be had, a missing
    optional dependency) stop the batch, as do ``KeyboardInterrupt`` and unexpected
    exceptions (bugs). When ``errors.json`` cannot be written (a full disk), the failures
    are printed instead and ``errors_file`` stays None.
    """
    from tqdm.auto import tqdm

    if out_dir is not None:
        out_dir = check_writable_folder(out_dir)
        remove_stale_temp_files(out_dir)
    if total is None and hasattr(items, "__len__"):
        total = len(items)
    summary = RunSummary(skipped=skipped)
    start = time.perf_counter()
    progress = tqdm(items, desc=desc, unit="img", total=total, disable=(not verbose) or None, file=sys.stderr, dynamic_ncols=True)
    try:
        for item in progress:
            with recording_writes() as written:
                try:
                    work(item)
                except FATAL_ERRORS:
                    raise
                except PER_IMAGE_ERRORS as error:
                    remove_files(written)
                    summary.failed += 1
                    record = _error_record(item, error)
                    summary.errors.append(record)
                    if verbose:
                        progress.write(f"{desc}: failed on {record.get('path', record['image'])}: {record['error']}", file=sys.stderr)
                else:
                    summary.done += 1
    finally:
        progress.close()
        summary.seconds = time.perf_counter() - start
    if out_dir is not None:
        _write_errors_file(summary, out_dir / ERRORS_FILE, desc=desc)
    if verbose:
        print(summary.line(desc), flush=True)
    return summary


def _write_errors_file(summary: RunSummary, path: Path, *, desc: str) -> None:
    try:
        if summary.errors:
            atomic_write_json(path, summary.errors)
            summary.errors_file = path
        else:
            path.unlink(missing_ok=True)
    except OSError as error:  # e.g. the disk is full: say what failed where the user sees it
        print(f"{desc}: cannot write {path}: {describe_error(error)}", file=sys.stderr)
        for record in summary.errors:
            print(f"{desc}: failed on {record.get('path', record['image'])}: {record['error']}", file=sys.stderr)


# ---------------------------------------------------------------------------------------
# Images → features → decompositions
# ---------------------------------------------------------------------------------------


@dataclass
class ImageResult:
    """What the engine produced for one item (``error`` set when it failed).

    Attributes
    ----------
    item : Item
        The item this result belongs to.
    image : (H, W, 3) uint8 or None
        The decoded image.
    features : PatchFeatures or None
        Its features (from the cache or the backbone; None when the decomposition came
        from the cache, unless the engine keeps features).
    decomposition : Decomposition or None
        Its decomposition (None when the engine was asked for features only).
    seconds : dict
        Time spent per stage on this image (``load``, ``features``, ``eigenvectors``); a
        stage read from the cache is absent.
    backbone : object or None
        For ``work`` that runs the backbone again (``semseg fit``'s segment crops): the
        engine's backbone, set by :meth:`Engine.process` (on a Ray cluster, with
        ``uses_backbone``: the backbone actor's, :mod:`deepspectral.engine_ray`). None
        elsewhere.
    """

    item: object
    image: np.ndarray | None = None
    features: PatchFeatures | None = None
    decomposition: Decomposition | None = None
    error: BaseException | None = None
    seconds: dict = field(default_factory=dict)
    backbone: object = field(default=None, repr=False, compare=False)

    @property
    def name(self) -> str:
        """The item's name (for messages)."""
        return str(getattr(self.item, "name", self.item))

    @property
    def path(self):
        """The item's file, if it has one."""
        return getattr(self.item, "path", None)

    def check(self) -> "ImageResult":
        """Return ``self``, or raise the error this image met."""
        if self.error is not None:
            raise self.error
        return self


class Engine:
    """A loaded backbone plus the decomposition settings, applied to many images.

    Parameters
    ----------
    backbone : deepspectral.Backbone
        Or any source of features with ``extract(image, max_size=...)`` (and
        ``extract_batch`` for ``batch_size > 1``; ``name``, ``weights``, ``block``,
        ``feature``, ``precision`` with a ``store``).
    max_size : int or None
        Longest side used for the features and the decomposition (None: no limit).
    knn_lambda, n_eigenvectors, knn_kernel
        As in :func:`deepspectral.decompose` (the ``"dsm"`` recipe's parameters).
    method : str, default "dsm"
        The recipe (:data:`deepspectral.recipes.METHODS`): ``"dsm"`` (the paper's) or
        ``"tokencut"``.
    method_params : dict, optional
        Parameters of a recipe other than ``"dsm"`` (TokenCut: ``tau``, ``eps``); their
        defaults otherwise.
    use : {"boxes", "masks"}, default "boxes"
        What the decompositions are for: picks the recipe's ``fit`` of the image to the
        patch grid (TokenCut pads for boxes, resizes for masks; the paper crops for both).
    decompose : bool, default True
        Compute the decomposition (False: features only, e.g. for methods that cluster
        the patches themselves).
    keep_features : bool, default False
        Also return the features of an image whose decomposition came from the cache
        (otherwise ``features`` is None then).
    store : Store, optional
        Cache of features and decompositions.
    batch_size : int, default 1
        Images per backbone forward pass.
    workers : int, default 1
        Threads running the eigen-step; with 2 or more it overlaps the backbone's work on
        the next batch.
    eigen_backend : {"auto", "cpu", "torch"}, default "auto"
        Where the eigen-step runs (see :func:`deepspectral.decompose`): ``"torch"`` runs
        it on the backbone's device, each backbone batch's images of one size together;
        ``"auto"`` is torch when the backbone is on a CUDA device.
    """

    def __init__(
        self,
        backbone,
        *,
        max_size: int | None = defaults.MAX_SIZE,
        knn_lambda: float = defaults.KNN_LAMBDA,
        n_eigenvectors: int = defaults.N_EIGENVECTORS,
        knn_kernel: str = defaults.KNN_KERNEL,
        decompose: bool = True,
        keep_features: bool = False,
        store: Store | None = None,
        batch_size: int = defaults.BATCH_SIZE,
        workers: int = defaults.WORKERS,
        eigen_backend: str = defaults.EIGEN_BACKEND,
        method: str = defaults.METHOD,
        method_params: dict | None = None,
        use: str = "boxes",
    ) -> None:
        self.recipe = get_recipe(method)
        self.fit = self.recipe.fit_for(use)
        if method == defaults.METHOD:
            if method_params:
                raise ValueError(f"method_params: method {method!r} takes knn_lambda, n_eigenvectors, knn_kernel instead, got {method_params!r}")
            self.method_params: dict = {}
        else:
            self.method_params = self.recipe.resolve(method_params)
        if batch_size < 1:
            raise ValueError(f"batch_size: expected an integer >= 1, got {batch_size!r}")
        if workers < 1:
            raise ValueError(f"workers: expected an integer >= 1, got {workers!r}")
        check_decomposition_settings(knn_lambda=knn_lambda, n_eigenvectors=n_eigenvectors, knn_kernel=knn_kernel)
        self.backbone = backbone
        self.max_size = max_size
        self.knn_lambda = float(knn_lambda)
        self.n_eigenvectors = int(n_eigenvectors)
        self.knn_kernel = knn_kernel
        self.decompose = bool(decompose)
        self.keep_features = bool(keep_features)
        self.store = store
        self.batch_size = int(batch_size)
        self.workers = int(workers)
        self.requested_eigen_backend = eigen_backend  # as given ("auto" decided per backbone)
        self.eigen_device = str(getattr(backbone, "device", "cpu"))
        self.eigen_backend = resolve_eigen_backend(eigen_backend, self.eigen_device)
        self._weights_id: str | None = None

    def with_backbone(self, backbone) -> "Engine":
        """A copy of this engine around ``backbone`` (e.g. a Ray actor's, on its own GPU),
        the eigen-step's device and backend decided again for it: ``"auto"`` is torch on a
        GPU actor even when the driver's backbone is on the CPU."""
        engine = copy.copy(self)
        engine.backbone = backbone
        engine.eigen_device = str(getattr(backbone, "device", "cpu"))
        engine.eigen_backend = resolve_eigen_backend(self.requested_eigen_backend, engine.eigen_device)
        return engine

    # ------------------------------------------------------------------ settings
    def feature_settings(self) -> dict:
        """Every setting that changes the features (part of their cache key)."""
        if self._weights_id is None:
            weights = getattr(self.backbone, "weights", None)
            self._weights_id = f"sha256:{file_digest(weights)}" if weights else "hub"
        settings = {
            "backbone": self.backbone.name,
            "weights": self._weights_id,
            "block": self.backbone.block,
            "feature": self.backbone.feature,
            "precision": self.backbone.precision,
            "max_size": self.max_size,
        }
        if self.fit != "crop":  # (absent for the paper's crop: its cache keys stay as they were)
            settings["fit"] = self.fit
        return settings

    def decomposition_settings(self) -> dict:
        """Every setting that changes the decomposition (part of its cache key)."""
        # cpu entries keep their keys; a torch result (equal to tolerance, not to the bit)
        # gets its own, so a cache never mixes the two
        backend = {"eigen_backend": "torch"} if self.eigen_backend == "torch" else {}
        if self.recipe.name != defaults.METHOD:
            return {**self.feature_settings(), "method": self.recipe.name, **self.method_params, **backend}
        return {
            **self.feature_settings(),
            "knn_lambda": self.knn_lambda,
            "n_eigenvectors": self.n_eigenvectors,
            "knn_kernel": self.knn_kernel,
            **backend,
        }

    # ------------------------------------------------------------------ running
    def process(
        self,
        items: Iterable,
        work: Callable[[ImageResult], object],
        *,
        out_dir=None,
        desc: str,
        verbose: bool = True,
        skip: Callable[[Item], bool] | None = None,
        collect: Callable[[object, object], None] | None = None,
        uses_backbone: bool = False,
    ) -> RunSummary:
        """Run ``work(result)`` on the :class:`ImageResult` of every item, under
        :func:`run_batch`'s error policy (an image whose decoding, features or
        decomposition failed counts as failed without calling ``work``). Items for which
        ``skip(item)`` is true (their outputs exist: a resumed run) are not processed and
        are counted in ``RunSummary.skipped``.

        ``work`` writes the image's outputs and may return a small JSON-able record;
        ``collect(item, record)``, when given, is called with it on the calling process,
        in input order, for every image whose ``work`` succeeded. Commands that gather
        records (``localize``'s boxes) do it there rather than in ``work``, so that
        ``work`` can run elsewhere (:class:`deepspectral.engine_ray.RayEngine` runs it in
        Ray tasks). Work that runs the backbone again (``result.backbone``) says so with
        ``uses_backbone`` (here it changes nothing; on Ray it runs where the backbone is)."""
        items = list(items)
        todo = [item for item in items if not skip(item)] if skip is not None else items
        results = self.run(todo)

        def step(result: ImageResult) -> None:
            result.backbone = self.backbone
            record = work(result.check())
            if collect is not None:
                collect(result.item, record)

        try:
            return run_batch(
                results, step, out_dir=out_dir, desc=desc, verbose=verbose, total=len(todo), skipped=len(items) - len(todo)
            )
        finally:
            results.close()

    def run(self, items: Iterable) -> Iterator[ImageResult]:
        """Yield one :class:`ImageResult` per item, in order."""
        items = list(items)
        pool = ThreadPoolExecutor(max_workers=self.workers) if self.workers > 1 else None
        pending: deque[tuple[ImageResult, Future | None]] = deque()
        # with several eigen-steps at once, each gets one BLAS thread, for the whole run
        # (see single_threaded_blas); alone, the eigensolver uses every core
        blas = single_threaded_blas() if pool is not None else contextlib.nullcontext()
        blas.__enter__()
        try:
            for start in range(0, len(items), self.batch_size):
                chunk = self._prepare(items[start : start + self.batch_size])
                futures: dict[int, Future] = {}
                together = []  # the torch backend's batch: (result, decomposition key)
                for result, eig_key in chunk:
                    if result.error is not None or not self._needs_decomposition(result):
                        continue
                    if self.eigen_backend == "torch":
                        together.append((result, eig_key))
                    elif pool is None:
                        self._decompose(result, eig_key)
                    else:
                        futures[id(result)] = pool.submit(self._decompose, result, eig_key)
                if together and pool is None:
                    self._decompose_together(together)
                elif together:
                    future = pool.submit(self._decompose_together, together)
                    futures.update((id(result), future) for result, _ in together)
                chunk = [result for result, _ in chunk]
                pending.extend((result, futures.get(id(result))) for result in chunk)
                # yield in order what is ready; the previous batch must be done before the
                # backbone moves on, so at most two batches are in flight
                while pending and (len(pending) > len(chunk) or _ready(pending[0][1])):
                    yield _finish(*pending.popleft())
            while pending:
                yield _finish(*pending.popleft())
        finally:
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)
            blas.__exit__(None, None, None)

    def _prepare(self, items: list) -> list[tuple[ImageResult, str | None]]:
        """One batch up to the eigen-step: decode, cached decomposition, features (cached or
        extracted in one batch). Returns ``(result, decomposition key)`` per item, in order;
        the eigen-step is left to the caller (:meth:`_decompose`, when
        :meth:`_needs_decomposition`)."""
        chunk = [(ImageResult(item), None) for item in items]
        todo = []  # (result, features key, decomposition key) still to compute
        for index, (result, _) in enumerate(chunk):
            try:
                start = time.perf_counter()
                result.image = result.item.load_image()
                result.seconds["load"] = time.perf_counter() - start
                if self.decompose:  # refuse an oversize grid before the backbone runs
                    shape = result.image.shape[:2]
                    geometry = ImageGeometry.for_image(shape, self.backbone.patch_size, self.max_size, fit=self.fit)
                    # the paper's graph lives on the 1/8 working grid, the others' on the patch grid
                    check_grid_size(geometry.grid_size if self.recipe.name == defaults.METHOD else geometry.patch_grid)
                keys = self._keys(result.image)
                chunk[index] = (result, keys[1])
                result.decomposition = self._cached_decomposition(keys[1], result.image)
                if result.decomposition is None or self.keep_features:
                    todo.append((result, *keys))
            except PER_IMAGE_ERRORS as error:
                result.error = error
        for (result, _, _), feats in zip(todo, self._features(todo)):
            if isinstance(feats, BaseException):
                result.error = feats
            else:
                result.features = feats
        return chunk

    def _needs_decomposition(self, result: ImageResult) -> bool:
        return self.decompose and result.decomposition is None

    def _keys(self, image: np.ndarray) -> tuple[str | None, str | None]:
        if self.store is None:
            return None, None
        content = image_digest(image)
        return cache_key(content, self.feature_settings()), cache_key(content, self.decomposition_settings())

    def _cached_decomposition(self, key: str | None, image: np.ndarray) -> Decomposition | None:
        if self.store is None or not self.decompose:
            return None
        cached = self.store.load_decomposition(key)
        if cached is not None and cached.image_size == tuple(image.shape[:2]):
            return cached
        return None

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
        start = time.perf_counter()
        extracted = None
        fit = {} if self.fit == "crop" else {"fit": self.fit}
        if len(images) > 1:
            try:
                extracted = self.backbone.extract_batch(images, max_size=self.max_size, batch_size=self.batch_size, **fit)
            except (ValueError, RuntimeError, MemoryError):  # one image failed: isolate it below
                extracted = None
        if extracted is None:
            extracted = []
            for image in images:
                try:
                    extracted.append(self.backbone.extract(image, max_size=self.max_size, **fit))
                except (ValueError, RuntimeError, MemoryError) as error:
                    extracted.append(error)
        seconds = (time.perf_counter() - start) / len(missing)
        for index, feats in zip(missing, extracted):
            result, feat_key, _ = todo[index]
            if not isinstance(feats, BaseException):
                result.seconds["features"] = seconds
                if self.store is not None:
                    try:
                        self.store.save_features(feat_key, feats)
                    except OSError as error:
                        feats = error
            out[index] = feats
        return out

    def _decompose(self, result: ImageResult, eig_key: str | None) -> None:
        start = time.perf_counter()
        try:
            if self.recipe.name != defaults.METHOD:
                result.decomposition = self.recipe.decompose(result.features, result.image, **self.method_params)
            else:
                result.decomposition = decompose(
                    result.features,
                    result.image,
                    knn_lambda=self.knn_lambda,
                    n_eigenvectors=self.n_eigenvectors,
                    knn_kernel=self.knn_kernel,
                )
            result.seconds["eigenvectors"] = time.perf_counter() - start
            if self.store is not None:
                self.store.save_decomposition(eig_key, result.decomposition)
        except PER_IMAGE_ERRORS as error:
            result.error = error


    def _decompose_together(self, batch: list) -> None:
        """The torch backend: the decompositions of ``batch`` (``(result, key)`` pairs) in
        one call on the backbone's device; when it fails, each image alone, so that only
        the image at fault fails."""
        start = time.perf_counter()
        try:
            if self.recipe.name == "tokencut":
                from .recipes.tokencut_torch import decompose_batch as decompose_tokencut

                found = decompose_tokencut([result.features for result, _ in batch], device=self.eigen_device, **self.method_params)
            else:
                from .eigen_torch import decompose_batch

                found = decompose_batch(
                    [result.features for result, _ in batch], [result.image for result, _ in batch],
                    knn_lambda=self.knn_lambda, n_eigenvectors=self.n_eigenvectors, knn_kernel=self.knn_kernel,
                    device=self.eigen_device,
                )  # fmt: skip
        except PER_IMAGE_ERRORS as error:
            if len(batch) == 1:
                batch[0][0].error = error
            else:
                for pair in batch:
                    self._decompose_together([pair])
            return
        seconds = (time.perf_counter() - start) / len(batch)
        for (result, key), decomposition in zip(batch, found):
            result.decomposition = decomposition
            result.seconds["eigenvectors"] = seconds
            try:
                if self.store is not None:
                    self.store.save_decomposition(key, decomposition)
            except PER_IMAGE_ERRORS as error:
                result.error = error


def _finish(result: ImageResult, future: Future | None) -> ImageResult:
    if future is not None:
        future.result()  # errors are stored on the result itself
    return result


def _ready(future: Future | None) -> bool:
    return future is None or future.done()


# ---------------------------------------------------------------------------------------
# Cache helpers
# ---------------------------------------------------------------------------------------


def estimate_cache_bytes(
    paths: list, *, patch_size: int, embed_dim: int, n_eigenvectors: int, max_size: int | None, sample: int = 32
) -> int:
    """Rough disk use of the cache for ``paths``: float32 features plus float32
    eigenvectors per image, from the sizes of up to ``sample`` image headers."""
    from PIL import Image

    from .geometry import input_size_for, working_grid

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
        patches = (h // patch_size) * (w // patch_size)
        grid = working_grid(((h // patch_size) * patch_size, (w // patch_size) * patch_size))
        per_image.append(patches * embed_dim * 4 + n_eigenvectors * grid[0] * grid[1] * 4 + 2 * _ENTRY_OVERHEAD_BYTES)
    return int(np.mean(per_image) * len(paths)) if per_image else 0


def default_cache_dir(out_dir) -> Path:
    """The cache folder used when none is given: ``OUT/.cache``."""
    return Path(out_dir) / ".cache"
