"""The torch eigen-step (deepspectral.eigen_torch) against independent computations and the CPU path.

A "clear gap" (as in tests/test_spectral.py and benchmarks/bench_eigen.py): eigenvalue
``λ_i`` is at least ``GAP = 1e-3`` from ``λ_{i-1}`` and ``λ_{i+1}`` (absolute; the
eigenvalues of the normalised Laplacian lie in [0, 2], so 1e-3 is 5e-4 of the spectrum's
width), ``λ_K`` taken from a dense ``eigh``. Only there is an eigenvector defined well
enough for two solvers to agree; there the torch path must give ``|cos| >= 0.999``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from deepspectral import affinity as np_affinity
from deepspectral import eigen_torch
from deepspectral.spectral import decompose, grid_affinity, resolve_eigen_backend
from deepspectral.tasks.localize import localize

sys.path.insert(0, str(Path(__file__).parent))
from oracle import oracle_features, shared_data_dir  # noqa: E402

GAP = 1e-3
MIN_COS = 0.999


def _dense_reference(affinity: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Smallest ``k + 1`` eigenvalues, the ``k`` eigenvectors ``y`` and the degrees of the
    normalised affinity, by ``numpy.linalg.eigh`` in float64."""
    w = np.asarray(affinity, dtype=np.float64)
    degree = w.sum(axis=1)
    scale = 1.0 / np.sqrt(degree)
    mu, v = np.linalg.eigh(w * scale[:, None] * scale[None, :])
    lam = 1.0 - mu[::-1][: k + 1]
    return lam, (v[:, ::-1][:, :k] * scale[:, None]).T, degree


def _clear_gap_cosines(ref_values: np.ndarray, ref_vectors: np.ndarray, vectors: np.ndarray, degree) -> list[float]:
    """``|cos|`` (in the ``D`` inner product) between matching eigenvectors 1..K-1 whose
    eigenvalue has a clear gap."""
    out = []
    for i in range(1, len(vectors)):
        gap = min(ref_values[i] - ref_values[i - 1], ref_values[i + 1] - ref_values[i])
        if gap < GAP:
            continue
        a, b = ref_vectors[i].ravel(), vectors[i].ravel().astype(np.float64)
        out.append(abs(a @ (degree * b)) / np.sqrt((a @ (degree * a)) * (b @ (degree * b))))
    return out


def _clustered_affinity(n: int, clusters: int, seed: int) -> np.ndarray:
    """A symmetric non-negative ``(n, n)`` affinity with ``clusters`` groups of unequal size
    (so the first eigenvalues have clear gaps)."""
    rng = np.random.default_rng(seed)
    sizes = rng.dirichlet(np.full(clusters, 2.0)) * n
    labels = np.minimum(np.searchsorted(np.cumsum(sizes), np.arange(n) + 0.5), clusters - 1)
    w = rng.random((n, n)) * 0.05
    w += (labels[:, None] == labels[None, :]) * rng.random((n, n))
    return ((w + w.T) / 2).astype(np.float32)


# ---------------------------------------------------------------------------------------
# Affinity
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("patch_grid, grid", [((6, 9), (12, 18)), ((5, 7), (8, 12)), ((7, 5), (7, 5))])
def test_feature_affinity_matches_upsampled_gram(patch_grid, grid):
    rng = np.random.default_rng(0)
    features = rng.standard_normal((*patch_grid, 16)).astype(np.float32)
    got = eigen_torch.feature_affinity(torch.from_numpy(features)[None], grid)[0].numpy()
    # independent: torch's own bilinear resize of the normalised features, then the Gram matrix
    f = torch.from_numpy(features / np.linalg.norm(features, axis=-1, keepdims=True)).to(torch.float64)
    up = torch.nn.functional.interpolate(f.permute(2, 0, 1)[None], size=grid, mode="bilinear", align_corners=False)
    up = up[0].permute(1, 2, 0).reshape(grid[0] * grid[1], -1)
    expected = np.maximum((up @ up.T).numpy(), 0.0)
    np.testing.assert_allclose(got, expected, atol=2e-6)
    # and the numpy path (U G Uᵀ through the compiled kernels)
    np.testing.assert_allclose(got, np_affinity.feature_affinity(features, grid), atol=2e-6)


def _test_image(shape: tuple[int, int], seed: int) -> np.ndarray:
    """Colours with flat regions (three levels a channel): many exactly equal distances."""
    rng = np.random.default_rng(seed)
    return (rng.integers(0, 3, (*shape, 3)) / 2.0).astype(np.float32)


