"""The Ray engine (``--engine ray``): same outputs as a local run, resumable, survives killed
workers. A local Ray of 2 CPUs, 20 small synthetic photos and a random-initialised ViT-S/16.
Skipped when Ray is not installed (``pip install "deepspectral[ray]"``), except the option
checks, which need no Ray."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import numpy as np
import pytest

from deepspectral.cli import main

pytestmark = pytest.mark.ray

N_PHOTOS = 20
#: Small images in three sizes (two size buckets in a batch), so that 2 CPUs run the tests fast.
SIZES = [(96, 128), (128, 96), (112, 112)]
COMMON = ["--max-size", "128", "--batch-size", "4", "-q"]

needs_ray = pytest.mark.skipif(
    __import__("importlib").util.find_spec("ray") is None, reason='Ray not installed (pip install "deepspectral[ray]")'
)


@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray", reason='Ray not installed (pip install "deepspectral[ray]")')
    import logging

    import torch

    # one torch thread in this process, as in the Ray workers (the features are the same
    # bits either way): on a busy 2-core machine, two threads per forward pass of a tiny
    # image spend most of their time waiting for each other
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING)
    yield ray
    ray.shutdown()
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """20 synthetic photos (a bright ellipse on a textured background) and one broken file."""
    from PIL import Image

    folder = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    for index in range(N_PHOTOS):
        height, width = SIZES[index % len(SIZES)]
        yy, xx = np.mgrid[:height, :width]
        cy, cx = rng.uniform(0.3, 0.7) * height, rng.uniform(0.3, 0.7) * width
        inside = ((yy - cy) / (0.25 * height)) ** 2 + ((xx - cx) / (0.2 * width)) ** 2 < 1
        image = rng.integers(0, 90, (height, width, 3)).astype(np.uint8)
        image[inside] = rng.integers(150, 255, 3).astype(np.uint8)
        Image.fromarray(image).save(folder / f"photo{index:02d}.png")
    (folder / "photo99_broken.png").write_bytes(b"not an image")
    return folder


#: Fields of ``semseg fit``'s semseg.json that differ from run to run (measured times).
VOLATILE_KEYS = {"seconds", "peak_rss_mb"}


def _content(path: Path) -> bytes:
    if path.name != "semseg.json":
        return path.read_bytes()
    import json

    record = json.loads(path.read_text())
    return json.dumps({k: v for k, v in record.items() if k not in VOLATILE_KEYS}, sort_keys=True).encode()


def _tree(root: Path) -> dict[str, bytes]:
    return {
        path.relative_to(root).as_posix(): _content(path)
        for path in sorted(root.rglob("*"))
        if path.is_file() and ".cache" not in path.relative_to(root).parts
    }


def _assert_same_tree(local: Path, ray: Path) -> None:
    a, b = _tree(local), _tree(ray)
    assert sorted(a) == sorted(b)
    different = [name for name in a if a[name] != b[name]]
    assert not different, f"files differ between the local and the Ray run: {different}"


# ---------------------------------------------------------------------------------------
# Option checks (no Ray needed)
# ---------------------------------------------------------------------------------------


def test_ray_options_need_engine_ray(tmp_path, photos, random_weights, capsys):
    for option in (["--ray-address", "auto"], ["--ray-actors", "2"]):
        args = ["eigs", str(photos), "-o", str(tmp_path / "out"), "--weights", str(random_weights), *option]
        assert main(args) == 2
        assert "only with --engine ray" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_engine_ray_without_ray_names_the_extra(tmp_path, photos, random_weights, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    args = ["localize", str(photos), "-o", str(tmp_path / "out"), "--weights", str(random_weights), "--engine", "ray"]
    assert main(args) == 2
    assert 'pip install "deepspectral[ray]"' in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------------
# With a local Ray of 2 CPUs
# ---------------------------------------------------------------------------------------


@needs_ray
@pytest.mark.parametrize(
    "command",
    [
        ["eigs"],
        ["localize", "--save-viz", "--workers", "2"],
        ["segment", "--no-crf", "--workers", "2"],
        ["matte", "--layers", "2", "--workers", "2"],
        ["discover", "--max-objects", "2", "--refine", "none", "--save-masks"],
        # the torch eigen-step runs on the backbone actors, batched as in a local run
        ["localize", "--eigen-backend", "torch"],
        # the per-image stage on Ray (segments, their crops' CLS features on the backbone actor)
        ["semseg", "fit", "--clusters", "3", "--segments", "4", "--workers", "2"],
    ],
    ids=["eigs", "localize", "segment-nocrf", "matte", "discover", "localize-torch", "semseg-fit"],
)
def test_ray_run_writes_the_same_files_as_a_local_run(tmp_path, ray_cluster, photos, random_weights, command):
    words = 2 if command[0] == "semseg" else 1
    inputs = [str(photos)]
    if command[0] == "eigs" and __import__("importlib").util.find_spec("fsspec") is not None:
        inputs = [photos.as_uri()]  # a file:// URL, read through fsspec by the Ray actors
    if command[0] in ("semseg", "discover") or "torch" in command:
        # the slowest (semseg's crops through the backbone, discover's 480 x 480 cuts) and a
        # variant of localize: 8 photos and the broken one, so that the Ray tests stay under 3 minutes
        inputs = [str(path) for path in sorted(photos.glob("*.png"))[:8]] + [str(photos / "photo99_broken.png")]
    base = [*command[:words], *inputs, "--weights", str(random_weights), "--no-cache", *COMMON, *command[words:]]
    # one image is broken: both runs exit 1 and write the same errors.json
    assert main([*base, "-o", str(tmp_path / "local")]) == 1
    assert main([*base, "-o", str(tmp_path / "ray"), "--engine", "ray"]) == 1
    assert (tmp_path / "ray" / "errors.json").is_file()
    _assert_same_tree(tmp_path / "local", tmp_path / "ray")


@needs_ray
def test_rerun_after_the_driver_was_killed_recomputes_nothing_finished(tmp_path, ray_cluster, photos, random_weights):
    """A driver (another process, on this Ray) is killed with SIGKILL mid-run; the rerun
    leaves every cache entry it finished untouched and writes the boxes of a local run."""
    import subprocess
    import time

    cache = tmp_path / "cache"
    base = ["localize", str(photos), "--weights", str(random_weights), "--cache", str(cache), *COMMON, "--workers", "2"]
    address = ray_cluster.get_runtime_context().gcs_address
    driver = subprocess.Popen(
        [sys.executable, "-m", "deepspectral", *base, "-o", str(tmp_path / "killed"), "--engine", "ray", "--ray-address", address],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 240
        while len(list(cache.glob("eigs/*/*.npz"))) < 4 and driver.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        driver.kill()
        driver.wait()
    time.sleep(1)  # tasks already running finish their atomic writes
    entries = {path: path.stat().st_mtime_ns for path in cache.rglob("*.npz")}
    assert 4 <= len(list(cache.glob("eigs/*/*.npz"))) < N_PHOTOS, "the driver was not killed mid-run"
    assert main([*base, "-o", str(tmp_path / "ray"), "--engine", "ray"]) == 1  # the broken photo
    assert {path: path.stat().st_mtime_ns for path in entries} == entries  # nothing finished recomputed
    assert len(list(cache.rglob("*.npz"))) == 2 * N_PHOTOS
    assert main([*base, "-o", str(tmp_path / "local"), "--no-cache"]) == 1
    assert (tmp_path / "ray" / "boxes.json").read_bytes() == (tmp_path / "local" / "boxes.json").read_bytes()


@needs_ray
def test_killed_workers_have_their_images_retried(tmp_path, ray_cluster, photos, random_weights):
    """One image task's worker process and the backbone actor's process are killed (SIGKILL)
    mid-run: every image is still done once, in order, with the outputs of a local run."""
    from deepspectral.backbones import Backbone
    from deepspectral.data.images import collect_inputs
    from deepspectral.engine import Engine
    from deepspectral.engine_ray import RayEngine

    items = collect_inputs([str(photos)])
    marker = tmp_path / "killed-once"

    def make_work(out: Path, kill: bool):
        def work(result):
            from deepspectral.store import save_decomposition

            if kill and result.item.name == "photo05" and not marker.exists():
                marker.touch()
                os.kill(os.getpid(), signal.SIGKILL)  # this Ray worker process dies mid-image
            save_decomposition(out / f"{result.item.name}.npz", result.decomposition)
            return result.item.name

        return work

    def engine():
        backbone = Backbone("dino_vits16", weights=random_weights, device="cpu")
        return Engine(backbone, max_size=128, batch_size=4, workers=2)

    local_out, ray_out = tmp_path / "local", tmp_path / "ray"
    local_out.mkdir(), ray_out.mkdir()
    local_records, ray_records = [], []
    local = engine().process(items, make_work(local_out, False), out_dir=local_out, desc="t", verbose=False,
                             collect=lambda item, record: local_records.append(record))  # fmt: skip

    runner = RayEngine(engine())
    killed = []

    def collect(item, record):
        ray_records.append(record)
        if len(ray_records) == 2:  # the actor still has batches to do
            killed.extend(runner.worker_pids())
            os.kill(killed[0], signal.SIGKILL)

    summary = runner.process(items, make_work(ray_out, True), out_dir=ray_out, desc="t", verbose=False, collect=collect)
    assert marker.exists() and len(killed) == 1
    assert (summary.done, summary.failed) == (local.done, local.failed) == (N_PHOTOS, 1)
    assert ray_records == local_records == [item.name for item in items if "broken" not in item.name]
    assert summary.errors == local.errors
    _assert_same_tree(local_out, ray_out)


@needs_ray
def test_fatal_error_in_work_stops_the_ray_run(tmp_path, ray_cluster, photos, random_weights):
    from deepspectral.backbones import Backbone
    from deepspectral.data.images import collect_inputs
    from deepspectral.engine import Engine
    from deepspectral.engine_ray import RayEngine
    from deepspectral.errors import SetupError

    def work(result):
        raise SetupError("no CRF here")

    runner = RayEngine(Engine(Backbone("dino_vits16", weights=random_weights, device="cpu"), max_size=128))
    with pytest.raises(SetupError, match="no CRF here"):
        runner.process(collect_inputs([str(photos)])[:3], work, out_dir=tmp_path, desc="t", verbose=False)


@needs_ray
def test_too_many_cpu_actors_is_refused_in_one_line(tmp_path, ray_cluster, photos, random_weights, capsys):
    args = ["eigs", str(photos), "-o", str(tmp_path / "out"), "--weights", str(random_weights), "-q",
            "--engine", "ray", "--ray-actors", "2"]  # fmt: skip
    assert main(args) == 2  # 2 actors on the CPU would take both CPUs of the local Ray
    assert "leave none for the eigen-step" in capsys.readouterr().err
