"""Semantic segmentation over a dataset (issue #5): oracle end-to-end + unit tests."""

from __future__ import annotations

import hashlib
import itertools
from pathlib import PurePosixPath

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("sklearn")

from deepspectral.data.images import InputImage  # noqa: E402
from deepspectral.geometry import ImageGeometry, input_size_for, resize_image  # noqa: E402
from deepspectral.features import PatchFeatures  # noqa: E402
from deepspectral.tasks import semantic  # noqa: E402
from deepspectral.tasks.semantic import (  # noqa: E402
    FeatureSource,
    ImageSegments,
    SemanticSettings,
    assign_clusters,
    background_segment,
    cluster_features,
    eigengap_segments,
    fit,
    label_grid,
    load_run,
    save_label_png,
)

N_CLASSES = 3
SIZE = (112, 160)


# ---------------------------------------------------------------------------------------
# A synthetic dataset and an oracle feature source
# ---------------------------------------------------------------------------------------

#: Object colours by class: red, green, blue dominant (backgrounds are near-grey).
_HUES = {1: (0, 1, 2), 2: (1, 0, 2), 3: (2, 0, 1)}


def _shape_mask(kind: int, cy: int, cx: int, r: int) -> np.ndarray:
    yy, xx = np.mgrid[: SIZE[0], : SIZE[1]]
    if kind == 1:
        return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
    if kind == 2:
        return (np.abs(yy - cy) <= r) & (np.abs(xx - cx) <= r)
    return (yy - cy <= r) & (yy - cy >= -r) & (np.abs(xx - cx) <= (yy - cy + r) / 2 + 2)


