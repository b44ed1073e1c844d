"""Per-image segments of the semantic segmentation and their features.

For ``method="spectral"`` (the paper's)::

    eigenvectors y_1..y_n (n = 15, the constant y_0 dropped) on the 1/8 grid
    -> k-means (k = 15 segments, seeded) -> segments
    -> background = the largest segment (or the one touching the border most)
    -> every other segment: its box expanded by 2 patches, cropped from the image,
       resized to 224 x 224, through the backbone -> CLS feature (L2-normalised)

The baselines of the paper's Table 4 have no background: ``"cluster-patch"`` makes every
patch a segment (its feature the patch feature), ``"cluster-seg"`` runs k-means on the
image's patch features (a segment's feature is their mean).

Once the segments have clusters (:mod:`.clustering`), :func:`label_grid` gives the label
of every grid cell and :meth:`deepspectral.geometry.ImageGeometry.grid_to_image` brings it
to the image's pixels.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, Sequence, runtime_checkable

import numpy as np

from ...features import PatchFeatures
from ...geometry import ImageGeometry
from .clustering import kmeans_points
from .settings import BACKGROUND_RULES, EIGENVECTORS, MAX_CLUSTERS, SEGMENTS, SemanticSettings

if TYPE_CHECKING:  # pragma: no cover
    from ...spectral import Decomposition

__all__ = [
    "FeatureSource",
    "ImageSegments",
    "StageTimer",
    "CROP_BATCH",
    "image_segments",
    "segments_of",
    "spectral_segments",
    "eigengap_segments",
    "background_segment",
    "segment_boxes",
    "label_grid",
]

#: Crops run through the backbone at once.
CROP_BATCH = 16
#: Norms below this count as zero when features are L2-normalised.
_NORM_EPS = 1e-12
#: An eigenvector whose standard deviation on the grid is below this fraction of the
#: largest absolute value is constant (numerically) and left out of the k-means.
_CONSTANT_TOL = 1e-8


@runtime_checkable
class FeatureSource(Protocol):
    """What the pipeline needs from a backbone; :class:`deepspectral.Backbone` is one.

    Tests pass an oracle object with the same three members.
    """

    patch_size: int

    def extract(self, image, *, max_size: int | None = ...) -> PatchFeatures:
        """Patch features ``(h, w, C)`` of one image (see :meth:`Backbone.extract`)."""

    def cls_embeddings(self, images: Sequence, *, max_size: int | None = ...) -> np.ndarray:
        """``(N, C)`` class embeddings of several images (crops)."""


@dataclass
class StageTimer:
    """Wall-clock seconds summed per stage (``features``, ``eigenvectors``, ...)."""

    seconds: dict[str, float] = field(default_factory=dict)

    def add(self, stage: str, start: float) -> float:
        """Add the time since ``start`` (``time.perf_counter()``) to ``stage``; return now."""
        now = time.perf_counter()
        self.seconds[stage] = self.seconds.get(stage, 0.0) + (now - start)
        return now


@dataclass
class ImageSegments:
    """The segments of one image and their features.

    Attributes
    ----------
    segment_map : (h, w) int32
        Segment id of every grid cell (0..S-1).
    background : int
        Id of the background segment, -1 when there is none (the baselines).
    segment_ids : (n,) int32
        Ids of the segments that have a feature (every non-background one).
    features : (n, C) float32
        L2-normalised feature of each segment in ``segment_ids``.
    boxes_xyxy : (n, 4) int32
        Crop box of each of those segments, pixels of the original image (x2, y2 exclusive).
    geometry : ImageGeometry
        Sizes of the image; the segment map covers its crop
        (:meth:`~deepspectral.geometry.ImageGeometry.grid_to_image` maps labels to pixels).
    """

    segment_map: np.ndarray
    background: int
    segment_ids: np.ndarray
    features: np.ndarray
    boxes_xyxy: np.ndarray
    geometry: ImageGeometry

    def save(self, path, *, key: str) -> None:
        """Write to ``path`` (``.npz``, features as float16) atomically; ``key`` (see
        :meth:`SemanticSettings.segment_key`) is stored with the arrays."""
        from ...files import atomic_savez

        atomic_savez(path, dict(
            segment_map=self.segment_map.astype(np.int16),
            background=np.array(self.background, dtype=np.int64),
            segment_ids=self.segment_ids.astype(np.int32),
            features=self.features.astype(np.float16),
            boxes_xyxy=self.boxes_xyxy.astype(np.int32),
            image_size=np.array(self.geometry.image_size, dtype=np.int64),
            input_size=np.array(self.geometry.input_size, dtype=np.int64),
            patch_size=np.array(self.geometry.patch_size, dtype=np.int64),
            key=np.array(key),
        ))

    @classmethod
    def load(cls, path, *, key: str | None = None) -> "ImageSegments | None":
        """Read a file written by :meth:`save`; ``None`` when ``key`` is given and differs."""
        with np.load(path, allow_pickle=False) as data:
            if key is not None and str(data["key"]) != key:
                return None
            return cls(
                segment_map=data["segment_map"].astype(np.int32),
                background=int(data["background"]),
                segment_ids=data["segment_ids"],
                features=data["features"].astype(np.float32),
                boxes_xyxy=data["boxes_xyxy"],
                geometry=ImageGeometry(
                    tuple(int(v) for v in data["image_size"]),
                    tuple(int(v) for v in data["input_size"]),
                    int(data["patch_size"]),
                ),
            )


def _normalise(features: np.ndarray) -> np.ndarray:
    """``(..., C)`` rows scaled to unit L2 norm (zero rows stay zero) -> float32."""
    features = np.asarray(features, dtype=np.float32)
    norms = np.linalg.norm(features, axis=-1, keepdims=True)
    return features / np.maximum(norms, _NORM_EPS)


def _relabel(labels: np.ndarray) -> np.ndarray:
    """Segment ids of an ``(h, w)`` map renumbered 0..S-1 in order of first appearance
    (scan order) -> ``(h, w) int32``."""
    flat = labels.ravel()
    _, first = np.unique(flat, return_index=True)
    order = flat[np.sort(first)]
    lookup = np.empty(int(flat.max()) + 1, dtype=np.int32)
    lookup[order] = np.arange(order.size, dtype=np.int32)
    return lookup[labels]


def eigengap_segments(eigenvalues: np.ndarray, *, max_segments: int) -> int:
    """Number of segments at the largest eigengap.

    ``argmax_k (λ_k - λ_{k-1})`` over ``k = 2..max_segments`` (λ ascending, λ_0 = 0), i.e.
    the count of eigenvalues below the biggest jump, at least 2.

    Parameters
    ----------
    eigenvalues : (n,) float
        Ascending, the constant eigenvector's first.
    max_segments : int

    Returns
    -------
    int
        At least 2 when there are 3 or more eigenvalues and ``max_segments >= 2``.
    """
    values = np.asarray(eigenvalues, dtype=np.float64)
    upper = min(int(max_segments), values.size - 1)
    if upper < 2:
        return max(1, min(int(max_segments), values.size))
    gaps = values[2:upper + 1] - values[1:upper]
    return int(np.argmax(gaps)) + 2


def spectral_segments(
    decomposition, *, n_segments: int = SEGMENTS, n_eigenvectors: int = EIGENVECTORS,
    adaptive: bool = False, seed: int = 0,
) -> np.ndarray:
    """Per-image segments: k-means on the non-constant eigenvectors.

    Parameters
    ----------
    decomposition : Decomposition
        With at least ``n_eigenvectors + 1`` eigenvectors (fewer are used when it has fewer).
    n_segments : int
        k of the k-means (an upper bound with ``adaptive``).
    n_eigenvectors : int
        Eigenvectors ``y_1..y_n`` used; eigenvectors that are constant on the grid are skipped.
    adaptive : bool
        Pick k at the largest eigengap (:func:`eigengap_segments`) and cluster the
        ``k - 1`` eigenvectors below the gap (at most ``n_eigenvectors``).
    seed : int

    Returns
    -------
    (h, w) int32
        Segment ids 0..S-1 (S <= n_segments), numbered in scan order.
    """
    k = n_segments
    if adaptive:  # k clusters from the k - 1 eigenvectors below the gap (spectral clustering)
        k = eigengap_segments(decomposition.eigenvalues, max_segments=n_segments)
        n_eigenvectors = min(n_eigenvectors, k - 1)
    vectors = np.asarray(decomposition.eigenvectors, dtype=np.float64)[1:n_eigenvectors + 1]
    h, w = decomposition.grid_size
    points = vectors.reshape(vectors.shape[0], -1).T
    if points.shape[1]:
        keep = points.std(axis=0) > _CONSTANT_TOL * max(1.0, float(np.abs(points).max()))
        points = points[:, keep]
    if points.shape[1] == 0:
        return np.zeros((h, w), dtype=np.int32)
    labels = kmeans_points(points, k, seed).reshape(h, w)
    return _relabel(labels)


def background_segment(segment_map: np.ndarray, *, rule: str = "largest") -> int:
    """Id of the background segment.

    Parameters
    ----------
    segment_map : (h, w) int
        Segment ids 0..S-1.
    rule : {"largest", "border"}
        ``"largest"``: the segment with the most cells (ties: smaller id). ``"border"``:
        the one with the most cells on the grid's border (ties: the larger segment, then
        smaller id).

    Returns
    -------
    int
    """
    if rule not in BACKGROUND_RULES:
        raise ValueError(f"rule: expected one of {BACKGROUND_RULES}, got {rule!r}")
    segment_map = np.asarray(segment_map)
    count = int(segment_map.max()) + 1
    sizes = np.bincount(segment_map.ravel(), minlength=count)
    if rule == "largest":
        return int(np.argmax(sizes))
    border = np.concatenate([segment_map[0], segment_map[-1], segment_map[:, 0], segment_map[:, -1]])
    on_border = np.bincount(border, minlength=count)
    order = np.lexsort((np.arange(count), -sizes, -on_border))
    return int(order[0])


def segment_boxes(segment_map: np.ndarray, segment_ids: Sequence[int]) -> np.ndarray:
    """Bounding boxes of segments in grid cells.

    Parameters
    ----------
    segment_map : (h, w) int
    segment_ids : sequence of n int
        Ids present in ``segment_map``.

    Returns
    -------
    (n, 4) int64
        ``(x1, y1, x2, y2)`` in grid cells, x2 and y2 exclusive.
    """
    boxes = np.zeros((len(segment_ids), 4), dtype=np.int64)
    for row, sid in enumerate(segment_ids):
        ys, xs = np.nonzero(segment_map == sid)
        boxes[row] = (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
    return boxes


def _square_crops(image: np.ndarray, boxes: np.ndarray, size: int, min_side: int) -> list[np.ndarray]:
    """Crops of an ``(H, W, 3) uint8`` image at ``(n, 4)`` boxes, each resized to
    ``(size, size, 3)`` (``size`` 0: as cropped, but no side below ``min_side``)."""
    from PIL import Image

    crops = []
    for x1, y1, x2, y2 in boxes:
        crop = image[y1:y2, x1:x2]
        if size:
            crop = np.asarray(Image.fromarray(crop).resize((size, size), Image.Resampling.BILINEAR))
        elif min(crop.shape[:2]) < min_side:  # never smaller than one patch
            scale = min_side / min(crop.shape[:2])
            new = (max(min_side, round(crop.shape[1] * scale)), max(min_side, round(crop.shape[0] * scale)))
            crop = np.asarray(Image.fromarray(crop).resize(new, Image.Resampling.BILINEAR))
        crops.append(np.ascontiguousarray(crop))
    return crops


def image_segments(image, source: FeatureSource, settings: SemanticSettings, *, timer: StageTimer | None = None) -> ImageSegments:
    """Segments of one image and their L2-normalised features, by ``settings.method``.

    Parameters
    ----------
    image : (H, W, 3) uint8 or PIL image
    source : FeatureSource
        A :class:`deepspectral.Backbone` or an oracle with the same methods.
    settings : SemanticSettings
    timer : StageTimer, optional
        Adds the seconds of ``features``, ``eigenvectors``, ``segments`` and
        ``crop_features``.

    Returns
    -------
    ImageSegments
    """
    from ...geometry import as_rgb_array
    from ...spectral import decompose

    timer = timer if timer is not None else StageTimer()
    rgb = as_rgb_array(image)
    start = time.perf_counter()
    features = source.extract(rgb, max_size=settings.max_size)
    start = timer.add("features", start)
    decomposition = None
    if settings.method == "spectral":
        decomposition = decompose(features, rgb, knn_lambda=settings.knn_lambda, n_eigenvectors=settings.eigenvectors + 1)
        timer.add("eigenvectors", start)
    return segments_of(rgb, features=features, decomposition=decomposition, source=source, settings=settings, timer=timer)


def segments_of(
    image: np.ndarray,
    *,
    features: PatchFeatures | None,
    decomposition: Decomposition | None,
    source: FeatureSource,
    settings: SemanticSettings,
    timer: StageTimer | None = None,
) -> ImageSegments:
    """The per-image step of :func:`image_segments` once the features (baselines) or the
    decomposition (``spectral``, with ``settings.eigenvectors + 1`` eigenvectors) of
    ``image`` (``(H, W, 3) uint8``) are known; ``source`` gives the crops' CLS features."""
    timer = timer if timer is not None else StageTimer()
    start = time.perf_counter()
    if settings.method == "cluster-patch":
        return _patch_segments(features, timer, start)
    if settings.method == "cluster-seg":
        return _feature_kmeans_segments(features, settings, timer, start)
    return _spectral_image_segments(image, decomposition, source, settings, timer, start)