@pytest.mark.parametrize("kernel", ["binary", "soft"])
def test_knn_affinity_equals_ring_search(kernel):
    image = _test_image((14, 23), seed=1)  # both settings searched in rings on this grid
    got = eigen_torch.knn_affinity(torch.from_numpy(image)[None], kernel=kernel)[0].numpy()
    expected = np_affinity.knn_affinity(image, kernel=kernel).toarray()
    if kernel == "binary":  # same neighbours, ties included, same counts
        np.testing.assert_array_equal(got, expected)
    else:
        np.testing.assert_allclose(got, expected, atol=1e-6)


def test_knn_neighbours_equal_kd_tree_up_to_ties():
    image = _test_image((30, 44), seed=2)
    k, spatial = 10, 0.1  # 0.1 / 43 < RING_SEARCH_MIN_STEP: the CPU path uses its k-d tree
    assert spatial / 43 < np_affinity.RING_SEARCH_MIN_STEP
    _, cpu = np_affinity.image_knn(image, k, spatial)
    points = torch.from_numpy(np_affinity._colour_space_points(image, spatial))[None]
    squared = eigen_torch._squared_distances(points)
    got = eigen_torch._nearest(squared, k, image.shape[1])[0]
    rows = torch.arange(squared.shape[1])[:, None]
    # the same distances (so the same neighbours up to the order among equal distances)
    np.testing.assert_array_equal(
        np.sort(squared[0][rows, got].numpy(), axis=1), np.sort(squared[0][rows, torch.from_numpy(cpu)].numpy(), axis=1)
    )
    assert (np.sort(got.numpy(), axis=1) != np.sort(cpu, axis=1)).any(), "no tie: the test checks nothing"


# ---------------------------------------------------------------------------------------
# Eigensolver
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "n, dtype, k, clusters",
    [(600, torch.float32, 5, 6), (600, torch.float64, 5, 6), (120, torch.float32, 5, 6), (900, torch.float32, 16, 20)],
)
def test_eigenpairs_match_dense_eigh(n, dtype, k, clusters):
    """Batched (3 graphs), Krylov path above 400 nodes, dense below; K = 16 as semseg uses."""
    affinities = np.stack([_clustered_affinity(n, clusters, seed) for seed in range(3)])
    values, vectors = eigen_torch.laplacian_eigenvectors(torch.from_numpy(affinities).to(dtype), k)
    assert values.shape == (3, k) and vectors.shape == (3, k, n) and vectors.dtype == np.float32
    checked = 0
    for w, got_values, got_vectors in zip(affinities, values, vectors):
        lam, ref_vectors, degree = _dense_reference(w, k)
        np.testing.assert_allclose(got_values, lam[:k], atol=1e-5)
        assert got_values[0] == 0.0
        # D-orthonormal
        gram = (got_vectors.astype(np.float64) * degree) @ got_vectors.T.astype(np.float64)
        np.testing.assert_allclose(gram, np.eye(k), atol=1e-4)
        cosines = _clear_gap_cosines(lam, ref_vectors, got_vectors, degree)
        checked += len(cosines)
        assert min(cosines, default=1.0) >= MIN_COS
    assert checked >= 6


def test_eigensolver_validates_arguments():
    with pytest.raises(ValueError, match="n_eigenvectors"):
        eigen_torch.laplacian_eigenvectors(torch.ones(1, 4, 4), 0)
    with pytest.raises(ValueError, match="affinity"):
        eigen_torch.laplacian_eigenvectors(torch.ones(4, 4), 2)


def test_resolve_eigen_backend():
    assert resolve_eigen_backend("auto", "cuda:1") == "torch"
    assert resolve_eigen_backend("auto", "cpu") == "cpu"
    assert resolve_eigen_backend("auto", None) == "cpu"
    assert resolve_eigen_backend("torch", "cpu") == "torch"
    with pytest.raises(ValueError, match="eigen_backend"):
        resolve_eigen_backend("gpu", "cpu")


# ---------------------------------------------------------------------------------------
# Whole decompositions: oracle features and a random ViT on real photos
# ---------------------------------------------------------------------------------------

SOD = shared_data_dir() / "sod"
COCO = shared_data_dir() / "coco-mini" / "val2017"
needs_sod = pytest.mark.skipif(not (SOD / "GT").is_dir(), reason=f"no shared data at {SOD}")
needs_coco = pytest.mark.skipif(not COCO.is_dir(), reason=f"no shared data at {COCO}")
#: Longest side of the photos in these tests: grids of about 600 nodes, above the dense
#: solver's limit (the Krylov path runs) and fast on a CPU.
MAX_SIZE = 256


