"""Faults of ``eval``, ``semseg`` and the weights files (issue #12, findings 2, 6, 7, 8, 10):
each a clear one-line message or an honest count, never a traceback or a silent download.

Offline: random-weight ViT-S/16 files (``random_weights`` of conftest.py), tiny synthetic
images, a run folder written by hand where the test is about reading one.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import shutil
from pathlib import Path, PurePosixPath

import numpy as np
import pytest
from PIL import Image

torch = pytest.importorskip("torch")
pytest.importorskip("timm")

from deepspectral.cli import main  # noqa: E402
from deepspectral.data.images import InputImage  # noqa: E402
from deepspectral.tasks.semantic import SemanticSettings, fit, load_run, save_label_png  # noqa: E402


# ---------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------


def _mask_dataset(root: Path, n: int) -> tuple[Path, Path, list[np.ndarray]]:
    """``n`` 64x96 images with one bright rectangle each, and its mask."""
    rng = np.random.default_rng(0)
    gts = []
    for i in range(n):
        image = rng.integers(0, 80, (64, 96, 3), dtype=np.uint8)
        mask = np.zeros((64, 96), np.uint8)
        y, x = 10 + 4 * i, 18 + 6 * i
        mask[y : y + 26, x : x + 34] = 255
        image[mask > 0] += 150
        (root / "images").mkdir(parents=True, exist_ok=True)
        (root / "masks").mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(root / "images" / f"im{i}.png")
        Image.fromarray(mask).save(root / "masks" / f"im{i}.png")
        gts.append(mask > 0)
    return root / "images", root / "masks", gts


def _one_line_error(err: str) -> str:
    """The stderr of a refused command: exactly one line, ``deepspectral: error: ...``."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("deepspectral: error: "), err
    assert "Traceback" not in err
    return lines[0]


