"""Soft layers from eigenvectors (spectral matting) and the object side of a split.

**Spectral matting layers** (after Levin, Rav-Acha & Lischinski 2008, simplified): the
``K`` eigenvectors span a smooth, edge-aware subspace that contains the constant vector.
Starting from a hard partition (seeded k-means++ on the rows of the eigenvector matrix,
or a given labelling), the layers alternate between the orthogonal projection onto that
subspace and the projection onto the probability simplex per pixel (clip to ``[0, 1]``,
renormalise to sum 1). Because the constant vector lies in the subspace, the projection
keeps the sum at 1; the result is non-negative, sums to 1 at every pixel and is soft
only where the eigenvectors are. This replaces Levin et al.'s Newton iterations on a
sparsity prior with a projection scheme that needs no tuning.
"""

from __future__ import annotations

import numpy as np

__all__ = ["LAYER_ITERATIONS", "matting_layers", "foreground_side", "renormalise"]

#: Iterations of the alternating projections of :func:`matting_layers`.
LAYER_ITERATIONS = 30


def matting_layers(
    eigenvectors: np.ndarray,
    n_layers: int,
    *,
    labels: np.ndarray | None = None,
    iterations: int = LAYER_ITERATIONS,
    seed: int = 0,
) -> np.ndarray:
    """Soft layers (non-negative, summing to 1 per pixel) from eigenvectors (spectral matting).

    Parameters
    ----------
    eigenvectors : (K, ...) float
        Eigenvectors (the constant one included, or not: it is added to the span).
    n_layers : int >= 1
        Number of layers.
    labels : (...) int, optional
        Initial hard partition, values in ``[0, n_layers)``; default: k-means++ (seeded)
        on the rows of the non-constant eigenvectors (each scaled to unit RMS).
    iterations : int, default 30
        Alternating projections (span of the eigenvectors ↔ probability simplex).
    seed : int, default 0

    Returns
    -------
    (n_layers, ...) float32, each pixel's values in [0, 1] summing to 1; layers ordered by
    decreasing area (sum of alpha) when ``labels`` is not given, else in label order.
    """
    vectors = np.asarray(eigenvectors, dtype=np.float64)
    if vectors.ndim < 2:
        raise ValueError(f"eigenvectors: expected shape (K, ...), got {vectors.shape}")
    if not isinstance(n_layers, (int, np.integer)) or n_layers < 1:
        raise ValueError(f"n_layers: expected an integer >= 1, got {n_layers!r}")
    if not isinstance(iterations, (int, np.integer)) or iterations < 0:
        raise ValueError(f"iterations: expected an integer >= 0, got {iterations!r}")
    spatial = vectors.shape[1:]
    flat = vectors.reshape(len(vectors), -1)
    n = flat.shape[1]
    basis = np.vstack([np.ones((1, n)), flat]).T  # (N, K + 1)
    q, r = np.linalg.qr(basis)
    keep = np.abs(np.diag(r)) > 1e-8 * max(1.0, float(np.abs(np.diag(r)).max()))
    q = q[:, keep]  # orthonormal basis of the span (constant included)
    if labels is None:
        from scipy.cluster.vq import kmeans2

        embedding = flat[1:] if len(flat) > 1 else flat
        embedding = embedding - embedding.mean(axis=1, keepdims=True)
        embedding = embedding / np.maximum(np.sqrt((embedding**2).mean(axis=1, keepdims=True)), 1e-12)
        if n_layers == 1:
            labels_flat = np.zeros(n, np.int64)
        else:
            _, labels_flat = kmeans2(embedding.T, n_layers, minit="++", seed=np.random.default_rng(seed))
    else:
        labels_flat = np.asarray(labels).reshape(-1)
        if labels_flat.size != n:
            raise ValueError(f"labels: expected {spatial} values, got shape {np.shape(labels)}")
        if labels_flat.min() < 0 or labels_flat.max() >= n_layers:
            raise ValueError(f"labels: expected values in [0, {n_layers}), got [{labels_flat.min()}, {labels_flat.max()}]")
    layers = np.zeros((n_layers, n))
    layers[labels_flat, np.arange(n)] = 1.0
    for _ in range(int(iterations)):
        layers = (layers @ q) @ q.T  # projection onto the span keeps the sum at 1
        np.clip(layers, 0.0, 1.0, out=layers)
        total = layers.sum(axis=0)
        empty = total <= 1e-12
        layers[:, empty] = 1.0 / n_layers
        total[empty] = 1.0
        layers /= total[None, :]
    if labels is None:
        layers = layers[np.argsort(-layers.sum(axis=1), kind="stable")]
    return layers.reshape(n_layers, *spatial).astype(np.float32)


def foreground_side(split: np.ndarray) -> np.ndarray:
    """The side of a two-way split (e.g. of the Fiedler vector) that is the object to cut out.

    The localization's rule (the positive, minority side) would make any object that
    fills more than half of the photo its background. For matting the side that lies
    less on the image border is the object: of ``split`` and ``~split`` the one whose
    share of border cells, relative to its area, is smaller (a border prior; ties keep
    ``split``).

    Parameters
    ----------
    split : (h, w) bool

    Returns
    -------
    (h, w) bool
    """
    side = np.asarray(split, dtype=bool)
    if side.all() or not side.any() or min(side.shape) < 3:
        return side
    edge = np.zeros(side.shape, bool)
    edge[0], edge[-1], edge[:, 0], edge[:, -1] = True, True, True, True

    def border_density(part: np.ndarray) -> float:
        return float((part & edge).sum()) / float(part.sum())

    return ~side if border_density(side) > border_density(~side) else side


def renormalise(layers: np.ndarray) -> np.ndarray:
    """Layers clipped to ``[0, 1]`` and divided by their sum at each pixel.

    Parameters
    ----------
    layers : (L, ...) float

    Returns
    -------
    (L, ...) float32 summing to 1 at every pixel; pixels that no layer covers (sum of the
    clipped layers <= 1e-6) get ``1 / L`` each.
    """
    layers = np.clip(layers, 0.0, 1.0)
    total = layers.sum(axis=0, keepdims=True)
    uniform = np.full_like(layers, 1.0 / len(layers))
    return np.where(total > 1e-6, layers / np.maximum(total, 1e-6), uniform).astype(np.float32)
