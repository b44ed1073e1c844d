"""Affinity matrices of the paper: deep-feature affinity (Eq. 2) and KNN colour affinity (Eq. 1).

Both live on the *working grid* ``(h, w)`` (1/8 of the cropped image). Nodes are numbered
row-major: node ``i`` is grid cell ``(i // w, i % w)``.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse

from . import defaults

__all__ = [
    "interpolation_matrix",
    "resize_bilinear",
    "feature_affinity",
    "knn_affinity",
    "knn_neighbors",
]


def interpolation_matrix(n_in: int, n_out: int) -> scipy.sparse.csr_matrix:
    """1-D linear interpolation operator of ``torch.nn.functional.interpolate`` with
    ``align_corners=False`` (half-pixel centres, no antialiasing).

    Returns
    -------
    (n_out, n_in) float32 CSR matrix with at most 2 entries per row, rows summing to 1.
    """
    if n_in < 1 or n_out < 1:
        raise ValueError(f"n_in, n_out: expected positive sizes, got {n_in}, {n_out}")
    scale = n_in / n_out
    src = np.maximum((np.arange(n_out) + 0.5) * scale - 0.5, 0.0)
    lo = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    hi = np.minimum(lo + 1, n_in - 1)
    frac = (src - lo).astype(np.float32)
    rows = np.repeat(np.arange(n_out), 2)
    cols = np.stack([lo, hi], axis=1).ravel()
    vals = np.stack([1.0 - frac, frac], axis=1).ravel()
    return scipy.sparse.csr_matrix((vals, (rows, cols)), shape=(n_out, n_in), dtype=np.float32)


def resize_bilinear(array: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of an ``(h, w, ...)`` array to ``(H, W, ...)`` exactly as
    ``torch.nn.functional.interpolate(mode="bilinear", align_corners=False)`` does."""
    h, w = array.shape[:2]
    if (h, w) == tuple(size):
        return np.asarray(array, dtype=np.float32)
    rows = interpolation_matrix(h, size[0]).toarray()
    cols = interpolation_matrix(w, size[1]).toarray()
    out = np.tensordot(rows, np.asarray(array, dtype=np.float32), axes=(1, 0))  # (H, w, ...)
    out = np.tensordot(cols, out, axes=(1, 1))  # (W, H, ...)
    return np.ascontiguousarray(np.swapaxes(out, 0, 1), dtype=np.float32)


def feature_affinity(features: np.ndarray, grid_size: tuple[int, int] | None = None) -> np.ndarray:
    """Deep-feature affinity ``W_feat = max(f̂ f̂ᵀ, 0)`` on the working grid (Eq. 2).

    The features are L2-normalised on the patch grid, then bilinearly resized to
    ``grid_size`` (``align_corners=False``) before the product, as the paper's code does.
    The product of the resized features is computed through the exact identity
    ``(U f)(U f)ᵀ = U (f fᵀ) Uᵀ`` (U: the sparse bilinear operator), which costs far less
    than the Gram matrix of the upsampled features.

    Parameters
    ----------
    features : (h_p, w_p, C) float
        Patch features.
    grid_size : (h, w), optional
        Working grid; defaults to the patch grid.

    Returns
    -------
    (h * w, h * w) float32, symmetric, non-negative.
    """
    if features.ndim != 3:
        raise ValueError(f"features: expected shape (h, w, C), got {features.shape}")
    hp, wp, channels = features.shape
    grid_size = (hp, wp) if grid_size is None else tuple(grid_size)
    f = np.asarray(features, dtype=np.float32).reshape(hp * wp, channels)
    norms = np.linalg.norm(f, axis=1, keepdims=True)
    f = f / np.maximum(norms, 1e-12)
    gram = f @ f.T  # (n_p, n_p)
    if grid_size != (hp, wp):
        up = scipy.sparse.kron(
            interpolation_matrix(hp, grid_size[0]), interpolation_matrix(wp, grid_size[1]), format="csr"
        ).astype(np.float32)  # (N, n_p)
        half = np.asarray(up @ gram, dtype=np.float32)  # (N, n_p) = U G
        gram = np.asarray(up @ half.T, dtype=np.float32)  # (N, N) = U G Uᵀ
    np.maximum(gram, 0.0, out=gram)
    return gram


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
    if kernel not in defaults.KNN_KERNELS:
        raise ValueError(f"kernel: expected one of {defaults.KNN_KERNELS}, got {kernel!r}")
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image: expected shape (h, w, 3), got {image.shape}")
    n = image.shape[0] * image.shape[1]
    rows, cols, vals = [], [], []
    for k, spatial_weight in settings:
        if k < 1:
            raise ValueError(f"settings: neighbour count must be >= 1, got {k}")
        distances, neighbors = knn_neighbors(_colour_space_points(image, spatial_weight), k)
        rows.append(np.repeat(np.arange(n), neighbors.shape[1]))
        cols.append(neighbors.ravel())
        if kernel == "binary":
            vals.append(np.ones(neighbors.size, dtype=np.float32))
        else:
            vals.append(np.maximum(1.0 - distances.ravel(), 0.0).astype(np.float32))
    i, j, v = np.concatenate(rows), np.concatenate(cols), np.concatenate(vals)
    both_i, both_j = np.concatenate([i, j]), np.concatenate([j, i])
    affinity = scipy.sparse.coo_matrix((np.concatenate([v, v]), (both_i, both_j)), shape=(n, n))
    return affinity.tocsr()  # duplicates are summed