def _bad_weight_files(folder: Path) -> dict[str, Path]:
    """Files that are not checkpoints: empty, text, a pickle of plain Python objects, and a
    pickle that would run a command if it were loaded unsafely."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {name: folder / f"{name}.pth" for name in ("empty", "text", "pickle", "malicious")}
    files["empty"].write_bytes(b"")
    files["text"].write_text("this is not a checkpoint\n")
    files["pickle"].write_bytes(pickle.dumps({"a": [1, 2, 3]}, protocol=2))

    class Malicious:
        def __reduce__(self):
            return (shutil.rmtree, (str(folder / "never"),))

    files["malicious"].write_bytes(pickle.dumps(Malicious(), protocol=2))
    return files


def _check_bad_weights_message(text: str, path: Path) -> None:
    assert str(path) in text
    assert "valid checkpoint" in text and "torch.save" in text
    # never torch's advice to load unsafely, nor its multi-line text
    assert "weights_only=False" not in text and "set to `False`" not in text and "\n" not in text.strip()
    assert "safe_globals" not in text and "allowlist" not in text  # nor to allow the object it refers to
    # the reason is a sentence: no empty exception text (". ") nor a bare key ("101.")
    assert ": ." not in text and ": ;" not in text and ": 101" not in text


# ---------------------------------------------------------------------------------------
# Finding 6: eval --pred with missing predictions
# ---------------------------------------------------------------------------------------


def test_missing_box_predictions_are_failed_images(tmp_path, capsys):
    images, masks, _ = _mask_dataset(tmp_path / "data", n=4)
    pred = tmp_path / "boxes.json"
    pred.write_text(json.dumps([{"image": "im0", "box_xyxy": [18, 10, 52, 36]}]))  # exact box of im0
    out = tmp_path / "out"
    argv = ["eval", "localization", "--pred", str(pred), "--dataset", "masks", "--images", str(images),
            "--masks", str(masks), "-o", str(out), "-q"]  # fmt: skip
    assert main(argv) == 1
    captured = capsys.readouterr()
    assert "over all 4 images" in captured.out and "count as misses" in captured.out
    assert "3 image(s) failed" in captured.err and "errors.json" in captured.err
    results = json.loads((out / "results.json").read_text())
    assert results["corloc"] == pytest.approx(1 / 4) and results["metrics_over"] == 4
    assert results["n_images"] == 1 and results["n_failed"] == 3
    assert sorted(r["image"] for r in json.loads((out / "errors.json").read_text())) == ["im1", "im2", "im3"]


def test_missing_mask_predictions_count_as_empty_masks(tmp_path, capsys):
    images, masks, gts = _mask_dataset(tmp_path / "data", n=3)
    pred = tmp_path / "pred"
    pred.mkdir()
    half = gts[0].copy()
    half[:, :35] = False
    Image.fromarray(half.astype(np.uint8) * 255).save(pred / "im0.png")
    argv = ["eval", "segmentation", "--pred", str(pred), "--dataset", "masks", "--images", str(images),
            "--masks", str(masks), "-q"]  # fmt: skip
    assert main(argv) == 1
    captured = capsys.readouterr()
    assert "over all 3 images" in captured.out and "empty masks" in captured.out
    assert "im1" in captured.err and "im2" in captured.err  # named without an output folder

    out = tmp_path / "out"
    assert main([*argv, "-o", str(out)]) == 1
    results = json.loads((out / "results.json").read_text())
    # brute force: im0 scored, im1 and im2 as empty masks (IoU 0, accuracy = background share)
    iou0 = (half & gts[0]).sum() / (half | gts[0]).sum()
    accuracies = [(half == gts[0]).mean(), 1 - gts[1].mean(), 1 - gts[2].mean()]
    assert results["miou"] == pytest.approx(iou0 / 3)
    assert results["accuracy"] == pytest.approx(np.mean(accuracies))
    assert results["metrics_over"] == 3 and results["n_failed"] == 2
    assert len(json.loads((out / "errors.json").read_text())) == 2
    # every prediction there: exit 0 and the stale errors.json is removed
    for i in (1, 2):
        Image.fromarray(gts[i].astype(np.uint8) * 255).save(pred / f"im{i}.png")
    assert main([*argv, "-o", str(out)]) == 0
    assert not (out / "errors.json").exists()
    assert json.loads((out / "results.json").read_text())["miou"] == pytest.approx((iou0 + 2) / 3)


def test_malformed_box_predictions_are_failed_images_not_tracebacks(tmp_path, capsys):
    images, masks, _ = _mask_dataset(tmp_path / "data", n=2)
    pred = tmp_path / "boxes.json"
    # (a null box is "no object", a miss that is scored: see test_scores.py)
    pred.write_text(json.dumps([{"image": "im0", "box_xyxy": [1, 2]}, {"image": "im1"}]))
    argv = ["eval", "localization", "--pred", str(pred), "--dataset", "masks", "--images", str(images),
            "--masks", str(masks), "-q"]  # fmt: skip
    assert main(argv) == 1
    assert "2 image(s) failed" in capsys.readouterr().err
    pred.write_text(json.dumps(["im0"]))
    assert main(argv) == 2
    assert "--pred" in _one_line_error(capsys.readouterr().err)


# ---------------------------------------------------------------------------------------
# Finding 7: the semseg Python API records the weights file (path + SHA-256)
# ---------------------------------------------------------------------------------------


def _photos(folder: Path, n: int = 3) -> list[InputImage]:
    rng = np.random.default_rng(1)
    folder.mkdir(parents=True, exist_ok=True)
    items = []
    for i in range(n):
        image = rng.integers(0, 60, (48, 64, 3), dtype=np.uint8)
        image[10:34, 8 + 6 * i : 36 + 6 * i] += 180
        path = folder / f"p{i}.png"
        Image.fromarray(image).save(path)
        items.append(InputImage(path=path, relative=PurePosixPath(f"p{i}")))
    return items


def _no_download(monkeypatch) -> None:
    """Fail the test if a backbone tries to fetch pretrained weights."""
    from deepspectral.backbones import weights

    def refuse(*args, **kwargs):
        raise AssertionError("the pretrained weights were asked for: the run's weights file was not used")

    monkeypatch.setattr(weights, "_create_pretrained", refuse)


@pytest.fixture(scope="module")
def fitted_with_backbone(tmp_path_factory, random_weights):
    """A run fitted through the Python API with ``Backbone(weights=FILE)`` and settings that
    name no weights (the README's snippet), the weights file in its own folder."""
    from deepspectral import Backbone

    root = tmp_path_factory.mktemp("api-run")
    weights = root / "weights" / "vit.pth"
    weights.parent.mkdir()
    shutil.copyfile(random_weights, weights)
    items = _photos(root / "photos")
    settings = SemanticSettings(clusters=2, segments=3, eigenvectors=2, crop_size=32, max_size=64, seed=0)
    fit(items, root / "run", source=Backbone("dino_vits16", weights=weights, device="cpu"), settings=settings,
        verbose=False, figure=False)  # fmt: skip
    return root, weights, items


def test_api_fit_records_the_weights_file_and_predict_uses_it(fitted_with_backbone, monkeypatch):
    root, weights, items = fitted_with_backbone
    info = json.loads((root / "run" / "semseg.json").read_text())
    assert info["settings"]["weights"] == str(weights.resolve())
    assert info["weights"] == {"path": str(weights.resolve()),
                               "sha256": hashlib.sha256(weights.read_bytes()).hexdigest()}  # fmt: skip
    _no_download(monkeypatch)
    run = load_run(root / "run", device="cpu")
    image = np.asarray(Image.open(items[0].path).convert("RGB"))
    labels = run.predict(image)  # the README's snippet, offline
    np.testing.assert_array_equal(labels, np.asarray(Image.open(root / "run" / "labels" / "p0.png")))


def test_moved_or_changed_weights_file_is_named(fitted_with_backbone, tmp_path, random_weights, monkeypatch, capsys):
    root, weights, items = fitted_with_backbone
    run_dir = tmp_path / "run"
    shutil.copytree(root / "run", run_dir)
    moved = tmp_path / "moved.pth"
    _no_download(monkeypatch)
    shutil.copyfile(weights, moved)
    info = json.loads((run_dir / "semseg.json").read_text())
    info["settings"]["weights"] = info["weights"]["path"] = str(tmp_path / "gone.pth")  # the file moved away
    (run_dir / "semseg.json").write_text(json.dumps(info))

    with pytest.raises(FileNotFoundError, match="no longer exists.*--weights"):
        load_run(run_dir, device="cpu").source
    assert load_run(run_dir, device="cpu", weights=moved).source is not None  # same bytes, new place

    other = tmp_path / "other.pth"
    from deepspectral.backbones import save_random_weights

    save_random_weights(other, "dino_vits16", seed=1)
    with pytest.raises(ValueError, match="not the file the run"):
        load_run(run_dir, device="cpu", weights=other).source

    out = tmp_path / "out"
    photos = str(items[0].path.parent)
    assert main(["semseg", "predict", str(run_dir), photos, "-o", str(out), "--device", "cpu", "-q"]) == 2
    line = _one_line_error(capsys.readouterr().err)
    assert "gone.pth" in line and "--weights" in line
    assert main(["semseg", "predict", str(run_dir), photos, "-o", str(out), "--device", "cpu", "-q",
                 "--weights", str(other)]) == 2  # fmt: skip
    assert "not the file the run" in _one_line_error(capsys.readouterr().err)
    assert main(["semseg", "predict", str(run_dir), photos, "-o", str(out), "--device", "cpu", "-q",
                 "--weights", str(moved)]) == 0  # fmt: skip


def test_fit_refuses_settings_naming_another_weights_file(tmp_path, random_weights):
    from deepspectral import Backbone

    items = _photos(tmp_path / "photos", n=1)
    settings = SemanticSettings(clusters=1, segments=2, eigenvectors=1, crop_size=32, max_size=32,
                                weights=str(tmp_path / "elsewhere.pth"))  # fmt: skip
    with pytest.raises(ValueError, match="weights"):
        fit(items, tmp_path / "run", source=Backbone("dino_vits16", weights=random_weights, device="cpu"),
            settings=settings, verbose=False, figure=False)  # fmt: skip


# ---------------------------------------------------------------------------------------
# Findings 8 and 10: weights files that are not checkpoints
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["empty", "text", "pickle", "malicious"])
def test_bad_weights_file_is_one_clear_line(tmp_path, capsys, kind):
    from deepspectral import Backbone

    bad = _bad_weight_files(tmp_path / "files")[kind]
    with pytest.raises(ValueError) as raised:
        Backbone("dino_vits16", weights=bad, device="cpu")
    _check_bad_weights_message(str(raised.value), bad)
    if kind == "malicious":
        assert "not a plain checkpoint" in str(raised.value) and "state_dict()" in str(raised.value)
        assert "shutil.rmtree" in str(raised.value)  # what it would have run, named

    images, _, _ = _mask_dataset(tmp_path / "data", n=1)
    assert main(["localize", str(images), "-o", str(tmp_path / "out"), "--weights", str(bad), "--device", "cpu",
                 "-q"]) == 2  # fmt: skip
    _check_bad_weights_message(_one_line_error(capsys.readouterr().err), bad)


