"""``-o`` as an fsspec URL (``memory://`` here; ``file://`` for the Ray case; s3/gs alike with
their packages): the files at the URL are byte for byte those of a local run, a killed run
resumes from what is at the URL, an upload that fails fails its image alone and leaves
none of its files there, a bad URL is refused before the backbone loads. Skipped when fsspec
is not installed (``pip install "deepspectral[cloud]"``)."""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
import pytest

from deepspectral.cli import main

fsspec = pytest.importorskip("fsspec", reason='fsspec not installed (pip install "deepspectral[cloud]")')

#: Small images in two sizes and one sub-folder, so that the runs take seconds.
SIZES = [(48, 64), (64, 48)]
COMMON = ["--max-size", "64"]
#: Each command with the options that make it write every kind of file it has.
COMMANDS = {
    "eigs": ["eigs"],
    "localize": ["localize", "--save-viz"],
    "segment": ["segment", "--no-crf", "--save-viz"],
    "matte": ["matte", "--layers", "2"],
    "discover": ["discover", "--refine", "none", "--save-masks", "--save-viz"],
}


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """Four photos (one in a sub-folder) and a broken file."""
    from PIL import Image

    folder = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    for index in range(4):
        height, width = SIZES[index % 2]
        image = rng.integers(0, 90, (height, width, 3)).astype(np.uint8)
        image[10:30, 12 + index : 40] = rng.integers(150, 255, 3).astype(np.uint8)
        path = folder / ("sub" if index == 3 else "") / f"photo{index}.png"
        path.parent.mkdir(exist_ok=True)
        Image.fromarray(image).save(path)
    (folder / "broken.png").write_bytes(b"not an image")
    return folder


@pytest.fixture(autouse=True)
def staging(tmp_path, monkeypatch) -> Path:
    """The staging folders (``$XDG_CACHE_HOME/deepspectral/url-outputs``) under the test's folder."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    return tmp_path / "xdg"


@pytest.fixture()
def url():
    """A unique, empty memory:// folder (removed afterwards)."""
    root = f"/deepspectral-out-{uuid.uuid4().hex}"
    yield f"memory://{root}"
    memory = fsspec.filesystem("memory")
    if memory.exists(root):
        memory.rm(root, recursive=True)


def url_tree(url: str) -> dict[str, bytes]:
    fs, root = fsspec.core.url_to_fs(url)
    return {name[len(root) + 1 :]: fs.cat_file(name) for name in fs.find(root)}


def url_times(url: str) -> dict[str, float]:
    fs, root = fsspec.core.url_to_fs(url)
    from deepspectral.remote import _modified

    return {name[len(root) + 1 :]: _modified(info) for name, info in fs.find(root, detail=True).items()}


def local_tree(root: Path) -> dict[str, bytes]:
    return {
        path.relative_to(root).as_posix(): path.read_bytes()
        for path in sorted(root.rglob("*"))
        if path.is_file() and ".cache" not in path.relative_to(root).parts
    }


def run(command: list, photos: Path, out, weights: Path, *extra, quiet: bool = True) -> int:
    return main([*command, str(photos), "-o", str(out), "--weights", str(weights), *COMMON, *extra, *(["-q"] if quiet else [])])


# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(COMMANDS))
def test_outputs_at_the_url_are_those_of_a_local_run(name, tmp_path, url, photos, random_weights):
    command = COMMANDS[name]
    assert run(command, photos, tmp_path / "local", random_weights, "--no-cache") == 1  # broken.png
    assert run(command, photos, url + "/", random_weights, "--no-cache") == 1
    local, remote = local_tree(tmp_path / "local"), url_tree(url)
    assert "errors.json" in remote
    assert sorted(remote) == sorted(local)
    assert [name for name in local if local[name] != remote[name]] == []


#: Settings that change the outputs, for a run whose files a rerun must not keep.
OTHER_SETTINGS = {"eigs": ["--n-eigenvectors", "4"], "discover": ["--max-objects", "1"]}  # (no file more than the default)


