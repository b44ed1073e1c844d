"""The on-disk cache: keys, round trips, atomicity."""

from __future__ import annotations

import os

import numpy as np

from deepspectral import PatchFeatures
from deepspectral.spectral import Decomposition
from deepspectral.files import file_digest, remove_stale_temp_files
from deepspectral.store import Store, cache_key, load_decomposition, save_decomposition


def make_features(seed=0):
    rng = np.random.default_rng(seed)
    return PatchFeatures(rng.standard_normal((3, 4, 8)).astype(np.float32), 16, (50, 70), (50, 70), "dino_vits16")


def test_cache_key_changes_with_every_setting():
    base = {"backbone": "dino_vits16", "knn_lambda": 10.0, "max_size": 800}
    key = cache_key("abc", base)
    assert key == cache_key("abc", dict(reversed(list(base.items()))))  # order-free
    assert key != cache_key("abd", base)
    for name, value in [("backbone", "dino_vits8"), ("knn_lambda", 8.0), ("max_size", 640)]:
        assert key != cache_key("abc", {**base, name: value})


def test_features_round_trip_is_exact(tmp_path):
    # results must not depend on the cache: features come back bit for bit (issue #11;
    # the cache used to round them to float16)
    store = Store(tmp_path)
    feats = make_features()
    store.save_features("k1", feats)
    loaded = store.load_features("k1")
    assert loaded.features.dtype == np.float32
    np.testing.assert_array_equal(loaded.features, feats.features)
    assert loaded.image_size == (50, 70) and loaded.backbone == "dino_vits16"
    assert store.load_features("missing") is None


def test_corrupt_entry_counts_as_missing(tmp_path):
    store = Store(tmp_path)
    store.save_features("k2", make_features())
    path = next((tmp_path / "features").rglob("*.npz"))
    path.write_bytes(b"garbage")
    assert store.load_features("k2") is None


def test_decomposition_round_trip(tmp_path):
    store = Store(tmp_path)
    dec = Decomposition(np.arange(3.0), np.ones((3, 4, 5), np.float32), (40, 50), (40, 50), (32, 48), 16, {"a": 1})
    store.save_decomposition("k3", dec)
    back = store.load_decomposition("k3")
    np.testing.assert_array_equal(back.eigenvectors, dec.eigenvectors)
    assert back.settings == {"a": 1}


def test_stale_temp_files_removed(tmp_path):
    (tmp_path / "features").mkdir()
    dead = tmp_path / "features" / ".x.npz.999999999.ab12cd34.tmp"
    dead.write_bytes(b"half")
    alive = tmp_path / f".y.npz.{os.getpid()}.ab12cd34.tmp"
    alive.write_bytes(b"mine")
    assert remove_stale_temp_files(tmp_path) == 1
    assert not dead.exists() and alive.exists()


def test_file_digest(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_bytes(b"x" * 3_000_000)
    b.write_bytes(b"x" * 2_999_999 + b"y")
    assert file_digest(a) != file_digest(b) and len(file_digest(a)) == 64


def test_npz_files_are_byte_reproducible(tmp_path):
    dec = Decomposition(np.arange(3.0), np.ones((3, 4, 5), np.float32), (40, 50), (40, 50), (32, 48), 16, {"a": 1})
    save_decomposition(tmp_path / "a.npz", dec)
    import time

    time.sleep(2.1)  # zip timestamps have 2 s resolution
    save_decomposition(tmp_path / "b.npz", dec)
    assert (tmp_path / "a.npz").read_bytes() == (tmp_path / "b.npz").read_bytes()


def test_npz_round_trip_keeps_every_field(tmp_path):
    dec = Decomposition(np.arange(3.0), np.ones((3, 4, 5), np.float32), (40, 50), (39, 49), (32, 48), 16, {"a": 1})
    back = load_decomposition(save_decomposition(tmp_path / "d.npz", dec))
    assert (back.image_size, back.input_size, back.crop_size, back.patch_size) == ((40, 50), (39, 49), (32, 48), 16)
    np.testing.assert_array_equal(back.eigenvalues, dec.eigenvalues)


def test_image_digest_is_the_pixels():
    from deepspectral.store import image_digest

    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (6, 8, 3), dtype=np.uint8)
    assert image_digest(image) == image_digest(image.copy())
    assert image_digest(image) == image_digest(np.asfortranarray(image))  # layout does not matter
    changed = image.copy()
    changed[5, 7, 2] ^= 1
    assert image_digest(changed) != image_digest(image)
    assert image_digest(image.reshape(8, 6, 3)) != image_digest(image)  # nor does a reshape collide
