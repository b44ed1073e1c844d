"""Unsupervised semantic segmentation over a dataset (paper Sec. 3.5 + supplement).

The pipeline (``method="spectral"``, the paper's)::

    per image      eigenvectors y_1..y_n (n = 15, the constant y_0 dropped) on the 1/8 grid
                   -> k-means (k = 15 segments, seeded) -> segments
                   -> background = the largest segment (or the one touching the border most)
                   -> every other segment: its box expanded by 2 patches, cropped from the
                      image, resized to 224 x 224, through the backbone -> CLS feature
    dataset        all segment features L2-normalised -> k-means, K = 20 clusters (seeded;
                   exact k-means on a sample, refined by streamed mini-batch k-means)
    labelling      label 0 = background, label c + 1 = cluster c (never shared); adjacent
                   segments with the same label merge (the label map is per cell)

Baselines of the paper's Table 4: ``method="cluster-patch"`` (every patch feature of the
dataset clustered directly) and ``method="cluster-seg"`` (k-means on each image's patch
features, the mean feature of each segment clustered over the dataset). Both follow the
paper and have no background rule: pass ``clusters=21`` for VOC.

A *run folder* holds everything ``predict`` needs::

    run/semseg.json          settings, backbone, class count, per-stage timings
    run/centroids.npy        (K, C) float32 cluster centroids (unit rows' mean)
    run/images.json          one record per image: relative name, file, label PNG
    run/segments/<name>.npz  per-image segments + features (the streamed cache; resumable)
    run/labels/<name>.png    indexed PNG label maps at the original resolution (palette)
    run/clusters.jpg         a grid of sample crops per cluster (paper Fig. 10)

``load_run(run_dir).predict(image)`` labels a new image consistently with the run (or with
the self-trained model when ``semseg train`` has been run).

scikit-learn (``pip install "deepspectral[semseg]"``) is imported where it is used.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Protocol, Sequence, runtime_checkable

import numpy as np

from .. import defaults
from ..features import PatchFeatures

__all__ = [
    "FeatureSource",
    "SemanticSettings",
    "ImageSegments",
    "SemanticRun",
    "FitResult",
    "METHODS",
    "BACKGROUND_RULES",
    "PALETTE",
    "fit",
    "load_run",
    "image_segments",
    "spectral_segments",
    "background_segment",
    "eigengap_segments",
    "segment_boxes",
    "cluster_features",
    "assign_clusters",
    "label_grid",
    "grid_to_image",
    "save_label_png",
    "voc_palette",
    "cluster_figure",
]

#: Methods: the paper's pipeline and the two baselines of Table 4.
METHODS = ("spectral", "cluster-patch", "cluster-seg")
#: Which segment of an image is background: the largest one (the paper's text, default) or
#: the one with the most cells on the image border (the reference code's rule).
BACKGROUND_RULES = ("largest", "border")
#: Segments per image (k of the per-image k-means).
SEGMENTS = 15
#: Non-constant eigenvectors the per-image k-means sees (Table 10 ablates it).
EIGENVECTORS = 15
#: Dataset-level clusters (VOC: 20 object classes; background is its own label).
CLUSTERS = 20
#: A segment's box is expanded by this many patches on every side before cropping.
BOX_EXPANSION_PATCHES = 2
#: Crops are resized to this square before the backbone (0: kept as cropped).
CROP_SIZE = 224
#: Crops run through the backbone at once.
CROP_BATCH = 16
#: Rows of exact k-means at most; beyond, streamed mini-batch k-means refines it.
SAMPLE_SIZE = 50_000
#: Restarts of the exact k-means (the best inertia is kept).
KMEANS_N_INIT = 4
#: Rows per mini-batch of the streamed refinement.
MINIBATCH_SIZE = 4096
#: Passes of the streamed refinement over the whole dataset.
MINIBATCH_EPOCHS = 2

RUN_FILE = "semseg.json"
CENTROIDS_FILE = "centroids.npy"
IMAGES_FILE = "images.json"
SEGMENTS_DIR = "segments"
LABELS_DIR = "labels"
FIGURE_FILE = "clusters.jpg"
PARTIAL_FILE = "semseg.partial.json"
MODEL_DIR = "selftrain"
FORMAT_VERSION = 1


def _sklearn_cluster():
    try:
        import sklearn.cluster
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError(
            'semantic segmentation needs scikit-learn: pip install "deepspectral[semseg]"'
        ) from error
    return sklearn.cluster


# ---------------------------------------------------------------------------------------
# Palette and label maps
# ---------------------------------------------------------------------------------------


def voc_palette(n: int = 256) -> np.ndarray:
    """The PASCAL VOC colour palette, ``(n, 3) uint8`` (0 black, 1 dark red, 2 green, ...,
    255 is the "void" cream colour as in VOC's own PNGs)."""
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


#: Fixed palette of the label PNGs: label 0 (background) black, labels 1..K the VOC colours.
PALETTE = voc_palette()


def save_label_png(path, labels: np.ndarray) -> Path:
    """Write an ``(H, W) uint8`` label map as an indexed ("P" mode) PNG with :data:`PALETTE`,
    atomically. Reading it back with PIL gives the labels (``np.asarray(Image.open(p))``)."""
    from PIL import Image

    from ..runner import atomic_write

    labels = np.asarray(labels)
    if labels.ndim != 2 or labels.dtype != np.uint8:
        raise ValueError(f"labels: expected an (H, W) uint8 array, got {labels.shape} {labels.dtype}")
    image = Image.frombytes("P", (labels.shape[1], labels.shape[0]), np.ascontiguousarray(labels).tobytes())
    image.putpalette(PALETTE.ravel().tolist())
    return atomic_write(path, lambda handle: image.save(handle, format="PNG"))


def grid_to_image(
    grid: np.ndarray, *, crop_size: tuple[int, int], input_size: tuple[int, int], image_size: tuple[int, int]
) -> np.ndarray:
    """Map a per-cell label grid to pixels of the original image (nearest neighbour).

    Parameters
    ----------
    grid : (h, w) integer array
        Labels on a grid covering the cropped input ``crop_size``.
    crop_size, input_size, image_size : (H, W)
        Cropped input, resized input and original image sizes (see
        :class:`deepspectral.Decomposition`); the dropped bottom rows / right columns take
        the labels of the last row / column.

    Returns
    -------
    (H, W) array of ``grid.dtype`` at ``image_size``.
    """
    from PIL import Image

    from .segment import upsample_grid_mask

    labels = upsample_grid_mask(np.asarray(grid), crop_size, input_size)
    if tuple(input_size) != tuple(image_size):
        resized = Image.fromarray(labels.astype(np.int32)).resize(
            (int(image_size[1]), int(image_size[0])), Image.Resampling.NEAREST
        )
        labels = np.asarray(resized).astype(grid.dtype)
    return labels


# ---------------------------------------------------------------------------------------
# Feature source
# ---------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------
# Settings
# ---------------------------------------------------------------------------------------


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
        K of the dataset-level k-means.
    seed : int
    expand_patches : int
        Box expansion (patches) around each segment before cropping.
    crop_size : int
        Side of the square crops given to the backbone (0: as cropped).
    max_size : int or None
        Longest image side used for features and eigenvectors.
    knn_lambda : float
        Weight of the colour affinity in the decomposition.
    backbone, weights, block, feature : str, str or None, int, str
        The feature source (recorded so ``predict`` loads the same one).
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

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method: expected one of {METHODS}, got {self.method!r}")
        if self.background not in BACKGROUND_RULES:
            raise ValueError(f"background: expected one of {BACKGROUND_RULES}, got {self.background!r}")
        for name, low in (("segments", 2), ("eigenvectors", 1), ("clusters", 1), ("expand_patches", 0), ("crop_size", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
                raise ValueError(f"{name}: expected an integer >= {low}, got {value!r}")
        if self.clusters > 254:
            raise ValueError(f"clusters: at most 254 (labels are 8-bit, 0 is background), got {self.clusters}")
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
        """Digest of the settings the per-image segments depend on (not K, not the seed of
        the dataset clustering)."""
        per_image = asdict(self)
        per_image.pop("clusters")
        return hashlib.sha256(json.dumps(per_image, sort_keys=True).encode()).hexdigest()[:16]

    @classmethod
    def from_dict(cls, data: dict) -> "SemanticSettings":
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})


# ---------------------------------------------------------------------------------------
# Per-image segments
# ---------------------------------------------------------------------------------------


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
    crop_size, input_size, image_size : (H, W)
        Geometry of the grid (see :func:`grid_to_image`).
    """

    segment_map: np.ndarray
    background: int
    segment_ids: np.ndarray
    features: np.ndarray
    boxes_xyxy: np.ndarray
    crop_size: tuple[int, int]
    input_size: tuple[int, int]
    image_size: tuple[int, int]

    def save(self, path, *, key: str) -> None:
        """Write to ``path`` (``.npz``, features as float16) atomically."""
        from ..runner import atomic_write

        arrays = dict(
            segment_map=self.segment_map.astype(np.int16),
            background=np.array(self.background, dtype=np.int64),
            segment_ids=self.segment_ids.astype(np.int32),
            features=self.features.astype(np.float16),
            boxes_xyxy=self.boxes_xyxy.astype(np.int32),
            crop_size=np.array(self.crop_size, dtype=np.int64),
            input_size=np.array(self.input_size, dtype=np.int64),
            image_size=np.array(self.image_size, dtype=np.int64),
            key=np.array(key),
        )
        atomic_write(path, lambda handle: np.savez(handle, **arrays))

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
                crop_size=tuple(int(v) for v in data["crop_size"]),
                input_size=tuple(int(v) for v in data["input_size"]),
                image_size=tuple(int(v) for v in data["image_size"]),
            )


def _normalise(features: np.ndarray) -> np.ndarray:
    features = np.asarray(features, dtype=np.float32)
    norms = np.linalg.norm(features, axis=-1, keepdims=True)
    return features / np.maximum(norms, 1e-12)


def _relabel(labels: np.ndarray) -> np.ndarray:
    """Segment ids renumbered 0..S-1 in order of first appearance (scan order)."""
    flat = labels.ravel()
    _, first = np.unique(flat, return_index=True)
    order = flat[np.sort(first)]
    lookup = np.empty(int(flat.max()) + 1, dtype=np.int32)
    lookup[order] = np.arange(order.size, dtype=np.int32)
    return lookup[labels]


def _kmeans_points(points: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Seeded k-means labels of ``(N, D)`` points with at most ``k`` clusters."""
    cluster = _sklearn_cluster()
    distinct = np.unique(np.round(points, 6), axis=0).shape[0]
    k = int(min(k, distinct))
    if k <= 1:
        return np.zeros(points.shape[0], dtype=np.int32)
    kmeans = cluster.KMeans(n_clusters=k, n_init=KMEANS_N_INIT, random_state=seed)
    return kmeans.fit_predict(points.astype(np.float64)).astype(np.int32)


def eigengap_segments(eigenvalues: np.ndarray, *, max_segments: int) -> int:
    """Number of segments at the largest eigengap: ``argmax_k (λ_k - λ_{k-1})`` over
    ``k = 2..max_segments`` (λ ascending, λ_0 = 0), i.e. the count of eigenvalues below
    the biggest jump, at least 2."""
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
        keep = points.std(axis=0) > 1e-8 * max(1.0, float(np.abs(points).max()))
        points = points[:, keep]
    if points.shape[1] == 0:
        return np.zeros((h, w), dtype=np.int32)
    labels = _kmeans_points(points, k, seed).reshape(h, w)
    return _relabel(labels)


def background_segment(segment_map: np.ndarray, *, rule: str = "largest") -> int:
    """Id of the background segment.

    ``"largest"``: the segment with the most cells (ties: smaller id). ``"border"``: the
    one with the most cells on the grid's border (ties: the larger segment, then smaller id).
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
    """Bounding boxes ``(n, 4)`` ``(x1, y1, x2, y2)`` in grid cells (x2, y2 exclusive)."""
    boxes = np.zeros((len(segment_ids), 4), dtype=np.int64)
    for row, sid in enumerate(segment_ids):
        ys, xs = np.nonzero(segment_map == sid)
        boxes[row] = (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
    return boxes


def _crop_boxes(grid_boxes: np.ndarray, *, grid_size, crop_size, input_size, image_size, expand: float) -> tuple[np.ndarray, np.ndarray]:
    """Grid boxes -> (boxes in input pixels, boxes in original pixels), expanded by ``expand``
    input pixels on every side and clipped."""
    cell_y = crop_size[0] / grid_size[0]
    cell_x = crop_size[1] / grid_size[1]
    x1 = np.clip(np.floor(grid_boxes[:, 0] * cell_x - expand), 0, input_size[1])
    y1 = np.clip(np.floor(grid_boxes[:, 1] * cell_y - expand), 0, input_size[0])
    x2 = np.clip(np.ceil(grid_boxes[:, 2] * cell_x + expand), 0, input_size[1])
    y2 = np.clip(np.ceil(grid_boxes[:, 3] * cell_y + expand), 0, input_size[0])
    boxes_in = np.stack([x1, y1, x2, y2], axis=1).astype(np.int64)
    sy = image_size[0] / input_size[0]
    sx = image_size[1] / input_size[1]
    boxes_out = np.stack(
        [np.floor(x1 * sx), np.floor(y1 * sy), np.ceil(x2 * sx), np.ceil(y2 * sy)], axis=1
    )
    boxes_out = np.minimum(boxes_out, [image_size[1], image_size[0]] * 2).astype(np.int64)
    return boxes_in, boxes_out


def _square_crops(image: np.ndarray, boxes: np.ndarray, size: int, min_side: int) -> list[np.ndarray]:
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


@dataclass
class _Timer:
    seconds: dict = field(default_factory=dict)

    def add(self, stage: str, start: float) -> float:
        now = time.perf_counter()
        self.seconds[stage] = self.seconds.get(stage, 0.0) + (now - start)
        return now


def image_segments(image, source: FeatureSource, settings: SemanticSettings, *, timer: _Timer | None = None) -> ImageSegments:
    """Segments of one image and their L2-normalised features, by ``settings.method``.

    Parameters
    ----------
    image : (H, W, 3) uint8 or PIL image
    source : FeatureSource
        A :class:`deepspectral.Backbone` or an oracle with the same methods.
    settings : SemanticSettings

    Returns
    -------
    ImageSegments
    """
    from ..data.images import as_rgb_array, resize_image
    from ..spectral import decompose

    timer = timer if timer is not None else _Timer()
    rgb = as_rgb_array(image)
    start = time.perf_counter()
    features = source.extract(rgb, max_size=settings.max_size)
    start = timer.add("features", start)
    crop_size, input_size, image_size = features.crop_size, tuple(features.input_size), tuple(features.image_size)
    if settings.method == "cluster-patch":
        h, w = features.grid_size
        segment_map = np.arange(h * w, dtype=np.int32).reshape(h, w)
        ids = np.arange(h * w, dtype=np.int32)
        boxes = np.stack(np.meshgrid(np.arange(w), np.arange(h)), axis=-1).reshape(-1, 2)
        grid_boxes = np.concatenate([boxes, boxes + 1], axis=1)
        _, boxes_out = _crop_boxes(grid_boxes, grid_size=(h, w), crop_size=crop_size, input_size=input_size, image_size=image_size, expand=0)
        feats = _normalise(features.features.reshape(h * w, -1))
        timer.add("segments", start)
        return ImageSegments(segment_map, -1, ids, feats, boxes_out.astype(np.int32), crop_size, input_size, image_size)
    if settings.method == "cluster-seg":
        h, w = features.grid_size
        patch = _normalise(features.features.reshape(h * w, -1))
        segment_map = _relabel(_kmeans_points(patch, settings.segments, settings.seed).reshape(h, w))
        ids = np.arange(int(segment_map.max()) + 1, dtype=np.int32)
        flat = segment_map.ravel()
        sums = np.zeros((ids.size, patch.shape[1]))
        np.add.at(sums, flat, patch)
        feats = _normalise(sums / np.bincount(flat, minlength=ids.size)[:, None])
        grid_boxes = segment_boxes(segment_map, ids)
        _, boxes_out = _crop_boxes(grid_boxes, grid_size=(h, w), crop_size=crop_size, input_size=input_size, image_size=image_size, expand=0)
        timer.add("segments", start)
        return ImageSegments(segment_map, -1, ids, feats, boxes_out.astype(np.int32), crop_size, input_size, image_size)

    decomposition = decompose(features, rgb, knn_lambda=settings.knn_lambda, n_eigenvectors=settings.eigenvectors + 1)
    start = timer.add("eigenvectors", start)
    segment_map = spectral_segments(
        decomposition, n_segments=settings.segments, n_eigenvectors=settings.eigenvectors,
        adaptive=settings.adaptive_segments, seed=settings.seed,
    )
    background = background_segment(segment_map, rule=settings.background)
    ids = np.array([s for s in range(int(segment_map.max()) + 1) if s != background], dtype=np.int32)
    start = timer.add("segments", start)
    grid_boxes = segment_boxes(segment_map, ids)
    boxes_in, boxes_out = _crop_boxes(
        grid_boxes, grid_size=decomposition.grid_size, crop_size=crop_size, input_size=input_size,
        image_size=image_size, expand=settings.expand_patches * features.patch_size,
    )
    if ids.size:
        small = resize_image(rgb, input_size)
        crops = _square_crops(small, boxes_in, settings.crop_size, features.patch_size)
        cls = np.concatenate([
            np.asarray(source.cls_embeddings(crops[i:i + CROP_BATCH], max_size=None), dtype=np.float32)
            for i in range(0, len(crops), CROP_BATCH)
        ])
        feats = _normalise(cls)
    else:
        feats = np.zeros((0, 1), dtype=np.float32)
    timer.add("crop_features", start)
    return ImageSegments(segment_map, background, ids, feats, boxes_out.astype(np.int32), crop_size, input_size, image_size)


def label_grid(segments: ImageSegments, clusters: np.ndarray) -> np.ndarray:
    """Label of every grid cell: 0 for the background segment, ``cluster + 1`` otherwise.

    Parameters
    ----------
    segments : ImageSegments
    clusters : (n,) int
        Cluster (0..K-1) of each segment in ``segments.segment_ids``.

    Returns
    -------
    (h, w) uint8 (K <= 254) or uint16
        Adjacent segments with the same cluster share a label, i.e. they are merged.
    """
    clusters = np.asarray(clusters)
    lookup = np.zeros(int(segments.segment_map.max()) + 1, dtype=np.int64)
    lookup[segments.segment_ids] = clusters + 1
    grid = lookup[segments.segment_map]
    dtype = np.uint8 if grid.max(initial=0) < 255 else np.uint16
    return grid.astype(dtype)


# ---------------------------------------------------------------------------------------
# Dataset clustering (streamed)
# ---------------------------------------------------------------------------------------


def assign_clusters(features: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Nearest centroid (Euclidean; cosine for unit rows) of each ``(N, C)`` row -> ``(N,)``
    int32 (ties: the smaller index)."""
    features = np.asarray(features, dtype=np.float32)
    if features.shape[0] == 0:
        return np.zeros(0, dtype=np.int32)
    centroids = np.asarray(centroids, dtype=np.float32)
    distances = (centroids ** 2).sum(axis=1)[None, :] - 2.0 * features @ centroids.T
    return np.argmin(distances, axis=1).astype(np.int32)


def cluster_features(
    chunks: Callable[[], Iterable[np.ndarray]],
    *,
    n_clusters: int,
    seed: int = 0,
    sample_size: int = SAMPLE_SIZE,
    epochs: int = MINIBATCH_EPOCHS,
    total: int | None = None,
    verbose: bool = False,
) -> np.ndarray:
    """k-means centroids of a feature set that is read in chunks (never all in memory).

    Parameters
    ----------
    chunks : callable
        ``chunks()`` yields ``(n_i, C)`` float arrays, the same ones in the same order on
        every call (one pass over the data per call).
    n_clusters : int
        K.
    seed : int
        Seeds the sample, the k-means initialisation and the mini-batches.
    sample_size : int
        When the data has at most this many rows, exact k-means (``KMEANS_N_INIT``
        restarts, k-means++) runs on all of them. Otherwise k-means runs on a uniform
        random sample of this many rows and its centroids are refined by mini-batch
        k-means streamed over all the data for ``epochs`` passes.
    total : int, optional
        Number of rows (one counting pass is made when missing).

    Returns
    -------
    (K, C) float32
    """
    cluster = _sklearn_cluster()
    if isinstance(n_clusters, bool) or not isinstance(n_clusters, (int, np.integer)) or n_clusters < 1:
        raise ValueError(f"n_clusters: expected an integer >= 1, got {n_clusters!r}")
    if total is None:
        total = sum(int(c.shape[0]) for c in chunks())
    if total < n_clusters:
        raise ValueError(
            f"n_clusters: {n_clusters} clusters need at least as many segment features, "
            f"the dataset has {total}; use fewer clusters or more images"
        )
    rng = np.random.default_rng(seed)
    take = np.sort(rng.choice(total, size=min(total, sample_size), replace=False))
    sample, offset = [], 0
    for chunk in chunks():
        n = chunk.shape[0]
        lo, hi = np.searchsorted(take, [offset, offset + n])
        if hi > lo:
            sample.append(np.asarray(chunk, dtype=np.float32)[take[lo:hi] - offset])
        offset += n
    data = np.concatenate(sample)
    kmeans = cluster.KMeans(n_clusters=n_clusters, n_init=KMEANS_N_INIT, random_state=seed, copy_x=False)
    kmeans.fit(data)  # float32, no centred copy: the sample is the largest array held
    centroids = kmeans.cluster_centers_.astype(np.float32)
    del data, sample
    if total <= sample_size or epochs < 1:
        return centroids
    refine = cluster.MiniBatchKMeans(
        n_clusters=n_clusters, init=centroids, n_init=1,
        batch_size=MINIBATCH_SIZE, random_state=seed,
    )
    from tqdm.auto import tqdm

    progress = tqdm(total=epochs * total, desc="mini-batch k-means", unit="feat", disable=(not verbose) or None, file=sys.stderr)
    buffer: list[np.ndarray] = []
    buffered = 0
    for _ in range(epochs):
        for chunk in chunks():
            buffer.append(np.asarray(chunk, dtype=np.float32))
            buffered += chunk.shape[0]
            if buffered >= MINIBATCH_SIZE:
                batch = np.concatenate(buffer)
                refine.partial_fit(batch[rng.permutation(batch.shape[0])])
                progress.update(batch.shape[0])
                buffer, buffered = [], 0
    if buffered >= n_clusters:
        refine.partial_fit(np.concatenate(buffer))
        progress.update(buffered)
    progress.close()
    return refine.cluster_centers_.astype(np.float32)


# ---------------------------------------------------------------------------------------
# Fit
# ---------------------------------------------------------------------------------------


@dataclass
class FitResult:
    """What :func:`fit` did.

    Attributes
    ----------
    run_dir : pathlib.Path
    done, failed : int
        Images labelled / that failed (listed in ``run_dir/errors.json``).
    n_features : int
        Segment features clustered.
    seconds : dict
        Wall-clock seconds per stage (``features``, ``eigenvectors``, ``segments``,
        ``crop_features``, ``clustering``, ``labels``, ``figure``).
    peak_rss_mb : float
        Peak resident memory of the process (MiB) at the end of the fit.
    """

    run_dir: Path
    done: int = 0
    failed: int = 0
    n_features: int = 0
    seconds: dict = field(default_factory=dict)
    peak_rss_mb: float = 0.0


def _peak_rss_mb() -> float:
    try:
        import resource
    except ImportError:  # pragma: no cover - Windows
        return float("nan")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024.0 * 1024.0) if sys.platform == "darwin" else peak / 1024.0