def _patch_segments(features: PatchFeatures, timer: StageTimer, start: float) -> ImageSegments:
    """``cluster-patch``: every patch is a segment, its feature the patch feature."""
    geometry = features.geometry
    h, w = features.grid_size
    segment_map = np.arange(h * w, dtype=np.int32).reshape(h, w)
    ids = np.arange(h * w, dtype=np.int32)
    boxes = np.stack(np.meshgrid(np.arange(w), np.arange(h)), axis=-1).reshape(-1, 2)
    boxes_out = geometry.grid_boxes_to_image(np.concatenate([boxes, boxes + 1], axis=1), grid_size=(h, w)).astype(np.int32)
    feats = _normalise(features.features.reshape(h * w, -1))
    timer.add("segments", start)
    return ImageSegments(segment_map, -1, ids, feats, boxes_out, geometry)


def _feature_kmeans_segments(features: PatchFeatures, settings: SemanticSettings, timer: StageTimer, start: float) -> ImageSegments:
    """``cluster-seg``: k-means of the image's patch features; a segment's feature is the
    normalised mean of its patches' (normalised) features."""
    geometry = features.geometry
    h, w = features.grid_size
    patch = _normalise(features.features.reshape(h * w, -1))
    segment_map = _relabel(kmeans_points(patch, settings.segments, settings.seed).reshape(h, w))
    ids = np.arange(int(segment_map.max()) + 1, dtype=np.int32)
    flat = segment_map.ravel()
    sums = np.zeros((ids.size, patch.shape[1]))
    np.add.at(sums, flat, patch)
    feats = _normalise(sums / np.bincount(flat, minlength=ids.size)[:, None])
    boxes_out = geometry.grid_boxes_to_image(segment_boxes(segment_map, ids), grid_size=(h, w)).astype(np.int32)
    timer.add("segments", start)
    return ImageSegments(segment_map, -1, ids, feats, boxes_out, geometry)


