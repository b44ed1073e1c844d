"""One loaded backbone serving every task, one request at a time.

:class:`Service` is what the REST API and the web page call; it knows nothing of HTTP.
It holds the backbone and the server's settings, and a queue (a single worker thread):
:meth:`Service.submit` puts a job in the queue and returns a future, so requests use the
model one after another in the order they came, on a GPU as on a CPU, and the memory of
one request's work is freed before the next starts. The task methods
(:meth:`~Service.eigs`, :meth:`~Service.localize`, :meth:`~Service.segment`,
:meth:`~Service.matte`) are the library's pipeline on one image, through the same
:class:`~deepspectral.engine.Engine` as the commands (same fit of the image to the
patch grid per recipe, same size checks); call them inside a job.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from .. import defaults
from .settings import RequestSettings, ServerDefaults, SettingError

__all__ = ["Service", "Photo", "Localized", "Segmented", "Matted", "Discovered"]


@dataclass(frozen=True)
class Photo:
    """An already decoded image as an engine item."""

    name: str
    image: np.ndarray

    def load_image(self) -> np.ndarray:
        return self.image


@dataclass
class Localized:
    """``/api/localize``'s answer: the box (None: no object), its score, the image size
    ``(W, H)`` and the settings used."""

    box_xyxy: list | None
    score: float
    image_size: list
    settings: dict
    seconds: dict = field(default_factory=dict)

    def record(self) -> dict:
        return {"box_xyxy": self.box_xyxy, "image_size": self.image_size, "score": self.score, "settings": self.settings}


@dataclass
class Segmented:
    """A mask ``(H, W) bool`` of the main object, its score and the settings used."""

    mask: np.ndarray
    score: float
    settings: dict
    seconds: dict = field(default_factory=dict)


@dataclass
class Matted:
    """An alpha matte ``(H, W) float32`` in [0, 1] and the picture asked for (the alpha
    as ``(H, W) uint8``, the ``(H, W, 4)`` cut-out or the ``(H, W, 3)`` composite)."""

    alpha: np.ndarray
    picture: np.ndarray
    settings: dict
    seconds: dict = field(default_factory=dict)


@dataclass
class Discovered:
    """The instances (:class:`deepspectral.tasks.discover.Instance`: mask, box, area,
    score) of several objects of one photo, and the settings used."""

    instances: list
    settings: dict
    seconds: dict = field(default_factory=dict)

    def coco(self, file_name: str, size: tuple[int, int]) -> dict:
        """The COCO ``instances.json`` of this photo (``size = (H, W)``)."""
        from ..instances import annotation, coco_instances, image_record

        return coco_instances([image_record(file_name, size, [annotation(i.mask, i.score) for i in self.instances])])


class Service:
    """A loaded backbone, the server's settings and the queue of jobs using them.

    Parameters
    ----------
    backbone : deepspectral.Backbone
        Or any source of features the :class:`~deepspectral.engine.Engine` takes.
    max_size : int or None
        Longest image side used for the features and eigenvectors (None: no limit).
    server_defaults : ServerDefaults, optional
        The settings a request leaves out.
    eigen_backend : {"auto", "cpu", "torch"}
        Where the paper's recipe's eigen-step runs (the other recipes run theirs on the CPU).
    """

    def __init__(
        self,
        backbone,
        *,
        max_size: int | None = defaults.MAX_SIZE,
        server_defaults: ServerDefaults | None = None,
        eigen_backend: str = defaults.EIGEN_BACKEND,
    ) -> None:
        from ..spectral import resolve_eigen_backend

        if max_size is not None and (not isinstance(max_size, int) or max_size < 1):
            raise ValueError(f"max_size: expected a positive integer or None, got {max_size!r}")
        self.backbone = backbone
        self.max_size = max_size
        self.server_defaults = server_defaults or ServerDefaults()
        self.eigen_backend = resolve_eigen_backend(eigen_backend, getattr(backbone, "device", "cpu"))
        self._queue = ThreadPoolExecutor(max_workers=1, thread_name_prefix="deepspectral-model")
        self._count_lock = threading.Lock()
        self._waiting = 0
        self.served = 0

    # ------------------------------------------------------------------ the queue
    def submit(self, job: Callable, /, *args, **kwargs) -> Future:
        """Queue ``job(*args, **kwargs)``; it runs when the jobs before it are done."""
        with self._count_lock:
            self._waiting += 1

        def run():
            try:
                return job(*args, **kwargs)
            finally:
                with self._count_lock:
                    self._waiting -= 1
                    self.served += 1

        return self._queue.submit(run)

    @property
    def queued(self) -> int:
        """Jobs waiting or running."""
        with self._count_lock:
            return self._waiting

    def close(self) -> None:
        """Finish the running job, drop the waiting ones."""
        self._queue.shutdown(wait=True, cancel_futures=True)

    def info(self) -> dict:
        """What ``/api/health`` reports about the model and its settings."""
        from ..crf import check_crf_available

        try:
            check_crf_available()
            crf = True
        except ImportError:
            crf = False
        return {
            "backbone": getattr(self.backbone, "name", type(self.backbone).__name__),
            "device": str(getattr(self.backbone, "device", "cpu")),
            "max_size": self.max_size,
            "eigen_backend": self.eigen_backend,
            "defaults": {
                "method": self.server_defaults.method,
                "knn_lambda": self.server_defaults.knn_lambda,
                "n_eigenvectors": self.server_defaults.n_eigenvectors,
                "tau": self.server_defaults.tau,
                "eps": self.server_defaults.eps,
                "min_score": self.server_defaults.min_score,
            },
            "crf_available": crf,
            "queued": self.queued,
            "served": self.served,
        }

    def warm_up(self) -> float:
        """Run the box, mask and matte of the server's default recipe once on a small
        synthetic photo (loads the compiled kernels, touches every code path), so the
        first request is as fast as the others; returns the seconds it took."""
        from ..crf import check_crf_available
        from .settings import resolve

        start = time.perf_counter()
        rows, cols = np.mgrid[0:96, 0:128]
        image = np.zeros((96, 128, 3), np.uint8)
        image[..., 0] = (rows * 2).astype(np.uint8)
        image[..., 2] = (cols * 2).astype(np.uint8)
        image[32:72, 40:96] = (230, 200, 40)
        self.localize(image, resolve("localize", {}, self.server_defaults))
        segment = resolve("segment", {}, self.server_defaults)
        if segment.refine == "crf":
            try:
                check_crf_available()
            except ImportError:
                segment = resolve("segment", {"refine": "none"}, self.server_defaults)
        self.segment(image, segment)
        self.matte(image, resolve("matte", {}, self.server_defaults))
        return time.perf_counter() - start

    # ------------------------------------------------------------------ the tasks
    def decomposition(self, image: np.ndarray, settings: RequestSettings, *, use: str = "boxes", n_eigenvectors: int | None = None, keep_features: bool = False):
        """The :class:`~deepspectral.engine.ImageResult` (decomposition, and features
        with ``keep_features``) of ``image`` under ``settings``; ``ValueError`` for an
        image the pipeline cannot take (smaller than a patch, a grid too large)."""
        from ..engine import Engine

        dsm = settings.method == defaults.METHOD
        engine = Engine(
            self.backbone,
            max_size=self.max_size,
            knn_lambda=settings.knn_lambda,
            n_eigenvectors=n_eigenvectors or settings.n_eigenvectors,
            keep_features=keep_features,
            eigen_backend=self.eigen_backend if dsm else "cpu",
            method=settings.method,
            method_params=None if dsm else settings.method_params,
            use=use,
        )
        results = engine.run([Photo("upload", image)])
        try:
            return next(results).check()
        finally:
            results.close()

    def eigs(self, image: np.ndarray, settings: RequestSettings):
        """The :class:`~deepspectral.Decomposition` of ``image``."""
        return self.decomposition(image, settings).decomposition

    def localize(self, image: np.ndarray, settings: RequestSettings) -> Localized:
        """The box around the main object and its score."""
        from ..tasks.localize import detect

        start = time.perf_counter()
        result = self.decomposition(image, settings, use="boxes")
        found = detect(result.decomposition, min_score=settings.min_score)
        height, width = image.shape[:2]
        box = None if found.box is None else [int(v) for v in found.box]
        return Localized(box, round(float(found.score), 6), [int(width), int(height)], settings.record(), _seconds(result, start))

    def segment(self, image: np.ndarray, settings: RequestSettings) -> Segmented:
        """The full-resolution mask of the main object and its score."""
        from ..recipes.scores import spectral_score
        from ..tasks.segment import segment_object

        if settings.refine == "crf":
            _check_crf("refine=bilateral or refine=none")
        start = time.perf_counter()
        result = self.decomposition(image, settings, use="masks")
        mask = segment_object(result.decomposition, image, refine=settings.refine, min_score=settings.min_score)
        score = round(float(spectral_score(result.decomposition)), 6)
        return Segmented(np.asarray(mask, dtype=bool), score, settings.record(), _seconds(result, start))

    def matte(self, image: np.ndarray, settings: RequestSettings, background: np.ndarray | None = None) -> Matted:
        """The alpha matte of the main object (the paper's fast mode) and the picture
        ``settings.output`` asks for; ``background`` (a photo) or ``settings.color`` is
        what a composite goes on (:data:`~deepspectral.serve.settings.DEFAULT_COLOR`
        when neither is given)."""
        from ..tasks.matting import GUIDED_RADIUS, composite, cutout_rgba, matte
        from .settings import DEFAULT_COLOR

        start = time.perf_counter()
        n_eigenvectors = max(settings.n_eigenvectors, 2)
        result = self.decomposition(image, settings, n_eigenvectors=n_eigenvectors, keep_features=True)
        found = matte(
            image,
            features=result.features,
            decomposition=result.decomposition,
            mode="fast",
            knn_lambda=settings.knn_lambda,
            n_eigenvectors=n_eigenvectors,
            radius=GUIDED_RADIUS if settings.radius is None else int(settings.radius),
            seed=0,
        )
        alpha = np.clip(found.alpha, 0.0, 1.0).astype(np.float32)
        if settings.output == "alpha":
            picture = np.round(alpha * 255.0).astype(np.uint8)
        elif settings.output == "cutout":
            picture = cutout_rgba(image, alpha, decontaminate=settings.decontaminate)
        else:
            back = background if background is not None else (settings.color or DEFAULT_COLOR)
            picture = composite(image, alpha, back, decontaminate=settings.decontaminate)
        return Matted(alpha, picture, settings.record(), _seconds(result, start))


    def discover(self, image: np.ndarray, settings: RequestSettings) -> Discovered:
        """Several objects of the photo (MaskCut, :func:`deepspectral.tasks.discover.discover`),
        on features made as ``deepspectral discover`` makes them: each side resized to a
        multiple of the patch size, the longest at most ``DISCOVER_MAX_SIZE`` (or the
        server's ``max_size`` when smaller), or MaskCut's ``resize × resize`` square."""
        from ..engine import Engine
        from ..tasks.discover import SquareInput, discover

        if settings.refine == "crf":
            _check_crf("refine=none")
        start = time.perf_counter()
        source = SquareInput(self.backbone, settings.resize) if settings.resize else self.backbone
        limit = defaults.DISCOVER_MAX_SIZE if self.max_size is None else min(self.max_size, defaults.DISCOVER_MAX_SIZE)
        engine = Engine(
            source,
            max_size=None if settings.resize else limit,
            decompose=False,
            keep_features=True,
            method="tokencut",  # its fit for masks: each side resized to a multiple of the patch
            method_params=settings.method_params,
            use="masks",
        )
        results = engine.run([Photo("upload", image)])
        try:
            result = next(results).check()
        finally:
            results.close()
        instances = discover(
            result.features, image, max_objects=settings.max_objects, min_score=settings.min_score,
            refine=settings.refine, **settings.method_params,
        )  # fmt: skip
        return Discovered(instances, settings.record(), _seconds(result, start))


def _check_crf(instead: str) -> None:
    """A :class:`SettingError` naming the extra when the dense CRF is not installed."""
    from ..crf import check_crf_available

    try:
        check_crf_available()
    except ImportError as error:
        raise SettingError(f"refine: {error}; or ask for {instead}") from None


def _seconds(result, start: float) -> dict:
    # (the engine's "load" is nothing here: the photo came decoded)
    seconds = {name: round(value, 4) for name, value in result.seconds.items() if name != "load"}
    seconds["total"] = round(time.perf_counter() - start, 4)
    return seconds
