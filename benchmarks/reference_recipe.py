"""The paper's eigen-step as its published code does it, re-implemented for side-by-side
benchmarks: dense upsampled-feature Gram matrix (divided by its max), PyMatting's KNN
affinity made dense, a dense degree matrix, and shift-invert Lanczos
``eigsh(D - W, k, sigma=0, which="LM", M=D)`` (a sparse LU factorisation per image).

Only for benchmarks: the library's own path is :func:`deepspectral.decompose`.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse
import scipy.sparse.linalg

from deepspectral.affinity import knn_affinity
from deepspectral.geometry import resize_bilinear


def reference_eigenvectors(
    features: np.ndarray, image_small: np.ndarray, *, knn_lambda: float = 10.0, n_eigenvectors: int = 5
) -> tuple[np.ndarray, np.ndarray]:
    """Eigenpairs the reference way.

    Parameters
    ----------
    features : (h_p, w_p, C) float32
        Patch features.
    image_small : (h, w, 3) float32 in [0, 1]
        The cropped image resized to the working grid.

    Returns
    -------
    eigenvalues : (K,), eigenvectors : (K, h * w) float32 with the reference's sign rule.
    """
    grid = image_small.shape[:2]
    normalised = features / np.linalg.norm(features, axis=2, keepdims=True)
    upsampled = resize_bilinear(normalised, grid).reshape(grid[0] * grid[1], -1)
    w_feat = upsampled @ upsampled.T
    w_feat = w_feat * (w_feat > 0)
    w_feat = w_feat / w_feat.max()
    if knn_lambda > 0:
        w_color = np.asarray(knn_affinity(image_small).todense(), dtype=np.float32)
    else:
        w_color = 0
    w_comb = w_feat + w_color * knn_lambda
    d_comb = np.diag(w_comb.sum(axis=1))
    try:
        values, vectors = scipy.sparse.linalg.eigsh(d_comb - w_comb, k=n_eigenvectors, sigma=0, which="LM", M=d_comb)
    except Exception:  # the reference falls back the same way
        values, vectors = scipy.sparse.linalg.eigsh(d_comb - w_comb, k=n_eigenvectors, which="SM", M=d_comb)
    vectors = vectors.T.astype(np.float32)
    for vector in vectors:
        if 0.5 < np.mean(vector > 0) < 1.0:
            vector *= -1
    return values, vectors