def _spectral_image_segments(rgb: np.ndarray, decomposition: Decomposition, source: FeatureSource,
                             settings: SemanticSettings, timer: StageTimer, start: float) -> ImageSegments:
    """``spectral`` (the paper's): eigenvector segments, a background, and the CLS feature
    of every other segment's expanded crop."""
    geometry = decomposition.geometry
    segment_map = spectral_segments(
        decomposition, n_segments=settings.segments, n_eigenvectors=settings.eigenvectors,
        adaptive=settings.adaptive_segments, seed=settings.seed,
    )
    background = background_segment(segment_map, rule=settings.background)
    ids = np.array([s for s in range(int(segment_map.max()) + 1) if s != background], dtype=np.int32)
    start = timer.add("segments", start)
    boxes_in = geometry.grid_boxes_to_input(segment_boxes(segment_map, ids), expand=settings.expand_patches * geometry.patch_size)
    boxes_out = geometry.input_boxes_to_image(boxes_in).astype(np.int32)
    if ids.size:
        crops = _square_crops(geometry.input_image(rgb), boxes_in, settings.crop_size, geometry.patch_size)
        cls = np.concatenate([
            np.asarray(source.cls_embeddings(crops[i:i + CROP_BATCH], max_size=None), dtype=np.float32)
            for i in range(0, len(crops), CROP_BATCH)
        ])
        feats = _normalise(cls)
    else:
        feats = np.zeros((0, 1), dtype=np.float32)
    timer.add("crop_features", start)
    return ImageSegments(segment_map, background, ids, feats, boxes_out, geometry)


def label_grid(segments: ImageSegments, clusters: np.ndarray) -> np.ndarray:
    """Label of every grid cell: 0 for the background segment, ``cluster + 1`` otherwise.

    Parameters
    ----------
    segments : ImageSegments
    clusters : (n,) int
        Cluster (0..MAX_CLUSTERS-1) of each segment in ``segments.segment_ids``.

    Returns
    -------
    (h, w) uint8
        Adjacent segments with the same cluster share a label, i.e. they are merged.
    """
    clusters = np.asarray(clusters)
    if clusters.shape != np.shape(segments.segment_ids):
        raise ValueError(
            f"clusters: expected one per segment, shape {np.shape(segments.segment_ids)}, got {clusters.shape}"
        )
    if clusters.size and (clusters.min() < 0 or clusters.max() >= MAX_CLUSTERS):
        raise ValueError(
            f"clusters: expected values in 0..{MAX_CLUSTERS - 1} (labels are uint8, 0 background, "
            f"255 void), got {clusters.min()}..{clusters.max()}"
        )
    lookup = np.zeros(int(segments.segment_map.max()) + 1, dtype=np.uint8)
    lookup[segments.segment_ids] = clusters + 1
    return lookup[segments.segment_map]
