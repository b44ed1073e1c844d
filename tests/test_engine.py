"""The engine every dataset run goes through: order, per-image failures, the cache, and
results that do not depend on the cache."""

from __future__ import annotations

import shutil
from pathlib import Path, PurePosixPath

import numpy as np
import pytest
from PIL import Image

from deepspectral.cli import main
from deepspectral.data.images import InputImage
from deepspectral.engine import Engine
from deepspectral.store import Store

from oracle import shared_data_dir


@pytest.fixture(scope="module")
def backbone(random_weights):
    from deepspectral import Backbone

    return Backbone("dino_vits16", weights=random_weights, device="cpu")


def _items(folder: Path, n: int, seed: int = 0) -> list[InputImage]:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    items = []
    for index in range(n):
        image = rng.integers(0, 255, (48 + 16 * (index % 3), 64, 3), dtype=np.uint8)
        path = folder / f"im{index}.png"
        Image.fromarray(image).save(path)
        items.append(InputImage(path, PurePosixPath(f"im{index}")))
    return items


def test_results_in_input_order_with_failures_isolated(tmp_path, backbone):
    items = _items(tmp_path / "in", 5)
    items[2].path.write_bytes(b"not an image")
    engine = Engine(backbone, store=None, batch_size=2, workers=2)
    results = list(engine.run(items))
    assert [r.item for r in results] == items
    assert [r.error is None for r in results] == [True, True, False, True, True]
    assert all(r.decomposition.image_size == r.image.shape[:2] for r in results if r.error is None)
    seen = []
    summary = engine.process(items, lambda result: seen.append(result.item.name), out_dir=tmp_path / "out", desc="t", verbose=False)
    assert (summary.done, summary.failed) == (4, 1) and seen == ["im0", "im1", "im3", "im4"]
    assert summary.errors[0]["image"] == "im2" and summary.errors[0]["path"] == str(items[2].path)


def test_cache_is_reused_and_changes_nothing(tmp_path, backbone):
    items = _items(tmp_path / "in", 3)
    plain = list(Engine(backbone).run(items))
    store = Store(tmp_path / "cache")
    first = list(Engine(backbone, store=store).run(items))
    assert all("features" in r.seconds and "eigenvectors" in r.seconds for r in first)
    again = list(Engine(backbone, store=store, keep_features=True).run(items))
    assert all(set(r.seconds) == {"load"} for r in again)  # everything else from the cache
    for a, b, c in zip(plain, first, again):
        np.testing.assert_array_equal(a.decomposition.eigenvectors, b.decomposition.eigenvectors)
        np.testing.assert_array_equal(a.decomposition.eigenvectors, c.decomposition.eigenvectors)
        np.testing.assert_array_equal(a.features.features, c.features.features)
    features_only = list(Engine(backbone, store=store, decompose=False).run(items))
    assert all(r.decomposition is None and r.features is not None and set(r.seconds) == {"load"} for r in features_only)


def test_bad_settings_are_refused(backbone):
    for kwargs, name in [({"knn_lambda": -1.0}, "knn_lambda"), ({"n_eigenvectors": 0}, "n_eigenvectors"),
                         ({"knn_kernel": "nope"}, "knn_kernel"), ({"workers": 0}, "workers")]:  # fmt: skip
        with pytest.raises(ValueError, match=name):
            Engine(backbone, **kwargs)


def test_auto_eigen_backend_is_decided_for_each_backbone(backbone):
    # issue #15: a Ray actor's backbone on a GPU runs the eigen-step in torch with "auto",
    # even when the driver's backbone (and so the engine it copies) is on the CPU
    class OnGpu:
        device = "cuda:0"

    driver = Engine(backbone)
    assert (driver.eigen_backend, driver.eigen_device) == ("cpu", "cpu")
    actor = driver.with_backbone(OnGpu())
    assert (actor.eigen_backend, actor.eigen_device, actor.backbone.device) == ("torch", "cuda:0", "cuda:0")
    assert (driver.eigen_backend, driver.backbone) == ("cpu", backbone)  # the original is unchanged
    assert Engine(backbone, eigen_backend="cpu").with_backbone(OnGpu()).eigen_backend == "cpu"  # asked for
    assert Engine(backbone, eigen_backend="torch").with_backbone(backbone).eigen_backend == "torch"
    assert driver.with_backbone(backbone).eigen_backend == "cpu"


def _real_photos(tmp_path: Path) -> Path:
    root = shared_data_dir()
    sources = sorted((root / "sod" / "images").glob("*.jpg"))[:3] + sorted((root / "davis2016-val" / "JPEGImages").glob("*/*.jpg"))[:2]
    if len(sources) < 5:
        pytest.skip(f"shared photos not found under {root} (set DEEPSPECTRAL_SHARED_DATA)")
    folder = tmp_path / "photos"
    folder.mkdir()
    for index, source in enumerate(sources):
        shutil.copyfile(source, folder / f"{index}_{source.name}")
    return folder


def _outputs(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file() and ".cache" not in p.parts}


@pytest.mark.slow
def test_outputs_identical_with_and_without_the_cache(tmp_path, random_weights):
    # issue #11: cached runs used float16-rounded features, so .npz files, boxes and masks
    # could differ from a --no-cache run; now every byte is the same (DAVIS frames are
    # downscaled by --max-size, SOD photos are not)
    photos = _real_photos(tmp_path)
    for command, extra in [("eigs", []), ("localize", []), ("segment", ["--no-crf"])]:
        runs = {}
        for name, cache in [("cold", []), ("warm", []), ("none", ["--no-cache"])]:
            out = tmp_path / command / ("cache" if name != "none" else "none")
            argv = [command, str(photos), "-o", str(out), "--weights", str(random_weights), "--device", "cpu", "-q"]
            assert main([*argv, *extra, *cache]) == 0
            runs[name] = _outputs(out)
        assert runs["cold"] == runs["none"] == runs["warm"], command
        assert len(runs["none"]) >= (1 if command == "localize" else 5)


def test_oversize_image_refused_before_the_backbone_runs(tmp_path, backbone):
    # issue #12 item 4: the grid-size check used to run after the ViT forward pass
    from deepspectral import defaults

    items = _items(tmp_path / "in", 1)
    big = tmp_path / "in" / "big.png"
    side = int((defaults.MAX_GRID_NODES ** 0.5) * defaults.GRID_STRIDE) + 64  # grid just over the limit
    Image.fromarray(np.zeros((side, side, 3), np.uint8)).save(big)
    items.append(InputImage(big, PurePosixPath("big")))
    calls = []

    class Counting:
        def __getattr__(self, name):
            return getattr(backbone, name)

        def extract(self, image, **kwargs):
            calls.append(image.shape)
            return backbone.extract(image, **kwargs)

    results = list(Engine(Counting(), max_size=None).run(items))
    assert results[0].error is None and isinstance(results[1].error, ValueError)
    assert "--max-size" in str(results[1].error)
    assert calls == [results[0].image.shape]  # the big image never reached the backbone