def synthetic_sample(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """An image with two objects of different classes on a textured grey-ish background,
    and its ground-truth labels (0 background, 1..3 class)."""
    rng = np.random.default_rng(seed)
    level = rng.uniform(60, 190)
    tint = rng.uniform(-12, 12, size=3)
    image = level + tint + rng.normal(0, 6, size=(*SIZE, 3))
    truth = np.zeros(SIZE, dtype=np.uint8)
    classes = rng.choice(np.arange(1, N_CLASSES + 1), size=2, replace=False)
    for slot, cls in enumerate(classes):
        r = int(rng.integers(18, 24))
        cy = int(rng.integers(r + 4, SIZE[0] - r - 4))
        cx = int(rng.integers(r + 4, SIZE[1] // 2 - r - 8)) + slot * (SIZE[1] // 2 + 8)
        mask = _shape_mask(int(cls), cy, cx, r)
        strong, mid, weak = _HUES[int(cls)]
        colour = np.zeros(3)
        colour[strong] = rng.uniform(190, 240)
        colour[mid] = rng.uniform(30, 80)
        colour[weak] = rng.uniform(20, 60)
        image[mask] = colour + rng.normal(0, 5, size=(int(mask.sum()), 3))
        truth[mask] = cls
    return np.clip(image, 0, 255).astype(np.uint8), truth


def pixel_classes(image: np.ndarray) -> np.ndarray:
    """Class of every pixel from its colour (what a perfect backbone would know)."""
    rgb = image.astype(np.int32)
    order = np.sort(rgb, axis=2)
    saturated = order[:, :, 2] - order[:, :, 1] > 80
    return np.where(saturated, np.argmax(rgb, axis=2) + 1, 0).astype(np.int32)


class OracleSource:
    """Patch features and crop CLS features with class-specific directions + noise."""

    patch_size = 8

    def __init__(self, dim: int = 32, noise: float = 0.25, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        directions = rng.standard_normal((N_CLASSES + 2, dim))
        self.directions = directions / np.linalg.norm(directions, axis=1, keepdims=True)
        self.dim = dim
        self.noise = noise

    def _rng(self, image: np.ndarray) -> np.random.Generator:
        return np.random.default_rng(int(hashlib.sha256(image.tobytes()).hexdigest()[:8], 16))

    def extract(self, image, *, max_size=None) -> PatchFeatures:
        image = np.asarray(image)
        size = input_size_for(image.shape[:2], max_size)
        small = resize_image(image, size)
        p = self.patch_size
        h, w = size[0] // p, size[1] // p
        classes = pixel_classes(small[: h * p, : w * p]).reshape(h, p, w, p).transpose(0, 2, 1, 3).reshape(h, w, -1)
        major = np.array([[np.bincount(c, minlength=N_CLASSES + 1).argmax() for c in row] for row in classes])
        rng = self._rng(image)
        background = self.directions[0] + 0.5 * self.directions[N_CLASSES + 1] * rng.uniform(-1, 1)
        table = np.vstack([background, self.directions[1:N_CLASSES + 1]])
        feats = table[major] + rng.normal(0, self.noise / np.sqrt(self.dim), size=(h, w, self.dim))
        return PatchFeatures(features=feats.astype(np.float32), patch_size=p, image_size=image.shape[:2],
                             input_size=size, backbone="oracle")

    def cls_embeddings(self, images, *, max_size=None) -> np.ndarray:
        out = []
        for crop in images:
            crop = np.asarray(crop)
            counts = np.bincount(pixel_classes(crop).ravel(), minlength=N_CLASSES + 1)
            cls = int(np.argmax(counts[1:]) + 1) if counts[1:].max() > 0 else 0
            rng = self._rng(crop)
            out.append(self.directions[cls] + rng.normal(0, self.noise / np.sqrt(self.dim), size=self.dim))
        return np.asarray(out, dtype=np.float32)


def brute_force_miou(truth: list[np.ndarray], pred: list[np.ndarray], n: int) -> float:
    """Best mean IoU over every one-to-one relabelling of the predictions (n labels each)."""
    t = np.concatenate([a.ravel() for a in truth]).astype(np.int64)
    p = np.concatenate([a.ravel() for a in pred]).astype(np.int64)
    confusion = np.bincount(t * n + p, minlength=n * n).reshape(n, n)
    best = 0.0
    for perm in itertools.permutations(range(n)):
        inter = confusion[np.arange(n), perm]
        union = confusion.sum(axis=1) + confusion[:, perm].sum(axis=0) - inter
        best = max(best, float(np.mean(inter / np.maximum(union, 1))))
    return best


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> tuple[list[InputImage], list[np.ndarray]]:
    root = tmp_path_factory.mktemp("synthetic")
    items, truths = [], []
    for i in range(12):
        image, truth = synthetic_sample(i)
        path = root / f"img{i:02d}.png"
        Image.fromarray(image).save(path)
        items.append(InputImage(path=path, relative=PurePosixPath(f"img{i:02d}")))
        truths.append(truth)
    return items, truths


def _settings(**changes) -> SemanticSettings:
    base = dict(segments=3, eigenvectors=2, clusters=N_CLASSES, seed=0, crop_size=64, max_size=None, backbone="oracle")
    base.update(changes)
    return SemanticSettings(**base)


@pytest.fixture(scope="module")
def fitted(dataset, tmp_path_factory):
    items, _ = dataset
    run = tmp_path_factory.mktemp("run")
    result = fit(items, run, source=OracleSource(), settings=_settings(), verbose=False)
    return run, result


# ---------------------------------------------------------------------------------------
# End to end
# ---------------------------------------------------------------------------------------


def test_oracle_source_is_a_feature_source():
    assert isinstance(OracleSource(), FeatureSource)


def test_fit_oracle_end_to_end(dataset, fitted):
    items, truths = dataset
    run, result = fitted
    assert result.done == len(items) and result.failed == 0
    assert result.n_features == 2 * len(items)
    preds = [np.asarray(Image.open(run / "labels" / f"{item.relative}.png")) for item in items]
    for pred, truth in zip(preds, truths):
        assert pred.shape == truth.shape and pred.dtype == np.uint8
        # background + two objects: exactly three regions, background labelled 0
        assert len(np.unique(pred)) == 3
        assert np.mean(pred[truth == 0] == 0) > 0.9
    assert brute_force_miou(truths, preds, N_CLASSES + 1) >= 0.8
    try:  # the evaluation issue's metric, once it has landed
        from deepspectral.metrics import hungarian_miou
    except ImportError:
        return
    flat_pred = np.concatenate([p.ravel() for p in preds])
    flat_truth = np.concatenate([t.ravel() for t in truths])
    score = hungarian_miou(flat_pred, flat_truth, n_pred=N_CLASSES + 1, n_gt=N_CLASSES + 1).miou
    assert float(score) == pytest.approx(brute_force_miou(truths, preds, N_CLASSES + 1), abs=1e-6)


def test_run_folder_contents(fitted):
    run, _ = fitted
    for name in ("semseg.json", "centroids.npy", "images.json", "clusters.jpg"):
        assert (run / name).is_file(), name
    png = Image.open(run / "labels" / "img00.png")
    assert png.mode == "P"
    assert tuple(png.getpalette()[:6]) == (0, 0, 0, 128, 0, 0)
    assert np.load(run / "centroids.npy").shape == (N_CLASSES, 32)
    records = semantic.read_images(run)
    assert [r["image"] for r in records][:2] == ["img00", "img01"]


def test_predict_matches_fit(dataset, fitted):
    items, _ = dataset
    run, _ = fitted
    model = load_run(run, source=OracleSource())
    assert model.use == "clusters" and model.n_labels == N_CLASSES + 1
    image = np.asarray(Image.open(items[3].path))
    expected = np.asarray(Image.open(run / "labels" / "img03.png"))
    np.testing.assert_array_equal(model.predict(image), expected)


def test_same_seed_same_labels_and_resume(dataset, fitted, tmp_path):
    items, _ = dataset
    run, _ = fitted
    other = tmp_path / "again"
    fit(items, other, source=OracleSource(), settings=_settings(), verbose=False, figure=False)
    for item in items:
        a = (run / "labels" / f"{item.relative}.png").read_bytes()
        b = (other / "labels" / f"{item.relative}.png").read_bytes()
        assert a == b
    # a second fit reuses the per-image segments (resume) and gives the same labels
    before = (other / "segments" / "img00.npz").stat().st_mtime_ns
    fit(items, other, source=OracleSource(), settings=_settings(), verbose=False, figure=False)
    assert (other / "segments" / "img00.npz").stat().st_mtime_ns == before


def test_bad_image_does_not_stop_fit(dataset, tmp_path):
    items, _ = dataset
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    inputs = items[:6] + [InputImage(path=bad, relative=PurePosixPath("bad"))]
    result = fit(inputs, tmp_path / "run", source=OracleSource(), settings=_settings(), verbose=False, figure=False)
    assert result.done == 6 and result.failed == 1
    assert (tmp_path / "run" / "errors.json").is_file()


@pytest.mark.parametrize("method", ["cluster-patch", "cluster-seg"])
def test_baselines_run(dataset, tmp_path, method):
    items, truths = dataset
    settings = _settings(method=method, clusters=N_CLASSES + 1, segments=4)
    result = fit(items[:6], tmp_path / method, source=OracleSource(), settings=settings, verbose=False, figure=False)
    assert result.done == 6
    preds = [np.asarray(Image.open(tmp_path / method / "labels" / f"{i.relative}.png")) for i in items[:6]]
    assert all(p.shape == SIZE for p in preds)
    # no background rule: labels 1..K only (baselines of Table 4)
    assert min(int(p.min()) for p in preds) >= 1
    # with oracle features, the baselines are good too (they fail on real data only)
    assert brute_force_miou(truths[:6], [p - 1 for p in preds], N_CLASSES + 1) > 0.6


def test_adaptive_segments_end_to_end(dataset, tmp_path):
    items, truths = dataset
    settings = _settings(segments=6, eigenvectors=15, adaptive_segments=True)
    fit(items[:6], tmp_path / "auto", source=OracleSource(), settings=settings, verbose=False, figure=False)
    counts = [len(np.unique(np.asarray(Image.open(tmp_path / "auto" / "labels" / f"{i.relative}.png")))) for i in items[:6]]
    # the largest eigengap finds background + two objects on most images (not all: it is a
    # heuristic); it never over-segments these
    assert set(counts) <= {2, 3} and counts.count(3) >= 3


# ---------------------------------------------------------------------------------------
# Pieces
# ---------------------------------------------------------------------------------------


def test_eigengap_segments():
    assert eigengap_segments(np.array([0, 0.01, 0.02, 0.5, 0.55, 0.6]), max_segments=5) == 3
    assert eigengap_segments(np.array([0, 0.01, 0.9, 0.95]), max_segments=3) == 2
    assert eigengap_segments(np.array([0, 0.01, 0.02, 0.03, 0.04, 0.9]), max_segments=3) in (2, 3)


def test_background_rules():
    seg = np.ones((8, 8), dtype=np.int32)  # a large object touching the bottom border
    seg[0, :] = seg[:, 0] = seg[:, -1] = 0  # a thin frame on three sides
    assert background_segment(seg, rule="largest") == 1
    assert background_segment(seg, rule="border") == 0
    with pytest.raises(ValueError, match="rule"):
        background_segment(seg, rule="centre")


def test_assign_clusters_brute_force():
    rng = np.random.default_rng(1)
    feats = rng.normal(size=(50, 5)).astype(np.float32)
    cents = rng.normal(size=(4, 5)).astype(np.float32)
    brute = np.argmin(((feats[:, None] - cents[None]) ** 2).sum(-1), axis=1)
    np.testing.assert_array_equal(assign_clusters(feats, cents), brute)


def test_cluster_features_streaming_matches_blobs():
    rng = np.random.default_rng(0)
    centres = np.eye(4, 16, dtype=np.float32) * 3
    data = np.concatenate([c + rng.normal(0, 0.1, size=(300, 16)) for c in centres]).astype(np.float32)
    data = data[rng.permutation(len(data))]
    chunks = lambda: (data[i:i + 97] for i in range(0, len(data), 97))  # noqa: E731
    exact = cluster_features(chunks, n_clusters=4, seed=0)
    streamed = cluster_features(chunks, n_clusters=4, seed=0, sample_size=200)
    for found in (exact, streamed):
        nearest = np.min(((found[:, None] - centres[None]) ** 2).sum(-1), axis=0)
        assert np.all(nearest < 0.05)
    np.testing.assert_array_equal(cluster_features(chunks, n_clusters=4, seed=0, sample_size=200), streamed)
    with pytest.raises(ValueError, match="n_clusters"):
        cluster_features(chunks, n_clusters=5000, seed=0)


def test_grid_to_image_and_palette_png(tmp_path):
    grid = np.array([[0, 1], [2, 3]], dtype=np.uint8)
    labels = ImageGeometry((36, 34), (18, 17), 8).grid_to_image(grid)  # crop (16, 16)
    assert labels.shape == (36, 34)
    assert labels[0, 0] == 0 and labels[0, -1] == 1 and labels[-1, 0] == 2 and labels[-1, -1] == 3
    save_label_png(tmp_path / "x.png", labels)
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "x.png")), labels)


def test_settings_validation():
    with pytest.raises(ValueError, match="method"):
        SemanticSettings(method="kmeans")
    with pytest.raises(ValueError, match="clusters"):
        SemanticSettings(clusters=0)
    with pytest.raises(ValueError, match="background"):
        SemanticSettings(background="smallest")
    assert SemanticSettings.from_dict({"clusters": 5, "unknown": 1}).clusters == 5


def test_precision_is_a_setting_and_part_of_the_segment_key():
    assert SemanticSettings().precision == "fp32"
    # segments computed in another arithmetic are other segments: never reused from the cache
    assert SemanticSettings(precision="fp32").segment_key() != SemanticSettings(precision="bf16").segment_key()
    with pytest.raises(ValueError, match="precision"):
        SemanticSettings(precision="fp8")


def test_load_run_rebuilds_the_backbone_in_the_recorded_precision(dataset, tmp_path, random_weights):
    items, _ = dataset
    run = tmp_path / "run"
    settings = _settings(precision="bf16", backbone="dino_vits16", weights=str(random_weights))
    fit(items[:3], run, source=OracleSource(), settings=settings, verbose=False, figure=False)
    info = __import__("json").loads((run / "semseg.json").read_text())
    assert info["settings"]["precision"] == "bf16"
    loaded = load_run(run, device="cpu")
    assert loaded.settings.precision == "bf16"
    assert loaded.source.precision == "bf16"  # bf16 runs on the CPU (fp16 needs CUDA)


def test_fit_refuses_a_source_in_another_precision(dataset, tmp_path):
    class Bf16Oracle(OracleSource):
        precision = "bf16"

    items, _ = dataset
    with pytest.raises(ValueError, match="precision"):
        fit(items[:3], tmp_path / "run", source=Bf16Oracle(), settings=_settings(), verbose=False, figure=False)
    fit(items[:3], tmp_path / "run", source=Bf16Oracle(), settings=_settings(precision="bf16"), verbose=False, figure=False)


def test_label_grid_is_uint8_and_refuses_labels_past_254():
    segments = ImageSegments(
        segment_map=np.array([[0, 1], [2, 2]], dtype=np.int32), background=0,
        segment_ids=np.array([1, 2], dtype=np.int32), features=np.zeros((2, 4), dtype=np.float32),
        boxes_xyxy=np.zeros((2, 4), dtype=np.int32), geometry=ImageGeometry((16, 16), (16, 16), 8),
    )
    grid = label_grid(segments, np.array([253, 0]))
    assert grid.dtype == np.uint8 and grid.tolist() == [[0, 254], [1, 1]]
    # label 255 would be VOC's "void"; K <= 254 is what SemanticSettings allows
    with pytest.raises(ValueError, match="clusters"):
        label_grid(segments, np.array([254, 0]))
    with pytest.raises(ValueError, match="clusters"):
        label_grid(segments, np.array([0]))  # one cluster per segment


def test_no_import_cycle_between_semantic_and_selftrain():
    """The semantic package imports the self-training module only lazily (in predict, when a
    trained model is used); self-training reads the run folder through ``rundir`` only."""
    import ast
    from pathlib import Path

    import deepspectral.tasks.semantic as package

    folder = Path(package.__file__).parent
    for path in sorted(folder.glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in tree.body:  # module level
            if isinstance(node, ast.ImportFrom):
                assert "selftrain" not in (node.module or "") and all("selftrain" not in a.name for a in node.names), path
    rundir_tree = ast.parse((folder / "rundir.py").read_text(encoding="utf-8"))
    assert not [n for n in ast.walk(rundir_tree) if isinstance(n, ast.ImportFrom) and n.level == 1], "rundir is a leaf"
    selftrain = ast.parse((folder.parent / "selftrain.py").read_text(encoding="utf-8"))
    targets = {n.module for n in ast.walk(selftrain) if isinstance(n, ast.ImportFrom) and n.level == 1 and (n.module or "").startswith("semantic")}
    assert targets == {"semantic.rundir"}


# ---------------------------------------------------------------------------------------
# Command line (random-weights ViT-S/16 through --weights; slow on 2 cores)
# ---------------------------------------------------------------------------------------


@pytest.mark.slow
def test_cli_fit_train_predict(tmp_path, dataset, random_weights):
    from deepspectral.cli import main

    weights = random_weights
    items, _ = dataset
    photos = tmp_path / "photos"
    photos.mkdir()
    for item in items[:3]:
        (photos / item.path.name).write_bytes(item.path.read_bytes())
    run, out = tmp_path / "run", tmp_path / "out"
    common = ["--weights", str(weights), "--device", "cpu", "-q"]
    # bf16: the precision is recorded, and predict (same labels below) rebuilds the backbone in it
    assert main(["semseg", "fit", str(photos), "-o", str(run), "--clusters", "2", "--segments", "3",
                 "--max-size", "64", "--crop-size", "32", "--precision", "bf16", *common]) == 0
    info = __import__("json").loads((run / "semseg.json").read_text())
    assert info["settings"]["eigenvectors"] == 15 and info["n_labels"] == 3
    assert info["settings"]["precision"] == "bf16"
    assert main(["semseg", "predict", str(run), str(photos), "-o", str(out), "--save-viz", "--device", "cpu", "-q"]) == 0
    for item in items[:3]:
        np.testing.assert_array_equal(
            np.asarray(Image.open(out / f"{item.relative}.png")), np.asarray(Image.open(run / "labels" / f"{item.relative}.png"))
        )
    assert (out / "img00.overlay.jpg").is_file()
    assert main(["semseg", "train", str(run), "--steps", "2", "--batch-size", "2", "--crop-size", "32",
                 "--arch", "resnet10t", "--weights", "random", "--device", "cpu", "--workers", "1", "-q"]) == 0
    assert main(["semseg", "predict", str(run), str(photos), "-o", str(tmp_path / "out2"), "--use", "model", "--device", "cpu", "-q"]) == 0
    assert np.asarray(Image.open(tmp_path / "out2" / "img00.png")).shape == SIZE
    # usage errors: exit status 2, no traceback
    assert main(["semseg", "train", str(tmp_path / "nothing")]) == 2
    assert main(["semseg", "predict", str(run), str(photos), "-o", str(out), "--backbone", "dino_vitb16", "-q"]) == 2
