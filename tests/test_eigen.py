"""The normalised-Laplacian eigensolver (``deepspectral.eigen``): every operator kind and
solver against dense ``scipy.linalg.eigh`` of ``(D - W) y = λ D y``, argument checks."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import scipy.linalg
import scipy.sparse

from deepspectral import eigen
from deepspectral.eigen import DenseAffinity, ProductAffinity, affinity_operator, laplacian_eigenvectors


def _clustered_affinity(n: int, seed: int = 0) -> np.ndarray:
    """A symmetric non-negative (n, n) float32 affinity with a few clusters (clear gaps)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((4, 8))
    points = centres[rng.integers(0, 4, n)] + 0.6 * rng.standard_normal((n, 8))
    points /= np.linalg.norm(points, axis=1, keepdims=True)
    return np.maximum(points @ points.T, 0.0).astype(np.float32)


def _reference(affinity: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    w = affinity.astype(np.float64)
    d = w.sum(axis=1)
    values, vectors = scipy.linalg.eigh(np.diag(d) - w, np.diag(d), subset_by_index=[0, k - 1])
    return values, vectors.T


def _assert_matches(values, vectors, affinity, k, atol=1e-4):
    ref_values, ref_vectors = _reference(affinity, k)
    degree = affinity.astype(np.float64).sum(axis=1)
    np.testing.assert_allclose(values, ref_values, atol=atol)
    assert values[0] == 0.0 and vectors.dtype == np.float32 and vectors.shape == (k, len(affinity))
    gram = (vectors.astype(np.float64) * degree) @ vectors.T.astype(np.float64)
    np.testing.assert_allclose(gram, np.eye(k), atol=1e-3)  # D-orthonormal
    for a, b in zip(vectors[1:], ref_vectors[1:]):
        cos = abs(float((a * b * degree).sum())) / np.sqrt(float((a * a * degree).sum()) * float((b * b * degree).sum()))
        assert cos == pytest.approx(1.0, abs=1e-3)


@pytest.mark.parametrize("n", [150, 700])  # dense eigh, then Lanczos
def test_dense_and_product_operators_match_dense_eigh(n):
    affinity = _clustered_affinity(n)
    k = 5
    _assert_matches(*laplacian_eigenvectors(affinity, k), affinity, k)
    upper = affinity.copy()
    upper[np.tril_indices(n, -1)] = -7.0  # only the upper triangle may be read
    _assert_matches(*laplacian_eigenvectors(upper, k, upper_only=True), affinity, k)
    sparse = scipy.sparse.csr_matrix(affinity)
    _assert_matches(*laplacian_eigenvectors(sparse, k, seed=1), affinity, k)
    _assert_matches(*laplacian_eigenvectors(ProductAffinity(lambda x: affinity @ x, n), k), affinity, k)


def test_lobpcg_from_a_rough_guess_matches_lanczos():
    n, k = 700, 4
    affinity = _clustered_affinity(n, seed=2)
    _, vectors = _reference(affinity, k)
    guess = vectors + 0.05 * np.random.default_rng(0).standard_normal(vectors.shape)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        values, found = laplacian_eigenvectors(
            scipy.sparse.csr_matrix(affinity), k, solver="lobpcg", initial=guess[:2], tol=1e-6
        )
    _assert_matches(values, found, affinity, k)


def test_isolated_node_and_every_eigenpair():
    affinity = _clustered_affinity(40)
    affinity[7, :] = affinity[:, 7] = 0.0  # degree 0: floored, no NaN
    values, vectors = laplacian_eigenvectors(affinity, 60)  # capped at N
    assert values.shape == (40,) and np.isfinite(vectors).all()
    assert np.all(np.diff(values) >= -1e-12) and values[0] == 0.0 and values.max() <= 2.0


def test_operator_kinds():
    affinity = _clustered_affinity(30)
    assert isinstance(affinity_operator(affinity), DenseAffinity)
    assert isinstance(affinity_operator(scipy.sparse.csr_matrix(affinity)), ProductAffinity)
    dense = DenseAffinity(affinity)
    x = np.random.default_rng(0).standard_normal((30, 3)).astype(np.float32)
    np.testing.assert_allclose(dense.matmat(x), affinity @ x, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dense.matmat(x[:, :1]), affinity @ x[:, :1], rtol=1e-5, atol=1e-5)
    product = affinity_operator(scipy.sparse.csr_matrix(affinity))
    np.testing.assert_array_equal(product.to_dense(), dense.to_dense())
    binary = (affinity > 0.5).astype(np.int64)  # other dtypes are solved in float64
    np.testing.assert_array_equal(
        laplacian_eigenvectors(binary, 3)[0], laplacian_eigenvectors(binary.astype(np.float64), 3)[0]
    )
    degree = affinity.sum(axis=1).astype(np.float64)
    np.testing.assert_allclose(dense.top_vector(degree), product.top_vector(degree), rtol=1e-12)


def test_rejects_bad_arguments():
    affinity = _clustered_affinity(20)
    with pytest.raises(ValueError, match="n_eigenvectors"):
        laplacian_eigenvectors(affinity, 0)
    with pytest.raises(ValueError, match="solver"):
        laplacian_eigenvectors(affinity, 3, solver="qr")
    with pytest.raises(ValueError, match="initial"):
        laplacian_eigenvectors(affinity, 3, solver="lobpcg")
    with pytest.raises(ValueError, match="initial"):
        laplacian_eigenvectors(affinity, 3, initial=np.ones((2, 20)))
    with pytest.raises(ValueError, match="tol"):
        laplacian_eigenvectors(affinity, 3, tol=-1.0)
    with pytest.raises(ValueError, match="maxiter"):
        laplacian_eigenvectors(affinity, 3, maxiter=0)
    with pytest.raises(ValueError, match="affinity"):
        laplacian_eigenvectors(affinity[:, :5], 3)
    with pytest.raises(ValueError, match="affinity"):
        laplacian_eigenvectors("matrix", 3)
    assert set(eigen.SOLVERS) == {"lanczos", "lobpcg"}