@pytest.mark.parametrize("name", ["eigs", "discover"])
def test_an_interrupted_run_resumes_from_what_is_at_the_url(name, tmp_path, url, photos, random_weights, monkeypatch, capsys):
    """A run with other settings fills the URL; then Ctrl-C after two images; the rerun
    uploads nothing of those two again (same times at the URL), skips them only (the other
    settings' files are older than the record: redone), and the URL ends with the files of
    an uninterrupted local run; ``--overwrite`` then redoes every image."""
    from deepspectral.remote import UploadingWork

    command = COMMANDS[name]
    assert run(command, photos, tmp_path / "local", random_weights, "--no-cache") == 1
    original = UploadingWork.__call__
    calls = []

    def interrupted(self, result):
        if len(calls) == 2:
            raise KeyboardInterrupt
        calls.append(result.item.name)
        return original(self, result)

    assert run(command, photos, url, random_weights, *OTHER_SETTINGS[name]) == 1
    monkeypatch.setattr(UploadingWork, "__call__", interrupted)
    assert run(command, photos, url, random_weights) == 130
    monkeypatch.setattr(UploadingWork, "__call__", original)
    before = url_times(url)
    finished = {path: time for path, time in before.items() if any(Path(path).name.startswith(f"{Path(n).name}.") for n in calls)}
    assert finished, "the interrupted run uploaded nothing"
    capsys.readouterr()
    assert run(command, photos, url, random_weights, quiet=False) == 1
    assert "2 already done (skipped)" in capsys.readouterr().out
    after = url_times(url)
    assert {path: after[path] for path in finished} == finished  # not uploaded again
    assert sorted(url_tree(url)) == sorted(local_tree(tmp_path / "local"))
    local = local_tree(tmp_path / "local")
    assert [path for path, data in url_tree(url).items() if local[path] != data] == []
    # the rerun counted them as done (the summary line, shown without -q)
    assert run(command, photos, url, random_weights, quiet=False) == 1
    assert "4 already done (skipped)" in capsys.readouterr().out
    assert run(command, photos, url, random_weights, "--overwrite", quiet=False) == 1
    assert "already done" not in capsys.readouterr().out