def _segments_path(run_dir: Path, relative) -> Path:
    return run_dir.joinpath(SEGMENTS_DIR, *relative.parts[:-1], relative.name + ".npz")


def _labels_path(run_dir: Path, relative) -> Path:
    return run_dir.joinpath(LABELS_DIR, *relative.parts[:-1], relative.name + ".png")


def _rgb_of(item) -> np.ndarray:
    from ..data.images import as_rgb_array, load_image

    return load_image(item.path) if hasattr(item, "path") else as_rgb_array(item)


def fit(
    inputs: Sequence,
    run_dir,
    *,
    source: FeatureSource,
    settings: SemanticSettings | None = None,
    verbose: bool = True,
    figure: bool = True,
) -> FitResult:
    """Fit the semantic segmentation of a dataset and write the run folder.

    Parameters
    ----------
    inputs : sequence of InputImage
        From :func:`deepspectral.data.images.collect_inputs` (``path`` + output name).
    run_dir : str or os.PathLike
        Output folder (see the module docstring). Per-image segments already there with
        the same settings are reused, so an interrupted fit resumes.
    source : FeatureSource
        The backbone (or an oracle).
    settings : SemanticSettings, optional
    verbose : bool
        Progress bars and a summary line.
    figure : bool
        Write ``clusters.jpg``.

    Returns
    -------
    FitResult
    """
    from ..runner import atomic_write_json, run_batch

    settings = settings if settings is not None else SemanticSettings()
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    key = settings.segment_key()
    timer = _Timer()
    records: dict[str, dict] = {}
    counts: dict[str, int] = {}
    items = list(inputs)

    def process(item) -> None:
        path = _segments_path(run_dir, item.relative)
        if path.is_file():
            try:
                cached = ImageSegments.load(path, key=key)
            except (OSError, ValueError, KeyError):
                cached = None
            if cached is not None:
                counts[item.relative.as_posix()] = int(cached.segment_ids.size)
                return
        start = time.perf_counter()
        rgb = _rgb_of(item)
        timer.add("load", start)
        segments = image_segments(rgb, source, settings, timer=timer)
        start = time.perf_counter()
        segments.save(path, key=key)
        timer.add("save", start)
        counts[item.relative.as_posix()] = int(segments.segment_ids.size)

    computed = [0]

    def process_counted(item) -> None:
        before = timer.seconds.get("features", 0.0)
        process(item)
        if timer.seconds.get("features", 0.0) != before:
            computed[0] += 1

    try:
        summary = run_batch(items, process_counted, out_dir=run_dir, desc="semseg fit: segments", verbose=verbose)
    except KeyboardInterrupt:  # keep what the interrupted run measured; the segments are cached
        atomic_write_json(run_dir / PARTIAL_FILE, {
            "images_computed": computed[0], "seconds": {k: round(v, 3) for k, v in timer.seconds.items()},
            "peak_rss_mb": round(_peak_rss_mb(), 1),
        })
        raise
    done = [item for item in items if item.relative.as_posix() in counts]
    total = sum(counts.values())

    def chunks() -> Iterable[np.ndarray]:
        for item in done:
            if counts[item.relative.as_posix()]:
                segments = ImageSegments.load(_segments_path(run_dir, item.relative))
                yield segments.features

    start = time.perf_counter()
    centroids = cluster_features(chunks, n_clusters=settings.clusters, seed=settings.seed, total=total, verbose=verbose)
    start = timer.add("clustering", start)
    from ..runner import atomic_write

    atomic_write(run_dir / CENTROIDS_FILE, lambda handle: np.save(handle, centroids))

    from tqdm.auto import tqdm

    for item in tqdm(done, desc="semseg fit: labels", unit="img", disable=(not verbose) or None, file=sys.stderr):
        segments = ImageSegments.load(_segments_path(run_dir, item.relative))
        grid = label_grid(segments, assign_clusters(segments.features, centroids))
        labels = grid_to_image(grid, crop_size=segments.crop_size, input_size=segments.input_size, image_size=segments.image_size)
        label_path = _labels_path(run_dir, item.relative)
        save_label_png(label_path, labels.astype(np.uint8))
        records[item.relative.as_posix()] = {
            "image": item.relative.as_posix(),
            "file": str(Path(item.path).resolve()),
            "labels": label_path.relative_to(run_dir).as_posix(),
            "segments": counts[item.relative.as_posix()],
        }
    start = timer.add("labels", start)
    if figure and done:
        from ..runner import save_image_atomic

        picture = cluster_figure(run_dir, done, centroids, settings)
        save_image_atomic(run_dir / FIGURE_FILE, picture, quality=90)
        timer.add("figure", start)

    result = FitResult(
        run_dir=run_dir, done=len(done), failed=summary.failed, n_features=total,
        seconds={k: round(v, 3) for k, v in timer.seconds.items()}, peak_rss_mb=round(_peak_rss_mb(), 1),
    )
    atomic_write_json(run_dir / IMAGES_FILE, [records[i.relative.as_posix()] for i in done])
    atomic_write_json(
        run_dir / RUN_FILE,
        {
            "format": FORMAT_VERSION,
            "settings": asdict(settings),
            "n_labels": settings.n_labels,
            "background_label": 0,
            "images": len(done),
            "failed": summary.failed,
            "n_features": total,
            "images_computed": computed[0],
            "feature_dim": int(centroids.shape[1]),
            "seconds": result.seconds,
            "peak_rss_mb": result.peak_rss_mb,
        },
    )
    if verbose:
        per_image = {k: round(v / max(1, computed[0]), 4) for k, v in result.seconds.items()
                     if k in ("load", "features", "eigenvectors", "segments", "crop_features", "save")}
        print(f"semseg fit: {len(done)} images ({computed[0]} computed, the rest cached), {total} segment "
              f"features, K={settings.clusters}; seconds per computed image by stage {per_image}; "
              f"dataset stages (s) { {k: v for k, v in result.seconds.items() if k not in per_image} }; "
              f"peak memory {result.peak_rss_mb:.0f} MiB", flush=True)
    return result