def _compare(features, image, cpu, got) -> int:
    """Assert the torch decomposition ``got`` agrees with the CPU one ``cpu``; return the
    number of eigenvectors compared."""
    affinity = grid_affinity(features.features, features.geometry.grid_colours(image))
    affinity = np.triu(affinity) + np.triu(affinity, 1).T
    k = len(cpu.eigenvalues)
    lam, ref_vectors, degree = _dense_reference(affinity, k)
    np.testing.assert_allclose(got.eigenvalues, lam[:k], atol=1e-5)
    cos_cpu = _clear_gap_cosines(lam, ref_vectors, cpu.eigenvectors, degree)
    cos_torch = _clear_gap_cosines(lam, ref_vectors, got.eigenvectors, degree)
    assert min(cos_torch, default=1.0) >= MIN_COS, cos_torch
    assert min(cos_cpu, default=1.0) >= MIN_COS, cos_cpu
    assert localize(got) == localize(cpu)
    assert got.eigenvectors.shape == cpu.eigenvectors.shape and got.eigenvectors.dtype == np.float32
    assert got.settings == {**cpu.settings, "eigen_backend": "torch"}
    return len(cos_torch)


@needs_sod
def test_oracle_features_on_photos_same_as_cpu():
    from PIL import Image

    names = sorted(path.stem for path in (SOD / "GT").glob("*.png"))[:4]
    compared = 0
    for seed, name in enumerate(names):
        image = np.asarray(Image.open(SOD / "images" / f"{name}.jpg").convert("RGB"))
        mask = np.asarray(Image.open(SOD / "GT" / f"{name}.png").convert("L")) > 127
        features = oracle_features(mask, patch_size=16, seed=seed, max_size=MAX_SIZE)
        cpu = decompose(features, image, eigen_backend="cpu")
        got = decompose(features, image, eigen_backend="torch")
        compared += _compare(features, image, cpu, got)
    assert compared >= 4


@needs_coco
def test_random_vit_batched_same_as_cpu(random_weights):
    """Several photos of one size in one call (the engine's batched path) against the CPU path."""
    from PIL import Image

    from deepspectral import Backbone
    from deepspectral.engine import Engine

    paths = sorted(COCO.glob("*.jpg"))[:3]
    images = [np.asarray(Image.open(path).convert("RGB").resize((240, 176))) for path in paths]

    class Item:
        def __init__(self, image):
            self.image = image

        def load_image(self):
            return self.image

    backbone = Backbone("dino_vits16", weights=random_weights, device="cpu")
    results = {}
    for backend in ("cpu", "torch"):
        engine = Engine(backbone, max_size=None, batch_size=3, eigen_backend=backend, keep_features=True)
        results[backend] = [result.check() for result in engine.run([Item(image) for image in images])]
    compared = 0
    for cpu, got in zip(results["cpu"], results["torch"]):
        compared += _compare(cpu.features, cpu.image, cpu.decomposition, got.decomposition)
    assert compared >= 3
    # an image's result does not depend on its batch
    alone = eigen_torch.decompose_batch([results["cpu"][1].features], [images[1]])[0]
    for a, b in zip(alone.eigenvectors, results["torch"][1].decomposition.eigenvectors):
        assert abs(float(np.dot(a.ravel(), b.ravel()))) / (np.linalg.norm(a) * np.linalg.norm(b)) >= 0.99999


def test_engine_resolves_backend_and_keys_cache_by_it():
    from deepspectral.engine import Engine

    class Source:
        name, weights, block, feature, precision, patch_size = "oracle", None, -1, "k", "fp32", 16

        def __init__(self, device):
            self.device = device

    assert Engine(Source("cuda:0")).eigen_backend == "torch"
    assert Engine(Source("cpu")).eigen_backend == "cpu"
    assert Engine(Source("cuda:0"), eigen_backend="cpu").eigen_backend == "cpu"
    # the cpu key is the one of earlier versions (no backend in it); torch has its own
    cpu = Engine(Source("cpu")).decomposition_settings()
    assert "eigen_backend" not in cpu
    assert Engine(Source("cpu"), eigen_backend="torch").decomposition_settings() == {**cpu, "eigen_backend": "torch"}
    with pytest.raises(ValueError, match="eigen_backend"):
        Engine(Source("cpu"), eigen_backend="gpu")


def test_cli_refuses_a_bad_backend(capsys):
    from deepspectral.cli import main

    assert main(["localize", "x.jpg", "-o", "out", "--eigen-backend", "gpu"]) == 2
    assert "--eigen-backend" in capsys.readouterr().err


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu_torch():
    affinities = torch.from_numpy(np.stack([_clustered_affinity(700, 6, seed) for seed in range(4)]))
    values, vectors = eigen_torch.laplacian_eigenvectors(affinities.cuda(), 5)
    cpu_values, cpu_vectors = eigen_torch.laplacian_eigenvectors(affinities, 5)
    np.testing.assert_allclose(values, cpu_values, atol=1e-5)
    image = _test_image((20, 30), seed=3)
    on_gpu = eigen_torch.knn_affinity(torch.from_numpy(image)[None].cuda())[0].cpu().numpy()
    np.testing.assert_array_equal(on_gpu, np_affinity.knn_affinity(image).toarray())
