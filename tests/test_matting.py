"""Image matting (paper Sec. 4.4): sparse full-resolution affinity against the dense one,
sparse eigensolvers against dense ``eigh``, layers on the simplex, the guided filter against a brute-force window fit, compositing, ``matte`` with oracle features (synthetic and real photos) and the
``deepspectral matte`` command with a random-initialised backbone."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from oracle import iou, oracle_features, shared_data_dir  # noqa: E402

from deepspectral.affinity import feature_affinity, knn_affinity  # noqa: E402
from deepspectral.eigen import laplacian_eigenvectors  # noqa: E402
from deepspectral.tasks import matting  # noqa: E402
from deepspectral.tasks.matting import (  # noqa: E402
    Matte,
    composite,
    cutout_rgba,
    estimate_foreground,
    full_resolution_affinity,
    full_sample_rate,
    guided_filter,
    matte,
    matting_layers,
    sparse_laplacian_eigenvectors,
)


def _object_scene(height=96, width=128, seed=0):
    """Textured dark background, a bright ellipse with a soft (blended) rim; returns the
    image and the true alpha."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:height, :width]
    radius = np.sqrt(((yy - height * 0.5) / (height * 0.3)) ** 2 + ((xx - width * 0.45) / (width * 0.25)) ** 2)
    alpha = np.clip((1.08 - radius) / 0.16, 0.0, 1.0)
    fg = np.array([230.0, 190.0, 60.0]) + rng.normal(0, 6, (height, width, 3))
    bg = np.array([40.0, 70.0, 120.0]) + rng.normal(0, 6, (height, width, 3))
    image = alpha[..., None] * fg + (1 - alpha[..., None]) * bg
    return np.clip(image, 0, 255).astype(np.uint8), alpha.astype(np.float32)


# ---------------------------------------------------------------------------------------
# Sparse affinity and eigensolvers
# ---------------------------------------------------------------------------------------


def test_sampled_affinity_matches_dense_entries():
    rng = np.random.default_rng(0)
    patch = rng.standard_normal((3, 4, 8)).astype(np.float32)
    image = rng.random((24, 32, 3)).astype(np.float32)
    dense = feature_affinity(patch, (24, 32)).astype(np.float64)  # the upsampled features' product
    # pairs are drawn with replacement: a repeated pair counts twice
    every = full_resolution_affinity(patch, image, knn_lambda=0.0, sample_rate=1.0)
    multiplicity = scipy.sparse.csr_matrix(
        (np.ones(every.upper.nnz), every.upper.indices, every.upper.indptr), shape=every.shape
    ).toarray()
    multiplicity = multiplicity + multiplicity.T + np.eye(len(multiplicity))
    np.testing.assert_allclose(every.to_csr().toarray(), dense * multiplicity, atol=1e-4)

    some = full_resolution_affinity(patch, image, knn_lambda=0.0, sample_rate=0.25, seed=3)
    rows, cols = some.upper.nonzero()
    assert np.all(rows < cols)  # strictly upper, the diagonal kept apart and exact
    np.testing.assert_allclose(some.upper.data[some.upper.data > 0], dense[rows, cols], atol=1e-5)
    np.testing.assert_allclose(some.diagonal, np.diag(dense), atol=1e-5)
    n = 24 * 32
    expected = 0.25 * n * (n - 1) / 2
    assert abs(some.upper.nnz - expected) < 5 * np.sqrt(expected)
    again = full_resolution_affinity(patch, image, knn_lambda=0.0, sample_rate=0.25, seed=3)
    assert np.array_equal(again.upper.indices, some.upper.indices)  # seeded
    other = full_resolution_affinity(patch, image, knn_lambda=0.0, sample_rate=0.25, seed=4)
    assert not np.array_equal(other.upper.indices[:50], some.upper.indices[:50])