def cluster_figure(run_dir, items: Sequence, centroids: np.ndarray, settings: SemanticSettings, *, per_cluster: int = 8, tile: int = 80) -> np.ndarray:
    """A picture like the paper's Fig. 10: one row per cluster (its palette colour on the
    left), up to ``per_cluster`` crops of segments assigned to it (seeded choice).

    Returns
    -------
    (rows * tile, (per_cluster + 1) * tile, 3) uint8
    """
    from PIL import Image

    run_dir = Path(run_dir)
    rng = np.random.default_rng(settings.seed)
    members: dict[int, list[tuple[int, np.ndarray]]] = {c: [] for c in range(centroids.shape[0])}
    seen = np.zeros(centroids.shape[0], dtype=np.int64)
    for index, item in enumerate(items):  # reservoir sampling per cluster
        segments = ImageSegments.load(_segments_path(run_dir, item.relative))
        for cluster, box in zip(assign_clusters(segments.features, centroids), segments.boxes_xyxy):
            seen[cluster] += 1
            bucket = members[int(cluster)]
            if len(bucket) < per_cluster:
                bucket.append((index, box))
            else:
                slot = int(rng.integers(seen[cluster]))
                if slot < per_cluster:
                    bucket[slot] = (index, box)
    canvas = np.full((centroids.shape[0] * tile, (per_cluster + 1) * tile, 3), 255, dtype=np.uint8)
    cache: dict[int, np.ndarray] = {}
    for cluster, bucket in members.items():
        top = cluster * tile
        canvas[top + 4:top + tile - 4, 4:tile - 4] = PALETTE[cluster + 1]
        for column, (index, box) in enumerate(sorted(bucket, key=lambda entry: entry[0])):
            try:
                if index not in cache:
                    cache = {index: _rgb_of(items[index])}
                x1, y1, x2, y2 = (int(v) for v in box)
                crop = cache[index][y1:max(y2, y1 + 1), x1:max(x2, x1 + 1)]
                thumb = np.asarray(Image.fromarray(crop).resize((tile - 4, tile - 4), Image.Resampling.BILINEAR))
            except (OSError, ValueError):
                continue
            left = (column + 1) * tile
            canvas[top + 2:top + tile - 2, left + 2:left + tile - 2] = thumb
    return canvas