def _tiny_run(root: Path) -> Path:
    """A run folder as ``semseg fit`` writes it (written by hand: two clusters)."""
    rng = np.random.default_rng(0)
    records = []
    root.mkdir(parents=True, exist_ok=True)
    for i in range(2):
        labels = np.zeros((32, 40), dtype=np.uint8)
        labels[6:24, 4:18] = 1
        labels[10:28, 22:38] = 2
        colours = np.array([[90, 90, 90], [220, 40, 40], [40, 200, 60]])
        image = np.clip(colours[labels] + rng.normal(0, 10, size=(32, 40, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(image).save(root / f"im{i}.png")
        save_label_png(root / "labels" / f"im{i}.png", labels)
        records.append({"image": f"im{i}", "file": str(root / f"im{i}.png"), "labels": f"labels/im{i}.png", "segments": 2})
    (root / "images.json").write_text(json.dumps(records))
    settings = {"clusters": 2, "backbone": "dino_vits16", "segments": 2, "eigenvectors": 1}
    (root / "semseg.json").write_text(json.dumps({"format": 1, "settings": settings, "n_labels": 3}))
    np.save(root / "centroids.npy", np.eye(2, 384, dtype=np.float32))
    return root


_TRAIN = ["--steps", "2", "--batch-size", "2", "--crop-size", "16", "--arch", "resnet10t", "--device", "cpu",
          "--workers", "1", "-q"]  # fmt: skip


@pytest.mark.parametrize("kind", ["empty", "text", "malicious"])
def test_semseg_train_bad_weights_file(tmp_path, capsys, kind):
    run = _tiny_run(tmp_path / "run")
    bad = _bad_weight_files(tmp_path / "files")[kind]
    assert main(["semseg", "train", str(run), "--weights", str(bad), *_TRAIN]) == 2
    _check_bad_weights_message(_one_line_error(capsys.readouterr().err), bad)
    assert not (run / "selftrain" / "model.pt").exists()


def test_damaged_training_files_are_named(tmp_path, capsys):
    run = _tiny_run(tmp_path / "run")
    (run / "selftrain").mkdir()
    (run / "selftrain" / "checkpoint.pt").write_bytes(b"")
    assert main(["semseg", "train", str(run), "--weights", "random", *_TRAIN]) == 2
    line = _one_line_error(capsys.readouterr().err)
    assert "checkpoint.pt" in line and "delete it" in line
    (run / "selftrain" / "checkpoint.pt").unlink()
    (run / "selftrain" / "model.pt").write_text("garbage")
    assert main(["semseg", "predict", str(run), str(run / "im0.png"), "-o", str(tmp_path / "out"), "--use", "model",
                 "--device", "cpu", "-q"]) == 2  # fmt: skip
    assert "model.pt" in _one_line_error(capsys.readouterr().err)


# ---------------------------------------------------------------------------------------
# Finding 10: centroids.npy, the eval images folder, train.json's amp
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("damage", ["missing", "empty", "garbage", "wrong shape"])
def test_missing_or_damaged_centroids(tmp_path, capsys, damage):
    run = _tiny_run(tmp_path / "run")
    centroids = run / "centroids.npy"
    if damage == "missing":
        centroids.unlink()
    elif damage == "empty":
        centroids.write_bytes(b"")
    elif damage == "garbage":
        centroids.write_bytes(b"\x93NUMPY garbage that is not an array header")
    else:
        np.save(centroids, np.ones((3, 384), np.float32))  # 3 rows, the run has K = 2
    error = FileNotFoundError if damage == "missing" else ValueError
    with pytest.raises(error, match="semseg fit") as raised:
        load_run(run)
    assert str(run) in str(raised.value) and "Errno" not in str(raised.value)

    assert main(["semseg", "predict", str(run), str(run / "im0.png"), "-o", str(tmp_path / "out"), "-q"]) == 2
    line = _one_line_error(capsys.readouterr().err)
    assert "centroids.npy" in line and "semseg fit" in line and "Errno" not in line


def test_eval_images_folder_without_images(tmp_path, capsys):
    _, masks, _ = _mask_dataset(tmp_path / "data", n=2)
    empty = tmp_path / "imagse"
    empty.mkdir()
    argv = ["eval", "localization", "--dataset", "masks", "--images", str(empty), "--masks", str(masks), "-q",
            "--pred", str(tmp_path / "boxes.json")]  # fmt: skip
    assert main(argv) == 2
    line = _one_line_error(capsys.readouterr().err)
    assert "no image files" in line and str(empty) in line and "no mask" not in line


def test_train_json_records_the_precision_that_ran(tmp_path):
    from deepspectral.tasks.selftrain import TrainSettings, train

    run = _tiny_run(tmp_path / "run")
    settings = TrainSettings(arch="resnet10t", steps=1, batch_size=2, lr=1e-3, crop_size=16, seed=0, weights="random",
                             output_stride=16, amp=True, checkpoint_every=1, workers=1)  # fmt: skip
    train(run, settings=settings, device="cpu", verbose=False)
    log = json.loads((run / "selftrain" / "train.json").read_text())
    assert log["device"] == "cpu" and log["settings"]["amp"] is False and log["amp_requested"] is True


# ---------------------------------------------------------------------------------------
# Finding 2 (eval part): -o naming a regular file
# ---------------------------------------------------------------------------------------


def test_eval_out_that_is_a_file_is_refused_before_work(tmp_path, capsys, random_weights):
    images, masks, _ = _mask_dataset(tmp_path / "data", n=1)
    afile = tmp_path / "afile"
    afile.write_text("x")
    argv = ["eval", "localization", "--dataset", "masks", "--images", str(images), "--masks", str(masks),
            "--weights", str(random_weights), "--device", "cpu", "-q", "-o", str(afile)]  # fmt: skip
    assert main(argv) == 2
    assert "-o/--out" in _one_line_error(capsys.readouterr().err)
    run = _tiny_run(tmp_path / "run")
    argv = ["eval", "semseg", "--dataset", "voc12", "--root", str(tmp_path), "--run", str(run), "-q", "-o", str(afile)]
    assert main(argv) == 2
    assert "-o/--out" in _one_line_error(capsys.readouterr().err)
    assert afile.read_text() == "x"


# ---------------------------------------------------------------------------------------
# Finding 6, eval semseg: a failed image counts as predicted all background
# ---------------------------------------------------------------------------------------


def _fake_voc12(root: Path) -> Path:
    """Three VOC12 val label maps (classes 8 + i and 15, a row of 255 = ignore)."""
    voc = root / "VOCdevkit" / "VOC2012"
    rng = np.random.default_rng(0)
    for folder in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (voc / folder).mkdir(parents=True, exist_ok=True)
    for i in range(3):
        labels = np.zeros((20, 30), np.uint8)
        labels[2:10, 3 + i : 15] = 8 + i
        labels[12:18, 10:25] = 15
        labels[1, :] = 255
        Image.fromarray(rng.integers(0, 255, (20, 30, 3), dtype=np.uint8)).save(voc / "JPEGImages" / f"{i}.jpg")
        image = Image.fromarray(labels, mode="P")
        image.putpalette([0, 0, 0] * 256)
        image.save(voc / "SegmentationClass" / f"{i}.png")
    (voc / "ImageSets" / "Segmentation" / "val.txt").write_text("0\n1\n2\n")
    return voc


def test_eval_semseg_failed_image_counts_as_background(tmp_path, monkeypatch, capsys):
    from deepspectral.tasks import semantic

    voc = _fake_voc12(tmp_path)
    truths = [np.asarray(Image.open(voc / "SegmentationClass" / f"{i}.png")) for i in range(3)]

    class FakeRun:
        names = ["0", "1", "2"]

        def predict(self, image):
            name = self.names.pop(0)
            if name == "2":
                raise ValueError("this image fails")
            labels = truths[int(name)].copy()
            labels[labels == 255] = 0
            return labels

    monkeypatch.setattr(semantic, "load_run", lambda path, **options: FakeRun())
    (tmp_path / "run").mkdir()
    out = tmp_path / "out"
    argv = ["eval", "semseg", "--dataset", "voc12", "--root", str(tmp_path), "--run", str(tmp_path / "run"),
            "-o", str(out), "-q"]  # fmt: skip
    assert main(argv) == 1
    assert "all background" in capsys.readouterr().out
    results = json.loads((out / "results.json").read_text())
    valid = [t[t != 255] for t in truths]
    correct = valid[0].size + valid[1].size + int((valid[2] == 0).sum())  # image 2: only its background
    assert results["accuracy"] == pytest.approx(correct / sum(v.size for v in valid))
    assert results["metrics_over"] == 3
    assert [r["image"] for r in json.loads((out / "errors.json").read_text())] == ["2"]
