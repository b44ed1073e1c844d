"""A dataset run killed with SIGKILL resumes from its cache and ends byte-identical."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


@pytest.fixture(scope="module")
def weights_file(random_weights) -> Path:
    return random_weights


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    for index in range(24):
        image = np.full((120, 160, 3), rng.integers(0, 255, 3), np.uint8)
        y, x = rng.integers(10, 60), rng.integers(10, 90)
        image[y : y + 50, x : x + 60] = rng.integers(0, 255, 3)
        image = np.clip(image + rng.normal(0, 8, image.shape), 0, 255).astype(np.uint8)
        Image.fromarray(image).save(root / f"img{index:02d}.png")
    return root


def command(photos: Path, out: Path, weights: Path) -> list[str]:
    return [
        sys.executable, "-m", "deepspectral", "segment", str(photos), "-o", str(out),
        "--weights", str(weights), "--no-crf", "--batch-size", "2", "--workers", "2", "-q",
    ]  # fmt: skip


def files_of(folder: Path) -> dict[str, bytes]:
    return {
        str(path.relative_to(folder)): path.read_bytes()
        for path in sorted(folder.rglob("*"))
        if path.is_file() and ".cache" not in path.parts
    }


@pytest.mark.slow
def test_sigkill_then_resume_is_byte_identical(tmp_path, photos, weights_file):
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    reference = tmp_path / "reference"
    subprocess.run(command(photos, reference, weights_file), check=True, env=env, timeout=300)

    resumed = tmp_path / "resumed"
    process = subprocess.Popen(command(photos, resumed, weights_file), env=env)
    eig_dir = resumed / ".cache" / "eigs"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and process.poll() is None:
        if len(list(eig_dir.rglob("*.npz"))) >= 4:
            break
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    done_before = {path: path.stat().st_mtime_ns for path in eig_dir.rglob("*.npz")}
    assert 4 <= len(done_before) < 24

    subprocess.run(command(photos, resumed, weights_file), check=True, env=env, timeout=300)
    for path, mtime in done_before.items():
        assert path.stat().st_mtime_ns == mtime, f"{path.name} was recomputed"
    assert len(list(eig_dir.rglob("*.npz"))) == 24
    assert files_of(resumed) == files_of(reference)
    assert not list(resumed.rglob("*.tmp")), "temporary files left behind"


def test_cache_is_reused_and_keyed_by_settings(tmp_path, photos, weights_file):
    """In-process: a second run reads the cache; another knn_lambda makes new entries."""
    from deepspectral.cli import main

    out = tmp_path / "out"
    one = sorted(photos.glob("*.png"))[:2]
    args = ["localize", *map(str, one), "-o", str(out), "--weights", str(weights_file), "-q"]
    assert main(args) == 0
    eigs = sorted((out / ".cache" / "eigs").rglob("*.npz"))
    features = sorted((out / ".cache" / "features").rglob("*.npz"))
    assert len(eigs) == 2 and len(features) == 2
    first = (out / "boxes.json").read_bytes()
    mtimes = [path.stat().st_mtime_ns for path in eigs]
    assert main(args) == 0
    assert [path.stat().st_mtime_ns for path in eigs] == mtimes
    assert (out / "boxes.json").read_bytes() == first
    assert main([*args, "--knn-lambda", "8"]) == 0
    assert len(list((out / ".cache" / "eigs").rglob("*.npz"))) == 4
    assert len(list((out / ".cache" / "features").rglob("*.npz"))) == 2  # features unchanged
    assert main([*args, "--no-cache", "-o", str(tmp_path / "nocache")]) == 0
    assert not (tmp_path / "nocache" / ".cache").exists()
