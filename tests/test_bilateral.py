"""The fast bilateral solver (deepspectral.bilateral) against brute-force computations: the
grid operator pixel pair by pixel pair, the bistochastic normalisation, a dense solve of its
linear system, and what it does to a coarse mask."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse

from deepspectral import defaults
from deepspectral.bilateral import (
    RGB_TO_YUV,
    BilateralGrid,
    bilateral_solve,
    bistochastize,
    conjugate_gradient,
    grid_system,
    refine_mask,
)

from oracle import iou  # noqa: E402

SIGMAS = {"sigma_spatial": 3.0, "sigma_luma": 40.0, "sigma_chroma": 50.0}


def _small_image(seed=0, shape=(7, 9)):
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
    image[:, : shape[1] // 2] //= 4  # a dark half, for structure
    return image


def _brute_coordinates(image, sigma_spatial, sigma_luma, sigma_chroma):
    """Each pixel's 5-D cell, one pixel at a time."""
    out = []
    for y in range(image.shape[0]):
        for x in range(image.shape[1]):
            r, g, b = (float(v) for v in image[y, x])
            luma = 0.299 * r + 0.587 * g + 0.114 * b
            u = -0.168736 * r - 0.331264 * g + 0.5 * b + 128
            v = 0.5 * r - 0.418688 * g - 0.081312 * b + 128
            out.append((int(x // sigma_spatial), int(y // sigma_spatial), int(luma // sigma_luma), int(u // sigma_chroma), int(v // sigma_chroma)))
    return np.array(out)


def test_grid_operator_matches_pixel_pairs():
    """Sᵀ B̄ S between two pixels: 10 on the same cell, 1 on cells one step apart in one
    dimension, 0 otherwise."""
    image = _small_image()
    grid = BilateralGrid.from_image(image, **SIGMAS)
    dense = (grid.splat.T @ grid.blur @ grid.splat).toarray()
    coords = _brute_coordinates(image, **SIGMAS)
    n = len(coords)
    for p in range(n):
        for q in range(n):
            diff = np.abs(coords[p] - coords[q])
            expected = 10.0 if diff.sum() == 0 else (1.0 if diff.sum() == 1 else 0.0)
            assert dense[p, q] == expected, (p, q, coords[p], coords[q])
    assert grid.n_vertices == len({tuple(c) for c in coords})
    np.testing.assert_allclose(RGB_TO_YUV.sum(axis=1), [1.0, 0.0, 0.0], atol=1e-12)


def test_bistochastization_converges_and_rows_sum_to_m():
    grid = BilateralGrid.from_image(_small_image(1, (12, 14)), **SIGMAS)
    m = np.asarray(grid.splat.sum(axis=1)).ravel()
    n, m_out = bistochastize(grid, steps=200)
    # the fixed point: n ⊙ B̄ n = S 1 (vertex pixel counts)
    np.testing.assert_allclose(n * (grid.blur @ n), m, rtol=1e-6)
    # with m corrected exactly, the smoothness matrix has the constants in its null space
    n10, m10 = bistochastize(grid)
    smooth = scipy.sparse.diags(m10) - scipy.sparse.diags(n10) @ grid.blur @ scipy.sparse.diags(n10)
    np.testing.assert_allclose(smooth @ np.ones(grid.n_vertices), 0.0, atol=1e-9)
    np.testing.assert_allclose(m_out, n * (grid.blur @ n))
    with pytest.raises(ValueError, match="steps"):
        bistochastize(grid, steps=-1)


def test_solver_matches_a_dense_solve_of_its_system():
    image = _small_image(2, (16, 18))
    rng = np.random.default_rng(3)
    target = (rng.random(image.shape[:2]) > 0.6).astype(np.float64)
    confidence = rng.uniform(0.2, 1.0, image.shape[:2])
    grid = BilateralGrid.from_image(image, **SIGMAS)
    matrix, b, start = grid_system(grid, target, confidence, lam=4.0)
    dense = np.linalg.solve(matrix.toarray(), b)
    # the system itself, entry by entry from its definition
    n, m = bistochastize(grid)
    expected = 4.0 * (np.diag(m) - np.diag(n) @ grid.blur.toarray() @ np.diag(n)) + np.diag(grid.splat @ confidence.ravel())
    np.testing.assert_allclose(matrix.toarray(), expected, atol=1e-12)
    np.testing.assert_allclose(b, grid.splat @ (confidence * target).ravel())
    # the solver run to convergence returns the dense solution, sliced to the pixels
    out = bilateral_solve(image, target, confidence, lam=4.0, cg_tol=1e-12, cg_maxiter=10_000, **SIGMAS)
    np.testing.assert_allclose(out, (grid.splat.T @ dense).reshape(target.shape), atol=1e-8)


def test_conjugate_gradient_on_a_random_spd_matrix():
    rng = np.random.default_rng(0)
    q = rng.standard_normal((30, 30))
    a = q @ q.T + 0.5 * np.eye(30)
    b = rng.standard_normal(30)
    x, iterations = conjugate_gradient(a, b, np.zeros(30), preconditioner=1 / np.diag(a), tol=1e-12, maxiter=500)
    np.testing.assert_allclose(x, np.linalg.solve(a, b), atol=1e-8)
    assert 0 < iterations <= 500
    x0, it0 = conjugate_gradient(a, b, np.linalg.solve(a, b), preconditioner=np.ones(30), tol=1e-6, maxiter=5)
    assert it0 == 0  # already solved
    _, capped = conjugate_gradient(a, b, np.zeros(30), preconditioner=np.ones(30), tol=1e-14, maxiter=3)
    assert capped == 3


def test_refinement_snaps_a_blocky_mask_to_the_object():
    h, w = 96, 128
    yy, xx = np.mgrid[:h, :w]
    truth = (yy - 48) ** 2 + (xx - 60) ** 2 < 30**2
    rng = np.random.default_rng(0)
    image = np.where(truth[..., None], [200, 60, 50], [40, 110, 60]) + rng.integers(-8, 9, (h, w, 3))
    image = np.clip(image, 0, 255).astype(np.uint8)
    coarse = np.kron(truth.reshape(h // 16, 16, w // 16, 16).mean(axis=(1, 3)) > 0.5, np.ones((16, 16))).astype(bool)
    refined = refine_mask(image, coarse)
    assert refined.dtype == np.float32 and refined.min() >= 0 and refined.max() <= 1
    assert iou(refined > 0.5, truth) > iou(coarse, truth) + 0.05
    assert iou(refined > 0.5, truth) > 0.9


def test_arguments_are_checked():
    image = _small_image()
    with pytest.raises(ValueError, match="target"):
        bilateral_solve(image, np.zeros((3, 3)))
    with pytest.raises(ValueError, match="sigma_spatial"):
        bilateral_solve(image, np.zeros(image.shape[:2]), sigma_spatial=0)
    with pytest.raises(ValueError, match="cg_maxiter"):
        bilateral_solve(image, np.zeros(image.shape[:2]), cg_maxiter=0)
    with pytest.raises(ValueError, match="confidence"):
        bilateral_solve(image, np.zeros(image.shape[:2]), -1.0)
    with pytest.raises(ValueError, match="reference"):
        BilateralGrid.from_image(np.zeros((4, 4)))
    assert defaults.BILATERAL_PARAMS["lam"] == 256.0
