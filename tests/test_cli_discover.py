"""``deepspectral discover``: instances.json, extra outputs, resume, broken images, bad options."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from deepspectral.cli import main


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("discover photos")
    rng = np.random.default_rng(0)
    for index in range(5):
        image = np.full((72, 96, 3), rng.integers(0, 255, 3), np.uint8)
        for _ in range(2):
            y, x = rng.integers(4, 40), rng.integers(4, 60)
            image[y : y + 24, x : x + 28] = rng.integers(0, 255, 3)
        image = np.clip(image + rng.normal(0, 6, image.shape), 0, 255).astype(np.uint8)
        folder = root / ("sub" if index == 4 else "")
        folder.mkdir(exist_ok=True)
        Image.fromarray(image).save(folder / f"img{index}.png")
    return root


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def base(photos, out, weights, *extra):
    return ["discover", photos, "-o", out, "--weights", weights, "--resize", "64", "--refine", "none", "-q", *extra]


def test_writes_coco_instances_loadable_by_pycocotools(photos, tmp_path, random_weights, capsys):
    out = tmp_path / "out"
    code, _, err = run(capsys, *base(photos, out, random_weights, "--save-masks", "--save-viz"))
    assert code == 0, err
    data = json.loads((out / "instances.json").read_text())
    assert [image["file_name"] for image in data["images"]] == [f"img{i}.png" for i in range(4)] + ["sub/img4.png"]
    assert all((image["width"], image["height"]) == (96, 72) for image in data["images"])
    assert data["categories"] == [{"id": 1, "name": "object"}]
    assert data["annotations"], "no instance found at all"
    per_image = {}
    for ann in data["annotations"]:
        per_image.setdefault(ann["image_id"], []).append(ann)
        assert ann["category_id"] == 1 and ann["iscrowd"] == 0 and 0 <= ann["score"] <= 1
    assert max(len(v) for v in per_image.values()) <= 3
    # masks written per instance, in the order of the annotations, equal to the RLE
    coco_module = pytest.importorskip("pycocotools.coco", reason="pycocotools not installed")
    coco = coco_module.COCO(str(out / "instances.json"))
    for image in data["images"]:
        stem = Path(image["file_name"]).with_suffix("")
        anns = coco.loadAnns(coco.getAnnIds(imgIds=[image["id"]]))
        for number, ann in enumerate(anns, 1):
            png = np.asarray(Image.open(out / f"{stem}.mask{number}.png")) > 127
            np.testing.assert_array_equal(coco.annToMask(ann).astype(bool), png)
            x, y, w, h = ann["bbox"]
            ys, xs = np.nonzero(png)
            assert (x, y, w, h) == (xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1)
            assert ann["area"] == png.sum()
        assert (out / f"{stem}.instances.jpg").is_file()
    assert not (out / "errors.json").exists()


def test_crf_and_auto_run(photos, tmp_path, random_weights, capsys):
    pytest.importorskip("pydensecrf", reason="the dense CRF needs pydensecrf")
    out = tmp_path / "out"
    argv = ["discover", photos / "img0.png", "-o", out, "--weights", random_weights, "--max-objects", "auto", "-q"]
    code, _, err = run(capsys, *argv)
    assert code == 0, err
    data = json.loads((out / "instances.json").read_text())
    assert len(data["images"]) == 1 and len(data["annotations"]) <= 10


def test_interrupted_run_resumes_to_the_same_file(photos, tmp_path, random_weights, capsys, monkeypatch):
    import deepspectral.tasks.discover as task

    reference = tmp_path / "reference"
    assert run(capsys, *base(photos, reference, random_weights))[0] == 0

    out = tmp_path / "resumed"
    real = task.discover
    calls = []

    def dies_on_the_third(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(task, "discover", dies_on_the_third)
    code, _, _ = run(capsys, *base(photos, out, random_weights))
    assert code == 130
    records = sorted((out / ".discover").rglob("*.json"))
    assert len(records) == 2
    before = {path: path.stat().st_mtime_ns for path in records}
    (out / "instances.json").unlink()  # as after a SIGKILL: nothing assembled
    monkeypatch.setattr(task, "discover", real)
    calls.clear()
    assert run(capsys, *base(photos, out, random_weights))[0] == 0
    assert {path: path.stat().st_mtime_ns for path in records} == before  # not recomputed
    assert (out / "instances.json").read_bytes() == (reference / "instances.json").read_bytes()
    # other settings: every image again
    assert run(capsys, *base(photos, out, random_weights, "--max-objects", "1"))[0] == 0
    assert all(path.stat().st_mtime_ns > before[path] for path in records)
    data = json.loads((out / "instances.json").read_text())
    assert len(data["images"]) == 5 and len(data["annotations"]) <= 5


def test_a_broken_image_fails_alone(photos, tmp_path, random_weights, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("img0.png", "img1.png"):
        (folder / name).write_bytes((photos / name).read_bytes())
    (folder / "broken.png").write_bytes(b"not a picture")
    out = tmp_path / "out"
    code, _, _ = run(capsys, *base(folder, out, random_weights))
    assert code == 1
    (error,) = json.loads((out / "errors.json").read_text())
    assert error["image"] == "broken"
    data = json.loads((out / "instances.json").read_text())
    assert [image["file_name"] for image in data["images"]] == ["img0.png", "img1.png"]


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--method", "dsm"], "--method dsm: does not apply"),
        (["--max-objects", "0"], "--max-objects"),
        (["--max-objects", "many"], "--max-objects"),
        (["--min-score", "1.5"], "--min-score"),
        (["--tau", "1"], "--tau"),
        (["--eps", "2"], "--eps"),
        (["--resize", "0"], "--resize"),
        (["--refine", "bilateral"], "--refine"),
        (["--ray-actors", "2"], "--ray-actors"),
    ],
)
def test_bad_options_are_refused_before_work(photos, tmp_path, random_weights, capsys, extra, message):
    out = tmp_path / "out"
    code, _, err = run(capsys, "discover", photos, "-o", out, "--weights", random_weights, *extra)
    assert code == 2
    assert message in err and "Traceback" not in err
    assert not (out / "instances.json").exists()
