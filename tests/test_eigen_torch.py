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


class Item:
    """An engine item holding its decoded image."""

    def __init__(self, image):
        self.image = image

    def load_image(self):
        return self.image


def _coco_photos(size: tuple[int, int]) -> list:
    """The first 3 COCO-MINI photos resized to ``size`` (W, H), (H, W, 3) uint8 each."""
    from PIL import Image

    return [np.asarray(Image.open(path).convert("RGB").resize(size)) for path in sorted(COCO.glob("*.jpg"))[:3]]


@needs_coco
def test_random_vit_batched_same_as_cpu(random_weights):
    """Several photos of one size in one call (the engine's batched path) against the CPU path."""
    from deepspectral import Backbone
    from deepspectral.engine import Engine

    images = _coco_photos((240, 176))
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


# ---------------------------------------------------------------------------------------
# TokenCut's eigen-step in torch (deepspectral.recipes.tokencut_torch)
# ---------------------------------------------------------------------------------------


def _seed_is_clear(decomposition) -> bool:
    """Whether TokenCut's object is defined beyond rounding: every patch whose ``|value|``
    is within 1e-4 (relative) of the largest has the seed's sign and lies in its component.
    Oracle features make many patches alike, so the binary graph can give several exactly
    equal largest values in different components; which one is "first" is then decided by
    the last bits, on either path."""
    from scipy import ndimage

    from deepspectral.recipes import tokencut

    split, seed, oriented = tokencut.bipartition(decomposition.eigenvectors[1])
    values = oriented.reshape(-1)
    near = np.abs(values) >= np.abs(values[seed]) * (1 - 1e-4)
    labels = ndimage.label(split)[0].reshape(-1)
    return bool(np.all(values[near] > 0) and np.all(labels[near] == labels[seed]))


def _tokencut_compare(features, cpu, got) -> int:
    """Assert a torch TokenCut decomposition ``got`` agrees with the CPU one ``cpu`` (against
    a dense ``eigh`` of the numpy graph); return the number of eigenvectors compared."""
    from deepspectral.recipes import tokencut

    affinity = tokencut.tokencut_affinity(features.features)
    k = len(cpu.eigenvalues)
    lam, ref_vectors, degree = _dense_reference(affinity, k)
    np.testing.assert_allclose(got.eigenvalues, lam[:k], atol=1e-5)
    flat = lambda d: d.eigenvectors.reshape(k, -1)  # noqa: E731
    cos_cpu = _clear_gap_cosines(lam, ref_vectors, flat(cpu), degree)
    cos_torch = _clear_gap_cosines(lam, ref_vectors, flat(got), degree)
    assert min(cos_torch, default=1.0) >= MIN_COS, cos_torch
    assert min(cos_cpu, default=1.0) >= MIN_COS, cos_cpu
    if _seed_is_clear(cpu):
        assert tokencut.box(got) == tokencut.box(cpu)
        np.testing.assert_array_equal(tokencut.mask(got), tokencut.mask(cpu))
    assert got.eigenvectors.shape == cpu.eigenvectors.shape and got.eigenvectors.dtype == np.float32
    assert got.settings == {**cpu.settings, "eigen_backend": "torch"}
    # the second eigenvector is oriented as on the CPU (the seed's side above the mean)
    assert float(np.sum(got.eigenvectors[1] * cpu.eigenvectors[1])) > 0
    return len(cos_torch)


def test_tokencut_affinity_equals_numpy():
    from deepspectral.recipes import tokencut, tokencut_torch

    rng = np.random.default_rng(0)
    feats = rng.standard_normal((3, 50, 24)).astype(np.float32)
    feats[1, 7] = 0.0  # a zero feature: the norm's floor
    got = tokencut_torch.tokencut_affinity(torch.from_numpy(feats), tau=0.1, eps=1e-4).numpy()
    for index in range(3):
        want = tokencut.tokencut_affinity(feats[index], tau=0.1, eps=1e-4)
        f = feats[index] / np.maximum(np.linalg.norm(feats[index], axis=1, keepdims=True), 1e-12)
        near = np.abs(f.astype(np.float64) @ f.T.astype(np.float64) - 0.1) < 1e-6  # float32 rounding may flip these
        assert set(np.unique(got[index])) <= {np.float32(1e-4), np.float32(1.0)}
        np.testing.assert_array_equal(got[index][~near], want[~near])
    with pytest.raises(ValueError, match="tau"):
        tokencut_torch.tokencut_affinity(torch.from_numpy(feats), tau=1.5)
    with pytest.raises(ValueError, match="features"):
        tokencut_torch.tokencut_affinity(torch.from_numpy(feats[0]))