# ---------------------------------------------------------------------------------------
# Loading a run, predicting
# ---------------------------------------------------------------------------------------


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
    """

    def __init__(self, run_dir: Path, settings: SemanticSettings, centroids: np.ndarray, *, source=None,
                 device: str = "auto", weights=None, use: str = "auto") -> None:
        if use not in ("auto", "clusters", "model"):
            raise ValueError(f"use: expected one of ('auto', 'clusters', 'model'), got {use!r}")
        self.run_dir = Path(run_dir)
        self.settings = settings
        self.centroids = centroids
        self.n_labels = settings.n_labels
        self.device = device
        self._weights = weights
        self._source = source
        self._model = None
        model_file = self.run_dir / MODEL_DIR / "model.pt"
        if use == "model" and not model_file.is_file():
            raise FileNotFoundError(f"use: 'model' asked but '{model_file}' does not exist; run `deepspectral semseg train` first")
        self.use = ("model" if model_file.is_file() else "clusters") if use == "auto" else use

    def __repr__(self) -> str:
        return f"SemanticRun('{self.run_dir}', method={self.settings.method!r}, K={self.settings.clusters}, use={self.use!r})"

    @property
    def source(self) -> FeatureSource:
        """The feature source (the backbone recorded by ``fit``, loaded on first use)."""
        if self._source is None:
            from ..backbones import Backbone

            weights = self._weights if self._weights is not None else self.settings.weights
            self._source = Backbone(self.settings.backbone, weights=weights, device=self.device,
                                    block=self.settings.block, feature=self.settings.feature)
        return self._source

    def segments(self, image) -> ImageSegments:
        """Segments + features of a new image with the run's settings."""
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
            if self._model is None:
                from .selftrain import load_model

                self._model = load_model(self.run_dir, device=self.device)
            return self._model.predict(image)
        segments = self.segments(image)
        grid = label_grid(segments, assign_clusters(segments.features, self.centroids))
        return grid_to_image(grid, crop_size=segments.crop_size, input_size=segments.input_size,
                             image_size=segments.image_size).astype(np.uint8)


