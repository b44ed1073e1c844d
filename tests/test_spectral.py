"""Numerics of the affinity and the eigensolver, checked against independent computations."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg

from deepspectral import PatchFeatures, decompose, localize
from deepspectral.affinity import feature_affinity, knn_affinity
from deepspectral.geometry import interpolation_matrix, resize_bilinear
from deepspectral.spectral import (
    affinity_matrix,
    grid_affinity,
    laplacian_eigenvectors,
    ncut_sweep,
    orient_eigenvectors,
)
from deepspectral.store import load_decomposition, save_decomposition


def smooth_features(h: int, w: int, c: int, seed: int) -> np.ndarray:
    """Spatially smooth random features with a few regions, like real ViT features."""
    rng = np.random.default_rng(seed)
    centres = rng.uniform(0, 1, size=(4, 2))
    directions = rng.standard_normal((4, c))
    yy, xx = np.meshgrid(np.linspace(0, 1, h), np.linspace(0, 1, w), indexing="ij")
    dist = (yy[..., None] - centres[:, 0]) ** 2 + (xx[..., None] - centres[:, 1]) ** 2
    weights = np.exp(-dist / 0.05)
    features = weights @ directions + 0.3 * rng.standard_normal((h, w, c))
    return features.astype(np.float32)


# --------------------------------------------------------------------------- interpolation


@pytest.mark.parametrize("n_in,n_out", [(5, 10), (23, 46), (7, 3), (1, 4), (9, 9), (37, 64)])
def test_interpolation_matches_torch(n_in, n_out):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, n_in)).astype(np.float32)
    expected = torch.nn.functional.interpolate(
        torch.from_numpy(x)[None], size=n_out, mode="linear", align_corners=False
    )[0].numpy()
    got = (interpolation_matrix(n_in, n_out) @ x.T).T
    np.testing.assert_allclose(got, expected, atol=1e-6)


def test_resize_bilinear_matches_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    image = rng.uniform(0, 1, (37, 50, 3)).astype(np.float32)
    expected = torch.nn.functional.interpolate(
        torch.from_numpy(image).permute(2, 0, 1)[None], size=(9, 13), mode="bilinear", align_corners=False
    )[0].permute(1, 2, 0).numpy()
    np.testing.assert_allclose(resize_bilinear(image, (9, 13)), expected, atol=1e-5)


# --------------------------------------------------------------------------- affinities


@pytest.mark.parametrize("grid", [(6, 5), (12, 10), (9, 7)])
def test_feature_affinity_equals_gram_of_upsampled_features(grid):
    features = smooth_features(6, 5, 16, seed=2)
    normalised = features / np.linalg.norm(features, axis=2, keepdims=True)
    upsampled = resize_bilinear(normalised, grid).reshape(-1, 16).astype(np.float64)
    expected = np.maximum(upsampled @ upsampled.T, 0.0)
    got = feature_affinity(features, grid)
    assert got.shape == (grid[0] * grid[1],) * 2 and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, atol=1e-5)


def brute_force_knn_affinity(image: np.ndarray, settings, kernel: str) -> np.ndarray:
    h, w = image.shape[:2]
    n = h * w
    xs, ys = np.meshgrid(np.linspace(0, 1, w), np.linspace(0, 1, h))
    affinity = np.zeros((n, n))
    for k, spatial in settings:
        points = np.column_stack([image.reshape(n, 3), spatial * xs.ravel(), spatial * ys.ravel()])
        dist = np.sqrt(((points[:, None, :] - points[None, :, :]) ** 2).sum(-1))
        for i in range(n):
            for j in np.argsort(dist[i], kind="stable")[:k]:
                weight = 1.0 if kernel == "binary" else max(1.0 - dist[i, j], 0.0)
                affinity[i, j] += weight
                affinity[j, i] += weight
    return affinity


@pytest.mark.parametrize("kernel", ["binary", "soft"])
def test_knn_affinity_matches_brute_force(kernel):
    rng = np.random.default_rng(3)
    image = rng.uniform(0, 1, (7, 9, 3))  # continuous colours: no distance ties
    settings = ((5, 2.0), (3, 0.1))
    expected = brute_force_knn_affinity(image, settings, kernel)
    got = knn_affinity(image.astype(np.float32), settings=settings, kernel=kernel).toarray()
    np.testing.assert_allclose(got, expected, atol=1e-5)
    np.testing.assert_allclose(got, got.T)


@pytest.mark.parametrize(
    "shape,k,spatial",
    [((23, 31), 20, 2.0), ((40, 34), 10, 0.1), ((1, 50), 7, 2.0), ((45, 1), 7, 2.0), ((3, 4), 30, 2.0)],
)
def test_image_knn_matches_brute_force(shape, k, spatial):
    """Both search paths (rings where a pixel step is large, the k-d tree otherwise) and
    degenerate grids, against a brute-force search in float64."""
    from deepspectral.affinity import RING_SEARCH_MIN_STEP, image_knn

    rng = np.random.default_rng(sum(shape) + k)
    # smooth colours plus noise: neighbours at many distances, no exact ties
    image = (np.linspace(0, 1, shape[0] * shape[1]).reshape(*shape, 1) + rng.uniform(0, 0.3, (*shape, 3))) / 1.3
    distances, indices = image_knn(image.astype(np.float32), k, spatial)
    n = shape[0] * shape[1]
    k = min(k, n)
    xs, ys = np.meshgrid(np.linspace(0, 1, shape[1], dtype=np.float32), np.linspace(0, 1, shape[0], dtype=np.float32))
    points = np.column_stack([image.astype(np.float32).reshape(n, 3), spatial * xs.ravel(), spatial * ys.ravel()])
    points = points.astype(np.float64)
    full = np.sqrt(((points[:, None] - points[None]) ** 2).sum(-1))
    expected = np.argsort(full, axis=1, kind="stable")[:, :k]
    assert indices.shape == (n, k) and distances.dtype == np.float32
    np.testing.assert_array_equal(np.sort(indices, axis=1), np.sort(expected, axis=1))
    np.testing.assert_allclose(distances, np.take_along_axis(full, expected, axis=1), atol=1e-6)
    assert np.all(np.diff(distances, axis=1) >= 0) and np.all(indices[:, 0] == np.arange(n))
    # the parametrisation covers both paths
    step = spatial / max(shape[0] - 1, shape[1] - 1, 1)
    assert (step >= RING_SEARCH_MIN_STEP) == (spatial == 2.0)


def test_knn_affinity_default_settings_row_sums():
    # binary kernel: each row holds its own 20 + 10 neighbours, the self pair counted twice
    rng = np.random.default_rng(4)
    got = knn_affinity(rng.uniform(0, 1, (12, 15, 3)).astype(np.float32))
    assert got.sum(axis=1).min() >= 32 - 1e-6
    assert got.diagonal().min() == 4  # self is a neighbour in both settings, both directions
    assert abs(got - got.T).max() == 0


def test_knn_affinity_rejects_bad_kernel():
    with pytest.raises(ValueError, match="kernel"):
        knn_affinity(np.zeros((3, 3, 3), np.float32), kernel="gaussian")


# --------------------------------------------------------------------------- eigensolver


def dense_generalised_eigenpairs(affinity: np.ndarray, k: int):
    affinity = affinity.astype(np.float64)
    degree = np.diag(affinity.sum(axis=1))
    return scipy.linalg.eigh(degree - affinity, degree, subset_by_index=[0, k - 1])


@pytest.mark.parametrize("grid,seed", [((16, 20), 0), ((30, 40), 1), ((25, 33), 2)])
def test_eigenpairs_match_dense_eigh(grid, seed):
    """Covers the dense path (320 nodes) and the Lanczos path (1200 and 825 nodes)."""
    rng = np.random.default_rng(seed)
    features = smooth_features(grid[0] // 2, grid[1] // 2, 32, seed)
    image = resize_bilinear(rng.uniform(0, 1, (grid[0] // 4, grid[1] // 4, 3)).astype(np.float32), grid)
    affinity = affinity_matrix(features, image, knn_lambda=10.0)
    k = 6
    expected_values, expected_vectors = dense_generalised_eigenpairs(affinity, k)
    values, vectors = laplacian_eigenvectors(affinity.copy(), k)
    np.testing.assert_allclose(values, np.clip(expected_values, 0, None), atol=1e-5)
    degree = affinity.sum(axis=1, dtype=np.float64)
    for i in range(k):
        gap = min(
            abs(expected_values[i] - expected_values[j]) for j in range(k) if j != i
        ) if k > 1 else 1.0
        if i == k - 1 or gap < 1e-3:  # no clear gap (the last one's gap to k+1 is unknown here)
            continue
        mine = vectors[i].astype(np.float64)
        ref = expected_vectors[:, i]
        cos = abs(mine @ (degree * ref)) / np.sqrt((mine @ (degree * mine)) * (ref @ (degree * ref)))
        assert cos > 0.999, (i, cos)
    # D-orthonormality like eigsh(D - W, M=D)
    gram = (vectors * degree[None]) @ vectors.T
    np.testing.assert_allclose(gram, np.eye(k), atol=1e-4)


def test_first_eigenvector_is_constant_and_eigenvalue_zero():
    features = smooth_features(10, 12, 16, seed=5)
    image = np.full((20, 24, 3), 0.5, np.float32)
    values, vectors = laplacian_eigenvectors(affinity_matrix(features, image), 4)
    assert values[0] == 0.0 and np.all(np.diff(values) >= -1e-9)
    assert np.ptp(vectors[0]) < 1e-5 * np.abs(vectors[0]).max()


def test_orientation_makes_positive_side_the_minority():
    vectors = np.array([[1.0, 1.0, 1.0, -1.0], [-1.0, -1.0, 2.0, 0.5], [3.0, -1.0, -1.0, -1.0]], np.float32)
    oriented = orient_eigenvectors(vectors.copy())
    for row in oriented:
        share = np.mean(row > 0)
        assert share <= 0.5 or share == 1.0
    np.testing.assert_array_equal(oriented[2], [3.0, -1.0, -1.0, -1.0])


# --------------------------------------------------------------------------- decompose / localize


def test_ncut_sweep_matches_brute_force():
    rng = np.random.default_rng(4)
    n = 60
    weights = rng.random((n, n)) * (rng.random((n, n)) < 0.3)
    weights = (weights + weights.T).astype(np.float32)
    np.fill_diagonal(weights, 1.0)
    vector = rng.standard_normal(n)
    upper = np.triu(weights)
    upper[np.tril_indices(n, -1)] = np.nan  # the lower triangle is never read
    best, best_split = np.inf, None
    degree = weights.astype(np.float64).sum(axis=1)
    for threshold in np.sort(vector)[1:]:  # every split of the sorted values, brute force
        inside = vector >= threshold
        cut = weights[inside][:, ~inside].astype(np.float64).sum()
        ncut = cut / degree[inside].sum() + cut / degree[~inside].sum()
        if ncut < best:
            best, best_split = ncut, inside
    np.testing.assert_array_equal(ncut_sweep(vector, upper), best_split)
    # two dense clusters joined by weak edges: the split is between them, not at 0
    blocks = np.full((n, n), 0.01, np.float32)
    blocks[:10, :10] = blocks[10:, 10:] = 1.0
    shifted = np.r_[np.full(10, 0.9), np.full(n - 10, 0.5)] + 0.01 * rng.standard_normal(n)
    np.testing.assert_array_equal(ncut_sweep(shifted, np.triu(blocks)), np.arange(n) < 10)
    assert ncut_sweep(np.ones(1), np.ones((1, 1), np.float32)).all()
    with pytest.raises(ValueError, match="affinity"):
        ncut_sweep(vector, upper[:-1])


def rectangle_case(seed: int = 0, patch: int = 16):
    """An image with a coloured rectangle, and oracle features that know the rectangle."""
    rng = np.random.default_rng(seed)
    height, width = 200, 264
    image = np.empty((height, width, 3), np.uint8)
    image[:] = (40, 120, 60)
    box = (96, 48, 192, 128)  # x1, y1, x2, y2 on patch (16) boundaries
    image[box[1] : box[3], box[0] : box[2]] = (200, 40, 40)
    image = np.clip(image + rng.normal(0, 6, image.shape), 0, 255).astype(np.uint8)
    h, w = height // patch, width // patch
    fg, bg = rng.standard_normal(64), rng.standard_normal(64)
    features = np.where(np.zeros((h, w, 1), bool), 0, bg) + 0.3 * rng.standard_normal((h, w, 64))
    features[box[1] // patch : box[3] // patch, box[0] // patch : box[2] // patch] += fg - bg
    feats = PatchFeatures(features.astype(np.float32), patch, (height, width), (height, width))
    return image, feats, box


def test_localize_recovers_rectangle():
    image, feats, box = rectangle_case()
    dec = decompose(feats, image)
    assert dec.eigenvectors.shape == (5, 192 // 8, 256 // 8)  # crop to a multiple of 16, then 1/8
    assert dec.eigenvectors.dtype == np.float32
    got = localize(dec)
    assert all(abs(a - b) <= 8 for a, b in zip(got, box)), (got, box)


def test_localize_maps_back_through_max_size_resize():
    image, feats, box = rectangle_case()
    # the same features, as if the image had been downscaled 2x for the decomposition
    big = np.repeat(np.repeat(image, 2, axis=0), 2, axis=1)
    small_feats = PatchFeatures(feats.features, 16, (400, 528), (200, 264))
    got = localize(decompose(small_feats, big))
    assert all(abs(a - 2 * b) <= 16 for a, b in zip(got, box)), (got, box)


def test_uniform_image_gives_defined_result():
    image = np.full((64, 96, 3), 128, np.uint8)
    feats = PatchFeatures(np.ones((4, 6, 8), np.float32), 16, (64, 96), (64, 96))
    dec = decompose(feats, image)
    assert np.all(np.isfinite(dec.eigenvectors)) and np.all(np.isfinite(dec.eigenvalues))
    x1, y1, x2, y2 = localize(dec)
    assert 0 <= x1 < x2 <= 96 and 0 <= y1 < y2 <= 64


def test_tiny_grid_caps_eigenvectors():
    image = np.zeros((16, 16, 3), np.uint8)
    feats = PatchFeatures(np.ones((1, 1, 8), np.float32), 16, (16, 16), (16, 16))
    dec = decompose(feats, image, n_eigenvectors=5)
    assert dec.eigenvectors.shape == (4, 2, 2)


def test_npz_round_trip(tmp_path):
    image, feats, _ = rectangle_case()
    dec = decompose(feats, image, knn_lambda=8.0)
    path = tmp_path / "x.npz"
    save_decomposition(path, dec)
    back = load_decomposition(path)
    np.testing.assert_array_equal(back.eigenvectors, dec.eigenvectors)
    assert back.settings["knn_lambda"] == 8.0 and back.crop_size == dec.crop_size
    assert list(tmp_path.iterdir()) == [path]  # no temp file left


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"knn_lambda": -1.0}, "knn_lambda"),
        ({"n_eigenvectors": 0}, "n_eigenvectors"),
        ({"knn_kernel": "nope"}, "knn_kernel"),
    ],
)
def test_decompose_rejects_bad_arguments(kwargs, match):
    image, feats, _ = rectangle_case()
    with pytest.raises(ValueError, match=match):
        decompose(feats, image, **kwargs)


def test_decompose_rejects_mismatched_image():
    image, feats, _ = rectangle_case()
    with pytest.raises(ValueError, match="image"):
        decompose(feats, image[:100])


@pytest.mark.parametrize("kernel", ["binary", "soft"])
def test_upper_only_affinity_matches_full(kernel):
    features = smooth_features(8, 10, 16, seed=6)
    image = np.random.default_rng(6).uniform(0, 1, (16, 20, 3)).astype(np.float32)
    full = affinity_matrix(features, image, knn_kernel=kernel)
    np.testing.assert_allclose(full, full.T, atol=1e-6)
    expected = feature_affinity(features, (16, 20)) + 10.0 * knn_affinity(image, kernel=kernel).toarray()
    np.testing.assert_allclose(full, expected, atol=1e-4)
    upper = affinity_matrix(features, image, knn_kernel=kernel, upper_only=True)
    np.testing.assert_allclose(np.triu(upper), np.triu(full), atol=1e-5)


@pytest.mark.parametrize("n_nodes_side", [(16, 20), (30, 40)])
def test_eigensolver_reads_only_the_upper_triangle(n_nodes_side):
    features = smooth_features(n_nodes_side[0] // 2, n_nodes_side[1] // 2, 16, seed=7)
    image = np.random.default_rng(7).uniform(0, 1, (*n_nodes_side, 3)).astype(np.float32)
    full = affinity_matrix(features, image)
    poisoned = full.copy()
    poisoned[np.tril_indices_from(poisoned, -1)] = np.nan
    values, vectors = laplacian_eigenvectors(full, 5)
    values_upper, vectors_upper = laplacian_eigenvectors(poisoned, 5, upper_only=True)
    np.testing.assert_allclose(values_upper, values, atol=1e-6)
    for a, b in zip(vectors, vectors_upper):
        assert abs(np.dot(a, b)) / (np.linalg.norm(a) * np.linalg.norm(b)) > 0.9999


def test_blas_threads_limited_inside_and_restored_after():
    from threadpoolctl import threadpool_info

    from deepspectral.spectral import single_threaded_blas

    def blas_threads():
        return [info["num_threads"] for info in threadpool_info() if info["user_api"] == "blas"]

    before = blas_threads()
    with single_threaded_blas():
        with single_threaded_blas():  # nested / concurrent users keep the limit
            assert all(n == 1 for n in blas_threads())
        assert all(n == 1 for n in blas_threads())
    assert blas_threads() == before
    image, feats, _ = rectangle_case()
    decompose(feats, image)
    assert blas_threads() == before


def test_decompose_from_several_threads_matches_sequential():
    """Parallel kernels are launched one at a time (numba's workqueue layer aborts on
    concurrent launches): threads decomposing side by side get the sequential results."""
    from concurrent.futures import ThreadPoolExecutor

    rng = np.random.default_rng(11)
    jobs = []
    for seed in range(4):
        image = (rng.uniform(0, 255, (96, 128, 3))).astype(np.uint8)
        features = PatchFeatures(
            features=smooth_features(6, 8, 16, seed), patch_size=16, image_size=(96, 128),
            input_size=(96, 128), backbone="oracle",
        )  # fmt: skip
        jobs.append((features, image))
    sequential = [decompose(f, image) for f, image in jobs]
    with ThreadPoolExecutor(max_workers=4) as pool:
        threaded = list(pool.map(lambda job: decompose(*job), jobs * 3))
    for expected, got in zip(sequential * 3, threaded):
        np.testing.assert_array_equal(got.eigenvectors, expected.eigenvectors)


def test_grid_affinity_results_do_not_alias():
    # issue #11: grid_affinity used to return a per-thread buffer that the next call overwrote
    rng = np.random.default_rng(3)
    a_feats, b_feats = rng.standard_normal((2, 3, 4, 8)).astype(np.float32)
    colours = rng.uniform(0, 1, (6, 8, 3)).astype(np.float32)
    first = grid_affinity(a_feats, colours)
    kept = first.copy()
    second = grid_affinity(b_feats, colours)
    assert not np.shares_memory(first, second)
    np.testing.assert_array_equal(first, kept)
    np.testing.assert_array_equal(np.triu(first), np.triu(affinity_matrix(a_feats, colours, upper_only=True)))