@needs_sod
@pytest.mark.parametrize("max_size", [480, 256], ids=["krylov", "dense"])
def test_tokencut_oracle_photos_batched_same_as_cpu(max_size):
    """SOD photos with oracle features (grids above and below the dense solver's 400 nodes),
    several of one grid in one call, float32, against the CPU path and a dense eigh."""
    from PIL import Image

    from deepspectral.recipes import decompose, tokencut, tokencut_torch

    names = sorted(path.stem for path in (SOD / "GT").glob("*.png"))[:4]
    features = []
    for seed, name in enumerate(names):
        mask = np.asarray(Image.open(SOD / "GT" / f"{name}.png").convert("L")) > 127
        features.append(oracle_features(mask, patch_size=16, seed=seed, noise=0.6, max_size=max_size))
    n = features[0].grid_size[0] * features[0].grid_size[1]
    assert (n > 400) == (max_size == 480)
    got = tokencut_torch.decompose_batch(features, dtype=torch.float32)
    compared = 0
    for feats, decomposition in zip(features, got):
        cpu = tokencut.decompose(feats)
        compared += _tokencut_compare(feats, cpu, decomposition)
    assert compared >= len(features)
    assert sum(_seed_is_clear(tokencut.decompose(feats)) for feats in features) >= 3  # boxes compared
    assert len({feats.grid_size for feats in features}) > 1  # several size groups in one call
    # an image's result does not depend on its batch; the API's torch backend is the same call
    alone = decompose(features[2], method="tokencut", eigen_backend="torch")
    np.testing.assert_allclose(alone.eigenvalues, got[2].eigenvalues, atol=1e-6)
    assert abs(float(np.sum(alone.eigenvectors[1] * got[2].eigenvectors[1]))) / float(
        np.linalg.norm(alone.eigenvectors[1]) * np.linalg.norm(got[2].eigenvectors[1])) >= 0.99999  # fmt: skip


@needs_coco
def test_tokencut_random_vit_engine_torch_same_as_cpu(random_weights):
    """The engine's torch path for --method tokencut (boxes: padded grid; masks: resized),
    a batch of photos, against the CPU path."""
    from deepspectral import Backbone
    from deepspectral.engine import Engine

    images = _coco_photos((400, 300))
    backbone = Backbone("dino_vits16", weights=random_weights, device="cpu")
    compared = 0
    for use in ("boxes", "masks"):
        results = {}
        for backend in ("cpu", "torch"):
            engine = Engine(backbone, method="tokencut", use=use, max_size=None, batch_size=3, eigen_backend=backend,
                            keep_features=True)  # fmt: skip
            assert engine.eigen_backend == backend
            results[backend] = [result.check() for result in engine.run([Item(image) for image in images])]
        for cpu, got in zip(results["cpu"], results["torch"]):
            assert _seed_is_clear(cpu.decomposition)  # real features: the boxes and masks are compared
            compared += _tokencut_compare(cpu.features, cpu.decomposition, got.decomposition)
    assert compared >= 6


def test_tokencut_engine_resolves_backend_and_keys_cache_by_it():
    from deepspectral.engine import Engine

    class Source:
        name, weights, block, feature, precision, patch_size = "oracle", None, -1, "k", "fp32", 16

        def __init__(self, device):
            self.device = device

    assert Engine(Source("cuda:0"), method="tokencut").eigen_backend == "torch"  # auto: torch on a GPU
    assert Engine(Source("cpu"), method="tokencut").eigen_backend == "cpu"
    cpu = Engine(Source("cpu"), method="tokencut").decomposition_settings()
    assert "eigen_backend" not in cpu and cpu["method"] == "tokencut"
    torch_settings = Engine(Source("cpu"), method="tokencut", eigen_backend="torch").decomposition_settings()
    assert torch_settings == {**cpu, "eigen_backend": "torch"}


def test_cli_runs_tokencut_on_the_torch_backend(tmp_path, random_weights):
    """--method tokencut --eigen-backend torch (refused before the torch TokenCut existed)."""
    import json

    from PIL import Image

    from deepspectral.cli import main

    rng = np.random.default_rng(0)
    image = rng.integers(20, 90, (70, 90, 3), dtype=np.uint8)
    image[20:50, 30:60] = 220
    Image.fromarray(image).save(tmp_path / "one.png")
    runs = {}
    for backend in ("cpu", "torch"):
        out = tmp_path / backend
        args = ["localize", str(tmp_path / "one.png"), "-o", str(out), "--weights", str(random_weights),
                "--method", "tokencut", "--eigen-backend", backend, "-q"]  # fmt: skip
        assert main(args) == 0
        runs[backend] = [record["box_xyxy"] for record in json.loads((out / "boxes.json").read_text())]
    assert runs["torch"] == runs["cpu"]