def test_a_sigkilled_run_resumes_from_what_is_at_a_file_url(tmp_path, photos, random_weights, staging):
    """A run in another process writing to a file:// URL is killed with SIGKILL once some
    images are at the URL; the rerun leaves those files untouched (same modification
    times), skips them, and the URL ends with the files of an uninterrupted local run."""
    import os
    import shutil
    import subprocess
    import sys
    import time

    from PIL import Image

    many = tmp_path / "many"
    shutil.copytree(photos, many)
    for index in range(4, 12):  # 12 photos: the kill lands mid-run
        image = np.asarray(Image.open(photos / f"photo{index % 3}.png"))
        Image.fromarray(np.ascontiguousarray(np.roll(image, index, axis=1))).save(many / f"photo{index}.png")
    url = (tmp_path / "bucket" / "run").as_uri()
    target = tmp_path / "bucket" / "run"
    args = ["eigs", str(many), "--weights", str(random_weights), *COMMON, "--no-cache"]
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "XDG_CACHE_HOME": str(staging)}
    driver = subprocess.Popen([sys.executable, "-m", "deepspectral", *args, "-o", url, "-q"], env=environment,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while len(list(target.glob("*.eigs.png"))) < 2 and driver.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        driver.kill()
        driver.wait()
    finished = {path: path.stat().st_mtime_ns for path in target.rglob("*.eigs.png")}
    finished.update({path.with_suffix("").with_suffix(".npz"): 0 for path in finished})
    finished = {path: path.stat().st_mtime_ns for path in finished}  # each finished image: both files there
    assert 2 <= len(finished) // 2 < 11, "the run was not killed mid-run"
    assert main([*args, "-o", url]) == 1  # the broken photo
    assert {path: path.stat().st_mtime_ns for path in finished} == finished  # nothing finished redone
    assert main([*args, "-o", str(tmp_path / "local")]) == 1
    local, remote = local_tree(tmp_path / "local"), local_tree(target)
    assert sorted(remote) == sorted(local)
    assert [name for name in local if local[name] != remote[name]] == []


@pytest.mark.parametrize("protocol", ["memory", "file"])
def test_a_failed_upload_fails_its_image_alone(protocol, tmp_path, url, photos, random_weights, monkeypatch, staging):
    """The second file of one image cannot be uploaded: that image fails (errors.json at the
    URL, exit 1) and none of its files is left at the URL (its first file, uploaded, is taken
    back), nor any temporary file; every other image is complete."""
    import json

    from deepspectral.remote import RemoteFolder

    if protocol == "file":
        url = (tmp_path / "bucket" / "run").as_uri()
    original = RemoteFolder._put

    def failing(self, path, relative):
        if relative == "photo1.eigs.png":
            raise OSError(28, "No space left on device")
        return original(self, path, relative)

    monkeypatch.setattr(RemoteFolder, "_put", failing)
    assert run(["eigs"], photos, url, random_weights, "--no-cache") == 1
    files = url_tree(url)
    assert not [name for name in files if "photo1" in name or name.endswith(".tmp")]
    assert sorted(files) == sorted(
        [".deepspectral-run.json", "errors.json"]
        + [f"{stem}{suffix}" for stem in ("photo0", "photo2", "sub/photo3") for suffix in (".npz", ".eigs.png")]
    )
    errors = {record["image"]: record["error"] for record in json.loads(files["errors.json"])}
    assert sorted(errors) == ["broken", "photo1"]
    assert "cannot upload" in errors["photo1"] and "photo1.eigs.png" in errors["photo1"]
    assert not list(staging.rglob("photo1*"))  # nor in the staging folder
    # the rerun redoes that image only, now that the store takes it
    monkeypatch.setattr(RemoteFolder, "_put", original)
    assert run(["eigs"], photos, url, random_weights, "--no-cache") == 1
    assert {"photo1.npz", "photo1.eigs.png"} <= set(url_tree(url))
    assert [record["image"] for record in json.loads(url_tree(url)["errors.json"])] == ["broken"]


def test_bad_urls_are_refused_before_the_backbone_loads(tmp_path, photos, random_weights, monkeypatch, capsys):
    import sys

    import deepspectral.backbones

    def no_backbone(*args, **kwargs):
        raise AssertionError("the backbone was loaded")

    monkeypatch.setattr(deepspectral.backbones, "Backbone", no_backbone)
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    cases = [
        (["eigs"], "nosuchprotocol://bucket/run", "-o: cannot open 'nosuchprotocol://bucket/run'"),
        (["localize"], (a_file / "run").as_uri(), "-o: cannot write in file://"),
        (["segment", "--no-crf"], "memory://run", None),  # fine: checked, then the backbone
        (["semseg", "fit"], "memory://run", "semseg fit cannot write to a URL"),
    ]
    if __import__("importlib").util.find_spec("ray") is not None:
        cases.append((["discover", "--engine", "ray"], "memory://run", "the Ray workers cannot write there"))
    for command, out, message in cases:
        status = main([*command, str(photos), "-o", out, "--weights", str(random_weights), "-q"])
        err = capsys.readouterr().err
        if message is None:  # a good URL: the checks pass, the (refused) backbone is next
            assert status == 70 and "the backbone was loaded" in err
            continue
        assert status == 2, (command, out, err)
        assert message in err and len(err.strip().splitlines()) == 1, err
    monkeypatch.setitem(sys.modules, "fsspec", None)
    assert main(["matte", str(photos), "-o", "memory://run", "--weights", str(random_weights), "-q"]) == 2
    assert '-o: \'memory://run\': URLs are read and written with fsspec: pip install "deepspectral[cloud]"' in capsys.readouterr().err


def test_commands_without_url_outputs_refuse_a_url(tmp_path, capsys):
    # eval and semseg predict write local folders only: a URL is refused at parse time
    # rather than taken for a local folder named "s3:" (exit 2, nothing created)
    for command in (["eval", "localization", "--dataset", "voc07"], ["eval", "segmentation", "--dataset", "ecssd"],
                    ["eval", "discovery", "--dataset", "coco20k"], ["semseg", "predict", "RUN", "IMAGES"]):  # fmt: skip
        assert main([*command, "-o", "s3://bucket/run"]) == 2, command
        err = capsys.readouterr().err
        assert "'s3://bucket/run': a URL is not supported here" in err and "give a local folder" in err, err
    assert not any(tmp_path.iterdir()) and not Path("s3:").exists()


def test_remote_folder_puts_whole_files_or_none(tmp_path):
    """On a file system (file://) a file goes to a temporary name first, then is moved; a
    failure leaves neither; on an object store (memory://) it is put at its name."""
    from deepspectral.remote import RemoteFolder

    staging = tmp_path / "staging"
    (staging / "a").mkdir(parents=True)
    (staging / "a" / "x.bin").write_bytes(b"x" * 1000)
    (staging / "y.bin").write_bytes(b"y")
    folder = RemoteFolder((tmp_path / "remote").as_uri() + "/", staging)
    assert not folder.atomic_put and RemoteFolder("memory://r", staging).atomic_put
    moves = []
    fs = folder._open()
    original_mv = fs.mv
    monkey = pytest.MonkeyPatch()
    monkey.setattr(fs, "mv", lambda source, target: (moves.append((source, target)), original_mv(source, target)))
    assert folder.upload([staging / "a" / "x.bin", staging / "y.bin", tmp_path / "elsewhere.bin"]) == ["a/x.bin", "y.bin"]
    assert [Path(source).name.startswith(".x.bin.") and source.endswith(".tmp") for source, _ in moves] == [True, False]
    assert (tmp_path / "remote" / "a" / "x.bin").read_bytes() == b"x" * 1000
    times = folder.modified_times()
    assert sorted(times) == ["a/x.bin", "y.bin"] and all(isinstance(t, float) for t in times.values())
    monkey.setattr(fs, "mv", lambda source, target: (_ for _ in ()).throw(OSError("link down")))
    (staging / "z.bin").write_bytes(b"z")
    with pytest.raises(OSError, match="cannot upload file://.*/remote/z.bin: OSError: link down"):
        folder.upload([staging / "z.bin"])
    monkey.undo()
    assert sorted(p.name for p in (tmp_path / "remote").rglob("*")) == ["a", "x.bin", "y.bin"]
    assert folder.read_many(["y.bin", "missing.bin"]) == {"y.bin": b"y"}
    # a killed run's temporary file is removed by the listing that asks for it
    (tmp_path / "remote" / "a" / ".z.bin.0123abcd.tmp").write_bytes(b"half")
    assert sorted(folder.modified_times()) == ["a/.z.bin.0123abcd.tmp", "a/x.bin", "y.bin"]
    assert sorted(folder.modified_times(remove_temporary=True)) == ["a/x.bin", "y.bin"]
    assert not (tmp_path / "remote" / "a" / ".z.bin.0123abcd.tmp").exists()


# ---------------------------------------------------------------------------------------
# On a local Ray of 2 CPUs: the workers upload the files they wrote
# ---------------------------------------------------------------------------------------


@pytest.mark.ray
@pytest.mark.skipif(__import__("importlib").util.find_spec("ray") is None, reason='Ray not installed (pip install "deepspectral[ray]")')
def test_ray_run_to_a_file_url_writes_the_files_of_a_local_run(tmp_path, photos, random_weights):
    import logging

    import ray
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the Ray workers: the same features either way, less waiting on 2 cores
    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING)
    try:
        url = (tmp_path / "bucket" / "run").as_uri()
        assert run(["eigs"], photos, tmp_path / "local", random_weights, "--no-cache") == 1
        assert run(["eigs"], photos, url, random_weights, "--no-cache", "--engine", "ray") == 1
    finally:
        ray.shutdown()
        torch.set_num_threads(threads)
    local, remote = local_tree(tmp_path / "local"), local_tree(tmp_path / "bucket" / "run")
    assert sorted(remote) == sorted(local)
    assert [name for name in local if local[name] != remote[name]] == []
