"""Affinity matrices of the paper: deep-feature affinity (Eq. 2) and KNN colour affinity (Eq. 1).

Both live on the *working grid* ``(h, w)`` (1/8 of the cropped image). Nodes are numbered
row-major: node ``i`` is grid cell ``(i // w, i % w)``.
"""

from __future__ import annotations

import numpy as np
import scipy.linalg.blas
import scipy.sparse

from . import defaults
from .geometry import bilinear_taps, linear_taps

__all__ = [
    "feature_affinity",
    "knn_affinity",
    "knn_pairs",
    "add_symmetric_pairs",
    "knn_neighbors",
    "image_knn",
]


#: Smallest distance of one pixel step, in the KNN colour space, for which
#: :func:`image_knn` searches in rings rather than with a k-d tree (measured crossover).
RING_SEARCH_MIN_STEP = 0.003


def feature_affinity(
    features: np.ndarray,
    grid_size: tuple[int, int] | None = None,
    *,
    upper_only: bool = False,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Deep-feature affinity ``W_feat = max(f̂ f̂ᵀ, 0)`` on the working grid (Eq. 2).

    The features are L2-normalised on the patch grid, then bilinearly resized to
    ``grid_size`` (``align_corners=False``) before the product, as the paper's code does.
    The product of the resized features is computed through the exact identity
    ``(U f)(U f)ᵀ = U (f fᵀ) Uᵀ`` (U: the 4-tap bilinear operator): the patch Gram matrix
    ``G`` is resampled along its rows, then each output row is a 4-term combination of
    those rows, thresholded at 0 as it is written. This costs far less than the Gram
    matrix of the upsampled features.

    Parameters
    ----------
    features : (h_p, w_p, C) float
        Patch features.
    grid_size : (h, w), optional
        Working grid; defaults to the patch grid.
    upper_only : bool, default False
        Fill only the upper triangle (``j >= i``) and leave the rest undefined; the
        eigensolver reads one triangle only, and this halves the work.
    out : (h * w, h * w) float32, optional
        Where to write the result (a reused buffer spares the page faults of a fresh
        allocation); a new array otherwise.

    Returns
    -------
    (h * w, h * w) float32, symmetric, non-negative.
    """
    if features.ndim != 3:
        raise ValueError(f"features: expected shape (h, w, C), got {features.shape}")
    hp, wp, channels = features.shape
    grid_size = (hp, wp) if grid_size is None else tuple(grid_size)
    f = np.asarray(features, dtype=np.float32).reshape(hp * wp, channels)
    f = f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)
    # (n_p, n_p) through scipy's BLAS, the library the eigensolver's ``symv`` uses: numpy
    # ships a second OpenBLAS whose idle worker thread spins for ~0.1 s after a call and
    # takes the second core from the eigensolver (3x slower right after a numpy product).
    # syrk computes one triangle (half the work of a product); the kernel mirrors it.
    from . import _kernels

    gram = scipy.linalg.blas.ssyrk(1.0, f, lower=1).T  # C-ordered, upper triangle valid
    _kernels.mirror_upper(gram)
    if grid_size == (hp, wp):
        return np.maximum(gram, 0.0, out=gram if out is None else out)
    taps, weights = bilinear_taps((hp, wp), grid_size)
    n = grid_size[0] * grid_size[1]
    half = np.empty((hp * wp, n), np.float32)
    affinity = np.empty((n, n), np.float32) if out is None else out
    _kernels.upsample_rows(gram, wp, *linear_taps(hp, grid_size[0]), *linear_taps(wp, grid_size[1]), half)
    _kernels.upper_combination_rows(half, taps, weights, affinity)  # max(U G Uᵀ, 0), upper
    if not upper_only:
        _kernels.mirror_upper(affinity)
    return affinity


def _colour_space_points(image: np.ndarray, spatial_weight: float) -> np.ndarray:
    h, w = image.shape[:2]
    x = np.tile(np.linspace(0.0, 1.0, w, dtype=np.float32), h)
    y = np.repeat(np.linspace(0.0, 1.0, h, dtype=np.float32), w)
    rgb = np.asarray(image, dtype=np.float32).reshape(h * w, 3)
    return np.column_stack([rgb, spatial_weight * x, spatial_weight * y]).astype(np.float32)


def knn_neighbors(points: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` nearest neighbours (Euclidean) of every point among the points themselves,
    each point counting as its own nearest neighbour.

    Returns
    -------
    distances, indices : (n, k) float32, (n, k) int64
    """
    from scipy.spatial import cKDTree

    k = min(k, len(points))
    distances, indices = cKDTree(points).query(points, k=k, workers=-1)
    distances = np.asarray(distances, dtype=np.float32).reshape(len(points), k)
    indices = np.asarray(indices, dtype=np.int64).reshape(len(points), k)
    return distances, indices


def image_knn(image: np.ndarray, k: int, spatial_weight: float) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` nearest neighbours of every pixel of an image in the KNN-matting space
    ``(r, g, b, s·x, s·y)`` (x, y in ``linspace(0, 1)``), each pixel its own nearest.

    Same result as :func:`knn_neighbors` on those points (up to the order of equally
    distant neighbours). Where one pixel step costs at least
    :data:`RING_SEARCH_MIN_STEP` in that space (``s = 2`` on the working grid) the
    search is exact in growing square rings around each pixel (compiled, all cores):
    the spatial term bounds how far it must go, a few rings for most pixels, 2-4x
    faster than a k-d tree. With a smaller step (``s = 0.1``) the rings would have to
    grow far and the k-d tree of :func:`knn_neighbors` is used.

    Parameters
    ----------
    image : (h, w, 3) float
    k : int
        Capped at ``h * w``.
    spatial_weight : float
        ``s`` above, >= 0.

    Returns
    -------
    distances, indices : (h * w, k) float32, (h * w, k) int64, ascending per row.
    """
    from . import _kernels

    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image: expected shape (h, w, 3), got {image.shape}")
    if spatial_weight < 0:
        raise ValueError(f"spatial_weight: expected a value >= 0, got {spatial_weight}")
    h, w = image.shape[:2]
    k = min(int(k), h * w)
    if spatial_weight / max(h - 1, w - 1, 1) < RING_SEARCH_MIN_STEP:
        return knn_neighbors(_colour_space_points(image, spatial_weight), k)
    # the same float32 coordinates as the points of _colour_space_points
    xs = spatial_weight * np.linspace(0.0, 1.0, w, dtype=np.float32)
    ys = spatial_weight * np.linspace(0.0, 1.0, h, dtype=np.float32)
    steps = [np.diff(axis.astype(np.float64)).min() for axis in (xs, ys) if len(axis) > 1]
    # a hair under the smallest coordinate step, so float rounding never cuts the search short
    min_step = min(steps) * (1.0 - 1e-6) if steps else np.inf
    squared = np.empty((h * w, k), np.float64)
    indices = np.empty((h * w, k), np.int64)
    colours = np.ascontiguousarray(image, dtype=np.float32)
    _kernels.grid_knn(colours, xs, ys, float(min_step), k, squared, indices)
    return np.sqrt(squared).astype(np.float32), indices


def knn_pairs(
    image: np.ndarray,
    *,
    settings: tuple[tuple[int, float], ...] = defaults.KNN_SETTINGS,
    kernel: str = defaults.KNN_KERNEL,
):
    """Neighbour pairs of the KNN colour affinity, one setting at a time.

    Yields
    ------
    rows, cols : (n * k,) int64
        Pixel ``rows[t]`` has pixel ``cols[t]`` among its ``k`` nearest neighbours. Within
        one yielded batch no ``(row, col)`` pair repeats.
    weights : (n * k,) float32
        1 for the binary kernel, ``max(1 - distance, 0)`` for the soft one.
    """
    if kernel not in defaults.KNN_KERNELS:
        raise ValueError(f"kernel: expected one of {defaults.KNN_KERNELS}, got {kernel!r}")
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image: expected shape (h, w, 3), got {image.shape}")
    n = image.shape[0] * image.shape[1]
    for k, _ in settings:
        if k < 1:
            raise ValueError(f"settings: neighbour count must be >= 1, got {k}")

    for k, spatial_weight in settings:
        distances, neighbors = image_knn(image, k, spatial_weight)
        rows = np.repeat(np.arange(n), neighbors.shape[1])
        if kernel == "binary":
            weights = np.ones(neighbors.size, dtype=np.float32)
        else:
            weights = np.maximum(1.0 - distances.ravel(), 0.0).astype(np.float32)
        yield rows, neighbors.ravel(), weights


def knn_affinity(
    image: np.ndarray,
    *,
    settings: tuple[tuple[int, float], ...] = defaults.KNN_SETTINGS,
    kernel: str = defaults.KNN_KERNEL,
) -> scipy.sparse.csr_matrix:
    """KNN-matting colour affinity ``W_knn`` of a small image (PyMatting's formulation).

    Every pixel is the point ``(r, g, b, s·x, s·y)`` with r, g, b in [0, 1] and x, y in
    ``linspace(0, 1)``; for each ``(k, s)`` in ``settings`` every pixel is joined to its
    ``k`` nearest neighbours (itself included). Every pair gets its weight in both
    directions and repeated pairs add up (``W + Wᵀ``).

    Parameters
    ----------
    image : (h, w, 3) float in [0, 1]
        The image resized to the working grid.
    settings : tuple of (k, spatial_weight)
        Neighbour counts and coordinate weights; the paper uses ``((20, 2.0), (10, 0.1))``.
    kernel : {"binary", "soft"}
        ``"binary"``: weight 1 per neighbour pair (PyMatting's default, used by the paper's
        code); ``"soft"``: ``max(1 - distance, 0)`` (Eq. 1).

    Returns
    -------
    (h * w, h * w) float32 CSR matrix, symmetric.
    """
    n = image.shape[0] * image.shape[1]
    rows, cols, vals = [], [], []
    for i, j, weights in knn_pairs(image, settings=settings, kernel=kernel):
        rows += [i, j]
        cols += [j, i]
        vals += [weights, weights]
    affinity = scipy.sparse.coo_matrix(
        (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(n, n)
    )
    return affinity.tocsr()  # duplicates are summed


def add_symmetric_pairs(
    affinity: np.ndarray, rows: np.ndarray, cols: np.ndarray, weights: np.ndarray, *, upper_only: bool = False
) -> None:
    """``affinity[rows, cols] += weights`` and ``affinity[cols, rows] += weights`` in place
    on a dense ``(N, N)`` matrix (a compiled loop: repeated pairs add up). With
    ``upper_only`` only the upper triangle is updated (each pair lands on
    ``(min, max)``; a self pair adds twice its weight to the diagonal)."""
    from . import _kernels

    _kernels.add_pairs(
        affinity,
        np.asarray(rows, dtype=np.int64),
        np.asarray(cols, dtype=np.int64),
        np.asarray(weights, dtype=np.float32),
        bool(upper_only),
    )
