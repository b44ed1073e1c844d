"""Labelling new images with a fitted run folder: :func:`load_run` -> :class:`SemanticRun`.

``load_run(run_dir).predict(image)`` labels an image consistently with the run: with the
run's backbone (rebuilt with the recorded name, weights, block, feature and precision),
settings and centroids, or with the self-trained network once ``semseg train`` has written
one. The self-training module is imported only when that network is used.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .clustering import assign_clusters
from .rundir import check_weights_file, model_path, read_centroids, read_run_info
from .segments import FeatureSource, ImageSegments, image_segments, label_grid
from .settings import SemanticSettings

__all__ = ["SemanticRun", "load_run", "USES"]

#: What ``predict`` uses: the self-trained network when the run has one (``auto``), the
#: clustering, or the network (an error when there is none).
USES = ("auto", "clusters", "model")


class SemanticRun:
    """A fitted run folder; :meth:`predict` labels new images consistently with it.

    Use :func:`load_run`.

    Attributes
    ----------
    run_dir : pathlib.Path
    settings : SemanticSettings
    centroids : (K, C) float32
    n_labels : int
        K + 1 (label 0 is background).
    device : str
        Where the backbone / the network runs.
    use : {"clusters", "model"}
        What :meth:`predict` uses.
    """

    def __init__(self, run_dir: Path, settings: SemanticSettings, centroids: np.ndarray, *,
                 source: FeatureSource | None = None, device: str = "auto",
                 weights: str | os.PathLike | None = None, use: str = "auto",
                 weights_record: dict | None = None) -> None:
        if use not in USES:
            raise ValueError(f"use: expected one of {USES}, got {use!r}")
        self.run_dir = Path(run_dir)
        self.settings = settings
        self.centroids = centroids
        self.n_labels = settings.n_labels
        self.device = device
        self._weights = weights
        self._weights_record = weights_record
        self._source = source
        self._model = None
        model_file = model_path(self.run_dir)
        if use == "model" and not model_file.is_file():
            raise FileNotFoundError(f"use: 'model' asked but '{model_file}' does not exist; run `deepspectral semseg train` first")
        self.use = ("model" if model_file.is_file() else "clusters") if use == "auto" else use

    def __repr__(self) -> str:
        return f"SemanticRun('{self.run_dir}', method={self.settings.method!r}, K={self.settings.clusters}, use={self.use!r})"

    @property
    def source(self) -> FeatureSource:
        """The feature source: the backbone recorded by ``fit`` (in its precision), loaded
        on first use, unless one was given.

        Raises
        ------
        FileNotFoundError
            The recorded weights file is gone and no other was given.
        ValueError
            The weights file is not the one the run was fitted with (its SHA-256 differs).
        """
        if self._source is None:
            from ...backbones import Backbone

            given = self._weights is not None
            weights = self._weights if given else self.settings.weights
            check_weights_file(self.run_dir, self._weights_record, weights, given=given)
            self._source = Backbone(self.settings.backbone, weights=weights, device=self.device,
                                    block=self.settings.block, feature=self.settings.feature,
                                    precision=self.settings.precision)
        return self._source

    def prepare(self) -> "SemanticRun":
        """Load what :meth:`predict` uses now (the backbone, or the self-trained network)
        rather than at the first image, so that a missing, changed or damaged file is
        reported before any work; returns the run."""
        if self.use == "model":
            self._load_model()
        else:
            self.source
        return self

    def _load_model(self):
        if self._model is None:
            from ..selftrain import load_model  # torch + timm: only when the network is used

            self._model = load_model(self.run_dir, device=self.device)
        return self._model

    def segments(self, image) -> ImageSegments:
        """Segments + features of a new image with the run's settings.

        Parameters
        ----------
        image : (H, W, 3) uint8 or PIL image
        """
        return image_segments(image, self.source, self.settings)

    def predict(self, image) -> np.ndarray:
        """Label map of one image.

        Parameters
        ----------
        image : (H, W, 3) uint8 or PIL image

        Returns
        -------
        (H, W) uint8
            0 = background, 1..K = clusters (the self-trained model's classes, which are
            the same labels, when the run has one and ``use`` allows it).
        """
        if self.use == "model":
            return self._load_model().predict(image)
        segments = self.segments(image)
        grid = label_grid(segments, assign_clusters(segments.features, self.centroids))
        return segments.geometry.grid_to_image(grid).astype(np.uint8)


def load_run(run_dir: str | os.PathLike, *, source: FeatureSource | None = None, device: str = "auto",
             weights: str | os.PathLike | None = None, use: str = "auto") -> SemanticRun:
    """Open a run folder written by :func:`.fit.fit` (``deepspectral semseg fit``).

    Parameters
    ----------
    run_dir : str or os.PathLike
    source : FeatureSource, optional
        Feature source to use instead of the backbone recorded in the run.
    device : str
        Where the backbone / model runs.
    weights : path, optional
        Weights file of the recorded backbone (overrides the recorded path, e.g. when the
        file moved; it must be the same file: its SHA-256 is checked against the record).
    use : {"auto", "clusters", "model"}
        Predict with the self-trained model (``auto``: when one was trained) or with the
        clustering.

    Returns
    -------
    SemanticRun
        The backbone is loaded (and its weights file checked) on first use.

    Raises
    ------
    FileNotFoundError, ValueError
        ``semseg.json`` or ``centroids.npy`` is missing or damaged (the message names the
        run folder and what to do).
    """
    run_dir = Path(run_dir)
    info = read_run_info(run_dir)
    settings = SemanticSettings.from_dict(info["settings"])
    centroids = read_centroids(run_dir, settings.clusters)
    record = info.get("weights") if isinstance(info.get("weights"), dict) else None
    return SemanticRun(run_dir, settings, centroids, source=source, device=device, weights=weights, use=use,
                       weights_record=record)
