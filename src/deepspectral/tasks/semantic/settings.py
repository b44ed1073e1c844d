"""Every setting of a semantic-segmentation run and its defaults (saved in ``semseg.json``).

A leaf of the package: the per-image segments (:mod:`.segments`), the fit (:mod:`.fit`) and
prediction (:mod:`.predict`) all read a :class:`SemanticSettings`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass

import numpy as np

from ... import defaults

__all__ = [
    "SemanticSettings",
    "METHODS",
    "BACKGROUND_RULES",
    "SEGMENTS",
    "EIGENVECTORS",
    "CLUSTERS",
    "MAX_CLUSTERS",
    "BOX_EXPANSION_PATCHES",
    "CROP_SIZE",
]

#: Methods: the paper's pipeline and the two baselines of Table 4.
METHODS = ("spectral", "cluster-patch", "cluster-seg")
#: Which segment of an image is background: the largest one (the paper's text, default) or
#: the one with the most cells on the image border (the reference code's rule).
BACKGROUND_RULES = ("largest", "border")
#: Segments per image (k of the per-image k-means; paper Sec. 3.5 + supplement).
SEGMENTS = 15
#: Non-constant eigenvectors the per-image k-means sees (supplement; Table 10 ablates it).
EIGENVECTORS = 15
#: Dataset-level clusters (VOC: 20 object classes; background is its own label).
CLUSTERS = 20
#: Most clusters a run can have: label maps are uint8, 0 is background and 255 is VOC's
#: "void" (ignored by the metrics), which leaves labels 1..254 for clusters.
MAX_CLUSTERS = 254
#: A segment's box is expanded by this many patches on every side before cropping (paper
#: Sec. 3.5 + supplement).
BOX_EXPANSION_PATCHES = 2
#: Crops are resized to this square before the backbone (0: kept as cropped): the input
#: size the ViT backbones were trained at.
CROP_SIZE = 224


@dataclass
class SemanticSettings:
    """Every setting of a semantic-segmentation run (saved in ``semseg.json``).

    Attributes
    ----------
    method : {"spectral", "cluster-patch", "cluster-seg"}
    segments : int
        Segments per image (k of the per-image k-means); an upper bound with
        ``adaptive_segments``.
    adaptive_segments : bool
        Choose each image's number of segments at the largest gap of its eigenvalues
        (between 2 and ``segments``).
    eigenvectors : int
        Non-constant eigenvectors used by the per-image k-means.
    background : {"largest", "border"}
    clusters : int
        K of the dataset-level k-means (1..:data:`MAX_CLUSTERS`).
    seed : int
    expand_patches : int
        Box expansion (patches) around each segment before cropping.
    crop_size : int
        Side of the square crops given to the backbone (0: as cropped).
    max_size : int or None
        Longest image side used for features and eigenvectors.
    knn_lambda : float
        Weight of the colour affinity in the decomposition.
    backbone, weights, block, feature, precision : str, str or None, int, str, str
        The feature source (recorded so that ``predict`` loads the same one, in the same
        arithmetic); ``precision`` is one of ``deepspectral.defaults.PRECISIONS``.
    """

    method: str = "spectral"
    segments: int = SEGMENTS
    adaptive_segments: bool = False
    eigenvectors: int = EIGENVECTORS
    background: str = "largest"
    clusters: int = CLUSTERS
    seed: int = 0
    expand_patches: int = BOX_EXPANSION_PATCHES
    crop_size: int = CROP_SIZE
    max_size: int | None = defaults.MAX_SIZE
    knn_lambda: float = defaults.KNN_LAMBDA
    backbone: str = defaults.BACKBONE
    weights: str | None = None
    block: int = defaults.BLOCK
    feature: str = defaults.FEATURE
    precision: str = defaults.PRECISION

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method: expected one of {METHODS}, got {self.method!r}")
        if self.background not in BACKGROUND_RULES:
            raise ValueError(f"background: expected one of {BACKGROUND_RULES}, got {self.background!r}")
        if self.precision not in defaults.PRECISIONS:
            raise ValueError(f"precision: expected one of {defaults.PRECISIONS}, got {self.precision!r}")
        for name, low in (("segments", 2), ("eigenvectors", 1), ("clusters", 1), ("expand_patches", 0), ("crop_size", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
                raise ValueError(f"{name}: expected an integer >= {low}, got {value!r}")
        if self.clusters > MAX_CLUSTERS:
            raise ValueError(
                f"clusters: at most {MAX_CLUSTERS} (labels are 8-bit, 0 is background, 255 void), got {self.clusters}"
            )
        if self.max_size is not None and (not isinstance(self.max_size, (int, np.integer)) or self.max_size < 1):
            raise ValueError(f"max_size: expected a positive integer or None, got {self.max_size!r}")
        if not np.isfinite(self.knn_lambda) or self.knn_lambda < 0:
            raise ValueError(f"knn_lambda: expected a finite value >= 0, got {self.knn_lambda!r}")

    @property
    def has_background(self) -> bool:
        """Whether label 0 is given to a background segment (only the spectral method)."""
        return self.method == "spectral"

    @property
    def n_labels(self) -> int:
        """Labels in the maps: background 0 + clusters 1..K."""
        return self.clusters + 1

    def segment_key(self) -> str:
        """Digest (16 hex digits) of the settings the per-image segments depend on: all
        of them but K (the seed stays: it seeds the per-image k-means too)."""
        per_image = asdict(self)
        per_image.pop("clusters")
        return hashlib.sha256(json.dumps(per_image, sort_keys=True).encode()).hexdigest()[:16]

    @classmethod
    def from_dict(cls, data: dict) -> "SemanticSettings":
        """Settings from ``semseg.json``'s ``settings``; unknown keys are ignored and
        missing ones take their defaults (a run written before ``precision`` was recorded
        reads as fp32, the default; its ``semseg.json`` does not say what it used)."""
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in known})