def load_run(run_dir, *, source: FeatureSource | None = None, device: str = "auto", weights=None, use: str = "auto") -> SemanticRun:
    """Open a run folder written by :func:`fit` (``deepspectral semseg fit``).

    Parameters
    ----------
    run_dir : str or os.PathLike
    source : FeatureSource, optional
        Feature source to use instead of the backbone recorded in the run.
    device : str
        Where the backbone / model runs.
    weights : path, optional
        Weights file of the recorded backbone (overrides the recorded path).
    use : {"auto", "clusters", "model"}
        Predict with the self-trained model (``auto``: when one was trained) or with the
        clustering.

    Returns
    -------
    SemanticRun
    """
    run_dir = Path(run_dir)
    info_path = run_dir / RUN_FILE
    if not info_path.is_file():
        raise FileNotFoundError(f"run_dir: '{run_dir}' has no {RUN_FILE}; create it with `deepspectral semseg fit`")
    info = json.loads(info_path.read_text(encoding="utf-8"))
    settings = SemanticSettings.from_dict(info["settings"])
    centroids = np.load(run_dir / CENTROIDS_FILE, allow_pickle=False)
    return SemanticRun(run_dir, settings, centroids, source=source, device=device, weights=weights, use=use)


def read_images(run_dir) -> list[dict]:
    """Records of ``images.json`` (image name, file, label PNG relative to the run)."""
    return json.loads((Path(run_dir) / IMAGES_FILE).read_text(encoding="utf-8"))
