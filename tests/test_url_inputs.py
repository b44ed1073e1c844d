"""Inputs given as fsspec URLs (``memory://``, ``file://``; s3/gs work alike with their
packages): the same images, names and outputs as the same files given as local paths.
Skipped when fsspec is not installed (``pip install "deepspectral[cloud]"``)."""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
import pytest

from deepspectral.cli import main
from deepspectral.data.images import ImageLoadError, collect_inputs, is_url, load_image

fsspec = pytest.importorskip("fsspec", reason='fsspec not installed (pip install "deepspectral[cloud]")')


def _png(seed: int, size=(40, 56)) -> bytes:
    import io

    from PIL import Image

    rng = np.random.default_rng(seed)
    image = rng.integers(0, 255, (*size, 3)).astype(np.uint8)
    image[10:30, 15:40] = 230
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


#: The tree written both on disk and in memory: relative path -> bytes.
TREE = {
    "a/x.png": _png(0),
    "b/x.png": _png(1),
    "top.jpg.png": _png(2, (48, 48)),
    ".hidden/skip.png": _png(3),
    "notes.md": b"not an image",
    "a/broken.png": b"not a png",
}


@pytest.fixture()
def trees(tmp_path):
    """The same files in a local folder and under a unique memory:// folder."""
    local = tmp_path / "local"
    memory = fsspec.filesystem("memory")
    root = f"/deepspectral-test-{uuid.uuid4().hex}"
    for name, data in TREE.items():
        (local / name).parent.mkdir(parents=True, exist_ok=True)
        (local / name).write_bytes(data)
        memory.pipe(f"{root}/{name}", data)
    yield local, f"memory://{root}"
    memory.rm(root, recursive=True)


#: JSON fields that name the inputs as given (a path or a URL).
INPUT_KEYS = {"file", "path", "error", "inputs"}


def _strip(value):
    if isinstance(value, dict):
        return {k: _strip(v) for k, v in value.items() if k not in INPUT_KEYS}
    if isinstance(value, list):
        return [_strip(v) for v in value]
    return value


def test_is_url():
    assert is_url("s3://bucket/x.jpg") and is_url("memory:///a") and is_url("file:///tmp/x.png")
    assert not is_url("/tmp/x.png") and not is_url("c:/x.png") and not is_url(Path("s3://x"))


def test_url_folder_gives_the_names_and_pixels_of_the_local_folder(trees):
    local, url = trees
    from_disk = collect_inputs([str(local)])
    from_url = collect_inputs([url])
    assert [item.name for item in from_url] == [item.name for item in from_disk] == ["a/broken", "a/x", "b/x", "top.jpg"]
    assert all(isinstance(item.path, str) and item.path.startswith("memory://") for item in from_url)
    for disk_item, url_item in zip(from_disk, from_url):
        if "broken" in disk_item.name:
            with pytest.raises(ImageLoadError, match="memory://.*not an image file"):
                url_item.load_image()
            continue
        np.testing.assert_array_equal(url_item.load_image(), disk_item.load_image())


def test_url_files_and_lists(trees, tmp_path):
    local, url = trees
    memory = fsspec.filesystem("memory")
    memory.pipe(url.removeprefix("memory://") + "/list.txt", b"# two files and a folder\na/x.png\n\nb\n" + f"{url}/top.jpg.png\n".encode())
    items = collect_inputs([f"{url}/list.txt"])
    assert [item.name for item in items] == ["a/x", "x", "top.jpg"]
    assert items[1].path == f"{url}/b/x.png"
    # a local list may name URLs too; a URL met twice is kept once
    listing = tmp_path / "list.txt"
    listing.write_text(f"{url}/a/x.png\n{url}/a/x.png\n")
    assert [item.path for item in collect_inputs([str(listing), f"{url}/b/x.png"])] == [f"{url}/a/x.png", f"{url}/b/x.png"]


def test_url_errors_are_clear(trees):
    _, url = trees
    with pytest.raises(ValueError, match="does not exist"):
        collect_inputs([f"{url}/missing.png"])
    with pytest.raises(ValueError, match="Protocol not known|cannot open"):
        collect_inputs(["nosuchprotocol://x/y.png"])
    with pytest.raises(ImageLoadError, match="no such file"):
        load_image(f"{url}/missing.png")
    with pytest.raises(ImageLoadError, match="a folder"):
        load_image(f"{url}/a")
    fsspec.filesystem("memory").pipe(url.removeprefix("memory://") + "/empty.png", b"")
    with pytest.raises(ImageLoadError, match="empty"):
        load_image(f"{url}/empty.png")


def test_cli_without_fsspec_names_the_extra(trees, tmp_path, monkeypatch, capsys, random_weights):
    import sys

    _, url = trees
    monkeypatch.setitem(sys.modules, "fsspec", None)
    assert main(["eigs", url, "-o", str(tmp_path / "out"), "--weights", str(random_weights), "-q"]) == 2
    assert 'pip install "deepspectral[cloud]"' in capsys.readouterr().err


def test_cli_on_urls_writes_the_files_of_local_paths(trees, tmp_path, random_weights):
    """``eigs`` and ``localize`` on a memory:// folder and on file:// URLs: the same output
    files as on the local folder (boxes.json's "file" is the input as given)."""
    import json

    local, url = trees
    common = ["--weights", str(random_weights), "--max-size", "64", "--no-cache", "-q"]
    for command in ("eigs", "localize"):
        outputs = {}
        for kind, source in (("local", str(local)), ("memory", url), ("file", local.as_uri())):
            out = tmp_path / f"{command}-{kind}"
            assert main([command, source, "-o", str(out), *common]) == 1  # a/broken.png
            outputs[kind] = out
        for kind in ("memory", "file"):
            names = sorted(p.relative_to(outputs[kind]).as_posix() for p in outputs[kind].rglob("*") if p.is_file())
            assert names == sorted(p.relative_to(outputs["local"]).as_posix() for p in outputs["local"].rglob("*") if p.is_file())
            for name in names:
                a, b = (outputs["local"] / name).read_bytes(), (outputs[kind] / name).read_bytes()
                if name.endswith(".json"):  # fields naming the inputs as given
                    a, b = _strip(json.loads(a)), _strip(json.loads(b))
                    if kind == "memory" and name == "boxes.json":
                        assert all(r["file"].startswith("memory://") for r in json.loads((outputs[kind] / name).read_text()))
                assert a == b, (command, kind, name)