def test_affinity_colour_term_and_matmat():
    rng = np.random.default_rng(1)
    patch = rng.standard_normal((2, 3, 4)).astype(np.float32)
    image = rng.random((16, 24, 3)).astype(np.float32)
    affinity = full_resolution_affinity(patch, image, knn_lambda=10.0, sample_rate=0.1)
    colour = (10.0 * knn_affinity(image)).toarray()
    np.testing.assert_allclose(affinity.colour.toarray(), colour, atol=1e-4)
    full = affinity.to_csr().toarray()
    np.testing.assert_allclose(full, full.T, atol=1e-6)
    x = rng.standard_normal((16 * 24, 3)).astype(np.float32)
    np.testing.assert_allclose(affinity.matmat(x), full @ x, rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(affinity.matmat(x[:, 0]), full @ x[:, 0], rtol=1e-4, atol=1e-3)


def test_full_sample_rate_caps_partners_per_pixel():
    assert full_sample_rate(500 * 375) == pytest.approx(1 / 256)
    big = 1000 * 1000
    assert full_sample_rate(big) * (big - 1) == pytest.approx(matting.FULL_MAX_PARTNERS)


@pytest.mark.parametrize("n_side", [12, 30])  # dense path, then Lanczos / LOBPCG
def test_sparse_eigenvectors_match_dense(n_side):
    rng = np.random.default_rng(2)
    patch = rng.standard_normal((3, 3, 6)).astype(np.float32)
    image = rng.random((n_side, n_side, 3)).astype(np.float32)
    affinity = full_resolution_affinity(patch, image, knn_lambda=5.0, sample_rate=0.2)
    dense = affinity.to_csr().toarray().astype(np.float32)
    values_ref, vectors_ref = laplacian_eigenvectors(dense, 4)
    degree = dense.sum(axis=1)
    values, vectors = sparse_laplacian_eigenvectors(affinity, 4)
    np.testing.assert_allclose(values, values_ref, atol=1e-4)
    for a, b in zip(vectors[1:], vectors_ref[1:]):
        assert abs(float((a * b * degree).sum())) == pytest.approx(1.0, abs=1e-3)
    if n_side > 20:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            guess = vectors_ref + 0.05 * rng.standard_normal(vectors_ref.shape).astype(np.float32)
            values_lobpcg, vectors_lobpcg = sparse_laplacian_eigenvectors(affinity, 4, initial=guess, tol=1e-5)
        np.testing.assert_allclose(values_lobpcg, values_ref, atol=1e-4)
        for a, b in zip(vectors_lobpcg[1:], vectors_ref[1:]):
            assert abs(float((a * b * degree).sum())) == pytest.approx(1.0, abs=1e-3)


def test_sparse_eigenvectors_reject_bad_arguments():
    with pytest.raises(ValueError, match="n_eigenvectors"):
        sparse_laplacian_eigenvectors(np.eye(3), 0)
    with pytest.raises(ValueError, match="affinity"):
        sparse_laplacian_eigenvectors(np.eye(3), 2)


# ---------------------------------------------------------------------------------------
# Layers, guided filter, compositing
# ---------------------------------------------------------------------------------------


def test_matting_layers_are_soft_partitions():
    rng = np.random.default_rng(3)
    base = np.zeros((3, 20, 30))
    base[0] = 1.0
    base[1, :, 15:] = 1.0
    base[2, 10:, :] = 1.0
    vectors = base + 0.05 * rng.standard_normal(base.shape)
    layers = matting_layers(vectors, 4, seed=0)
    assert layers.shape == (4, 20, 30) and layers.dtype == np.float32
    assert layers.min() >= 0.0
    np.testing.assert_allclose(layers.sum(axis=0), 1.0, atol=1e-5)
    areas = layers.sum(axis=(1, 2))
    assert np.all(np.diff(areas) <= 1e-6)  # ordered by area
    np.testing.assert_array_equal(layers, matting_layers(vectors, 4, seed=0))  # seeded
    labels = (np.arange(30)[None, :] >= 15).repeat(20, axis=0).astype(int)
    pair = matting_layers(vectors, 2, labels=labels)
    assert pair[1][:, 20:].mean() > 0.9 and pair[1][:, :10].mean() < 0.1
    with pytest.raises(ValueError, match="n_layers"):
        matting_layers(vectors, 0)
    with pytest.raises(ValueError, match="labels"):
        matting_layers(vectors, 2, labels=labels + 5)


def _guided_filter_brute_force(guide, source, radius, eps):
    """Window by window: ridge fit of ``source ≈ aᵀ I + b`` on every (clipped) window, then
    each pixel averages the fits of the windows that contain it."""
    height, width = source.shape
    a = np.zeros((height, width, 3))
    b = np.zeros((height, width))
    for y in range(height):
        for x in range(width):
            ys, xs = slice(max(y - radius, 0), y + radius + 1), slice(max(x - radius, 0), x + radius + 1)
            colours = guide[ys, xs].reshape(-1, 3)
            values = source[ys, xs].ravel()
            centred = colours - colours.mean(axis=0)
            covariance = centred.T @ centred / len(values)
            a[y, x] = np.linalg.solve(covariance + eps * np.eye(3), centred.T @ (values - values.mean()) / len(values))
            b[y, x] = values.mean() - a[y, x] @ colours.mean(axis=0)
    out = np.zeros((height, width))
    for y in range(height):
        for x in range(width):
            ys, xs = slice(max(y - radius, 0), y + radius + 1), slice(max(x - radius, 0), x + radius + 1)
            out[y, x] = a[ys, xs].reshape(-1, 3).mean(axis=0) @ guide[y, x] + b[ys, xs].mean()
    return out


def test_guided_filter_matches_brute_force():
    rng = np.random.default_rng(5)
    guide = rng.random((11, 14, 3))
    source = (rng.random((11, 14)) > 0.5).astype(np.float64)
    for radius, eps in ((2, 1e-2), (3, 1e-3), (0, 1e-2)):
        expected = _guided_filter_brute_force(guide, source, radius, eps)
        np.testing.assert_allclose(guided_filter(guide, source, radius=radius, eps=eps), expected, atol=2e-5)
    with pytest.raises(ValueError, match="radius"):
        guided_filter(guide, source, radius=-1)
    with pytest.raises(ValueError, match="eps"):
        guided_filter(guide, source, eps=0.0)
    with pytest.raises(ValueError, match="source"):
        guided_filter(guide, source[:-1])


def test_guided_filter_feathers_a_blocky_mask():
    image, alpha_true = _object_scene()
    cells = alpha_true.reshape(12, 8, 16, 8).mean(axis=(1, 3)) > 0.5  # the object on an 8-px grid
    coarse = cells.repeat(8, axis=0).repeat(8, axis=1).astype(np.float32)
    alpha = np.clip(guided_filter(image / 255.0, coarse), 0.0, 1.0)
    rim = (alpha_true > 0.02) & (alpha_true < 0.98)
    assert np.abs(alpha - alpha_true).mean() < 0.5 * np.abs(coarse - alpha_true).mean()
    assert iou(alpha > 0.5, alpha_true > 0.5) > iou(coarse > 0.5, alpha_true > 0.5)
    assert np.mean((alpha[rim] > 0.1) & (alpha[rim] < 0.9)) > 0.3  # soft where the colours mix


def test_cutout_and_composite():
    image, alpha = _object_scene(32, 48)
    rgba = cutout_rgba(image, alpha, decontaminate=False)
    assert rgba.shape == (32, 48, 4) and rgba.dtype == np.uint8
    np.testing.assert_array_equal(rgba[..., :3], image)  # straight, not premultiplied
    np.testing.assert_array_equal(rgba[..., 3], np.round(alpha * 255).astype(np.uint8))
    clean = cutout_rgba(image, alpha)
    np.testing.assert_array_equal(clean[alpha == 1.0, :3], image[alpha == 1.0])  # opaque: untouched
    out = composite(image, np.zeros_like(alpha), (0, 255, 0))
    assert np.all(out == [0, 255, 0])
    out = composite(image, np.ones_like(alpha), (0, 255, 0))
    np.testing.assert_array_equal(out, image)
    wide = np.zeros((10, 100, 3), np.uint8)
    wide[:, 45:55] = 200  # only the centre survives a cover-resize + centre crop
    out = composite(image, np.zeros_like(alpha), wide)
    assert out.shape == image.shape  # 10 x 100 scaled x3.2 to cover, 48 of 320 columns kept
    assert np.all(np.abs(out[:, 20:28].astype(int) - 200) <= 3) and np.all(out[:, :3] < 40)
    with pytest.raises(ValueError, match="alpha"):
        composite(image, alpha[1:], (0, 0, 0))
    with pytest.raises(ValueError, match="background"):
        composite(image, alpha, (0, 0, 300))


def test_estimate_foreground_removes_the_background_from_soft_edges():
    """A yellow object blended into blue by a known alpha: at the rim the estimated
    foreground is the object's colour, not the blend (independent check: the generator's
    own colours)."""
    image, alpha = _object_scene(96, 128, seed=2)
    fg_true = np.array([230.0, 190.0, 60.0])
    rim = (alpha > 0.1) & (alpha < 0.9)
    assert rim.sum() > 200
    foreground = estimate_foreground(image, alpha).astype(np.float64)
    error_raw = np.linalg.norm(image[rim].astype(np.float64) - fg_true, axis=1).mean()
    error_estimated = np.linalg.norm(foreground[rim] - fg_true, axis=1).mean()
    assert error_estimated < 0.25 * error_raw, (error_estimated, error_raw)
    # the compositing equation still holds with the estimated background
    assert np.abs(foreground[alpha == 1.0] - image[alpha == 1.0]).max() == 0
    # on a new background the halo is gone: rim pixels are the object's colour over green
    green = np.array([0.0, 255.0, 0.0])
    out = composite(image, alpha, (0, 255, 0)).astype(np.float64)
    expected = alpha[rim, None] * fg_true + (1 - alpha[rim, None]) * green
    assert np.linalg.norm(out[rim] - expected, axis=1).mean() < 20
    raw = composite(image, alpha, (0, 255, 0), decontaminate=False).astype(np.float64)
    assert np.linalg.norm(raw[rim] - expected, axis=1).mean() > 2 * np.linalg.norm(out[rim] - expected, axis=1).mean()


# ---------------------------------------------------------------------------------------
# matte() with oracle features
# ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def scene():
    image, alpha = _object_scene(112, 150, seed=5)
    features = oracle_features(alpha > 0.5, patch_size=16, noise=0.2)
    return image, alpha, features


@pytest.mark.parametrize("mode", ["fast", "full"])
def test_matte_recovers_the_object(scene, mode):
    image, alpha_true, features = scene
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = matte(image, features=features, mode=mode, n_layers=3)
    assert isinstance(result, Matte) and result.mode == mode
    assert result.alpha.shape == image.shape[:2] and result.alpha.dtype == np.float32
    assert 0.0 <= result.alpha.min() and result.alpha.max() <= 1.0
    assert iou(result.alpha > 0.5, alpha_true > 0.5) > 0.9
    rim = (alpha_true > 0.05) & (alpha_true < 0.95)
    assert np.mean((result.alpha[rim] > 0.02) & (result.alpha[rim] < 0.98)) > 0.2  # soft edges
    layers = result.layers
    assert layers.shape == (3, *image.shape[:2]) and layers.min() >= 0.0
    np.testing.assert_allclose(layers.sum(axis=0), 1.0, atol=1e-3)
    rebuilt = sum(layer[..., None] * image.astype(np.float32) for layer in layers)
    assert np.abs(rebuilt - image).max() < 0.5  # compositing all layers rebuilds the image


def test_full_and_fast_modes_agree(scene):
    image, _, features = scene
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fast = matte(image, features=features, mode="fast")
        full = matte(image, features=features, mode="full")
        lanczos = matte(image, features=features, mode="full", solver="lanczos")
    assert np.abs(fast.alpha - full.alpha).mean() < 0.05
    # measured 0.935 with the 2-tap colour image, 0.899 with the paper's antialiased one
    # (the fast mode's grid: IoU with the truth 0.971 -> 0.931 on this noise-textured scene;
    # on 30 SOD / DAVIS photos with oracle features unchanged, 0.769 -> 0.766 and
    # 0.921 -> 0.920 with 16- / 8-px patches, benchmarks/bench_matting.py)
    assert iou(fast.alpha > 0.5, full.alpha > 0.5) > 0.85
    # LOBPCG (from the grid eigenvectors, tolerance FULL_LOBPCG_TOL) == Lanczos (1e-5): the
    # same eigenpairs (a block without guard vectors once settled on a wrong set here)
    np.testing.assert_allclose(full.eigenvalues, lanczos.eigenvalues, atol=1e-4)
    assert np.abs(full.alpha - lanczos.alpha).mean() < 0.01
    assert np.abs(full.alpha - lanczos.alpha).max() < 0.05
    assert full.settings["sample_rate"] == pytest.approx(1 / 256)


def test_matte_rejects_bad_arguments(scene):
    image, _, features = scene
    with pytest.raises(ValueError, match="mode"):
        matte(image, features=features, mode="slow")
    with pytest.raises(ValueError, match="n_layers"):
        matte(image, features=features, n_layers=1)
    with pytest.raises(ValueError, match="backbone"):
        matte(image)
    with pytest.raises(ValueError, match="image"):
        matte(image[:-1], features=features)
    with pytest.raises(ValueError, match="solver"):
        matte(image, features=features, solver="qr")


# ---------------------------------------------------------------------------------------
# Real photos (oracle features from the ground-truth masks)
# ---------------------------------------------------------------------------------------


def _real_pairs(n_sod: int, n_davis: int = 0):
    root = shared_data_dir()
    if not root.is_dir():
        pytest.skip(f"shared data not found at {root}")
    from deepspectral.data.images import load_image

    pairs = []
    sod = root / "sod"
    for gt_path in sorted((sod / "GT").glob("*.png"))[:n_sod]:
        images = sorted((sod / "images").glob(gt_path.stem + ".*"))
        if images:
            pairs.append((load_image(images[0]), np.asarray(Image.open(gt_path).convert("L")) > 127))
    davis = root / "davis2016-val"
    for annotation in sorted((davis / "Annotations").glob("*/*.png"))[::20][:n_davis]:
        frame = davis / "JPEGImages" / annotation.parent.name / (annotation.stem + ".jpg")
        if frame.is_file():
            pairs.append((load_image(frame), np.asarray(Image.open(annotation).convert("L")) > 127))
    if len(pairs) < n_sod + n_davis:
        pytest.skip("SOD / DAVIS images missing from the shared data")
    return pairs


def test_real_photo_fast_mode_oracle():
    (image, mask), = _real_pairs(1)
    result = matte(image, features=oracle_features(mask, max_size=320), mode="fast")
    assert result.alpha.shape == mask.shape
    assert iou(result.alpha > 0.5, mask) >= 0.85


@pytest.mark.slow
def test_real_photos_oracle_iou():
    # measured (fast mode, 3 SOD + 2 DAVIS photos): 8-px oracle patches 0.956-0.965 (the
    # issue's target is a mean >= 0.9), 16-px patches 0.856-0.934 (the 16-px oracle mask
    # itself is coarser: over 60 photos its IoU with the ground truth is 0.83)
    pairs = _real_pairs(3, 2)
    for patch, floor in ((8, 0.93), (16, 0.85)):
        ious = [iou(matte(image, features=oracle_features(mask, patch_size=patch)).alpha > 0.5, mask) for image, mask in pairs]
        assert np.mean(ious) >= floor, (patch, ious)


# ---------------------------------------------------------------------------------------
# The command line
# ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory) -> Path:
    import timm
    import torch

    torch.manual_seed(0)
    model = timm.create_model("vit_small_patch16_224", pretrained=False, num_classes=0)
    path = tmp_path_factory.mktemp("weights") / "vit_s16.pth"
    torch.save(model.state_dict(), path)
    return path


def test_cli_matte(weights_file, tmp_path):
    from deepspectral.cli import main
    from deepspectral.cli.matte import MODE_CHOICES

    assert MODE_CHOICES == matting.MATTING_MODES
    photos = tmp_path / "in"
    photos.mkdir()
    image, _ = _object_scene(70, 90, seed=1)
    Image.fromarray(image).save(photos / "one.jpg", quality=95)
    Image.fromarray(_object_scene(50, 83, seed=2)[0]).save(photos / "two.png")
    background = tmp_path / "beach.png"
    Image.fromarray(np.full((30, 200, 3), 200, np.uint8)).save(background)
    out = tmp_path / "out"
    common = ["--weights", str(weights_file), "--device", "cpu", "-q"]
    assert main(["matte", str(photos), "-o", str(out), "--layers", "3", "--background", str(background), *common]) == 0
    for name, size in (("one", (70, 90)), ("two", (50, 83))):
        alpha = np.asarray(Image.open(out / f"{name}.alpha.png"))
        assert alpha.shape == size and alpha.dtype == np.uint8
        fg = Image.open(out / f"{name}.fg.png")
        assert fg.mode == "RGBA" and fg.size == (size[1], size[0])
        np.testing.assert_array_equal(np.asarray(fg)[..., 3], alpha)
        layer_alphas = [np.asarray(Image.open(out / f"{name}.layer{i}.png"))[..., 3].astype(int) for i in range(3)]
        assert np.abs(sum(layer_alphas) - 255).max() <= 2
        assert Image.open(out / f"{name}.composite.png").size == (size[1], size[0])
    out2 = tmp_path / "out2"
    assert main(["matte", str(photos / "one.jpg"), "-o", str(out2), "--color", "#00ff00", *common]) == 0
    assert (out2 / "one.composite.png").is_file() and not (out2 / "one.layer0.png").exists()


def test_cli_matte_rejects_bad_options(tmp_path, capsys):
    from deepspectral.cli import main

    assert main(["matte", "x.jpg", "-o", str(tmp_path), "--color", "300,0,0"]) == 2
    assert main(["matte", "x.jpg", "-o", str(tmp_path), "--layers", "1"]) == 2
    assert main(["matte", "x.jpg", "-o", str(tmp_path), "--background", str(tmp_path / "missing.jpg")]) == 2
    assert "--background" in capsys.readouterr().err
