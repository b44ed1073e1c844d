"""k-means for semantic segmentation: the per-image k-means of the segments and the
dataset-level k-means of the segment features (streamed, never all in memory).

scikit-learn (``pip install "deepspectral[semseg]"``) is imported where it is used.
"""

from __future__ import annotations

import sys
from typing import Callable, Iterable

import numpy as np

__all__ = [
    "assign_clusters",
    "cluster_features",
    "kmeans_points",
    "SAMPLE_SIZE",
    "KMEANS_N_INIT",
    "MINIBATCH_SIZE",
    "MINIBATCH_EPOCHS",
]

#: Rows of exact k-means at most; beyond, streamed mini-batch k-means refines it.
SAMPLE_SIZE = 50_000
#: Restarts of the exact k-means (the best inertia is kept).
KMEANS_N_INIT = 4
#: Rows per mini-batch of the streamed refinement.
MINIBATCH_SIZE = 4096
#: Passes of the streamed refinement over the whole dataset.
MINIBATCH_EPOCHS = 2
#: Rounding (decimals) under which two points count as the same when k is capped at the
#: number of distinct points.
_DISTINCT_DECIMALS = 6


def _sklearn_cluster():
    """``sklearn.cluster``, or an ImportError naming the pip extra that installs it."""
    try:
        import sklearn.cluster
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError(
            'semantic segmentation needs scikit-learn: pip install "deepspectral[semseg]"'
        ) from error
    return sklearn.cluster


def kmeans_points(points: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Seeded k-means labels of points with at most ``k`` clusters.

    Parameters
    ----------
    points : (N, D) float
    k : int
        Clusters wanted; fewer when there are fewer distinct points.
    seed : int

    Returns
    -------
    (N,) int32
        Cluster of every point (all 0 when at most one cluster is possible).
    """
    cluster = _sklearn_cluster()
    distinct = np.unique(np.round(points, _DISTINCT_DECIMALS), axis=0).shape[0]
    k = int(min(k, distinct))
    if k <= 1:
        return np.zeros(points.shape[0], dtype=np.int32)
    kmeans = cluster.KMeans(n_clusters=k, n_init=KMEANS_N_INIT, random_state=seed)
    return kmeans.fit_predict(points.astype(np.float64)).astype(np.int32)


def assign_clusters(features: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Nearest centroid of each feature (Euclidean; cosine for unit rows).

    Parameters
    ----------
    features : (N, C) float
    centroids : (K, C) float

    Returns
    -------
    (N,) int32
        Index of the nearest centroid (ties: the smaller index).
    """
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
    epochs : int
        Passes of the streamed refinement (0: none).
    total : int, optional
        Number of rows (one counting pass is made when missing).
    verbose : bool
        A progress bar for the streamed refinement.

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
    return _refine(chunks, cluster, centroids, rng=rng, seed=seed, epochs=epochs, total=total, verbose=verbose)


def _refine(chunks: Callable[[], Iterable[np.ndarray]], cluster, centroids: np.ndarray, *,
            rng: np.random.Generator, seed: int, epochs: int, total: int, verbose: bool) -> np.ndarray:
    """Mini-batch k-means from ``(K, C)`` ``centroids``, streamed ``epochs`` times over
    ``chunks()``; each batch of ``MINIBATCH_SIZE`` rows is shuffled by ``rng`` (the
    generator that drew the sample, so the result depends on ``seed`` only).

    Returns
    -------
    (K, C) float32
    """
    from tqdm.auto import tqdm

    n_clusters = centroids.shape[0]
    refine = cluster.MiniBatchKMeans(
        n_clusters=n_clusters, init=centroids, n_init=1,
        batch_size=MINIBATCH_SIZE, random_state=seed,
    )
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
