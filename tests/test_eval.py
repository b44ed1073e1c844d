"""``deepspectral eval``: the oracle test on real data, scoring of existing predictions,
and a random-weights run end to end."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from deepspectral.cli import main
from deepspectral.commands import eval as ev
from deepspectral.data import datasets as ds
from deepspectral.data.images import input_size_for
from deepspectral.spectral import decompose

sys.path.insert(0, str(Path(__file__).parent))
from oracle import oracle_features, resize_mask, shared_data_dir  # noqa: E402

DATA = shared_data_dir()
#: The oracle's imaginary backbone: patch 8 (as ViT-S/8), images up to 800 px as by default.
ORACLE_PATCH = 8
ORACLE_MAX_SIZE = 800


# ---------------------------------------------------------------------------------------
# Oracle: features made from the ground truth, through the real loaders and metrics
# ---------------------------------------------------------------------------------------


def _recoverable(mask: np.ndarray) -> bool:
    """Whether a perfect backbone could give this object to the method at all.

    Left out: objects covering more than 45 % of the patch grid (the sign convention makes
    the positive side of y1 the *minority*, so such an object is the negative side by
    design), and objects the patch grid cannot draw (IoU < 0.8 between the mask and its
    patch-quantised version: thin or tiny objects).
    """
    size = input_size_for(mask.shape, ORACLE_MAX_SIZE)
    resized = resize_mask(mask, size)
    gh, gw = size[0] // ORACLE_PATCH, size[1] // ORACLE_PATCH
    crop = resized[: gh * ORACLE_PATCH, : gw * ORACLE_PATCH]
    cells = crop.reshape(gh, ORACLE_PATCH, gw, ORACLE_PATCH).mean(axis=(1, 3)) > 0.5
    if not 0 < cells.mean() <= 0.45:
        return False
    drawn = np.kron(cells, np.ones((ORACLE_PATCH, ORACLE_PATCH), bool))
    union = np.count_nonzero(drawn | crop)
    return union > 0 and np.count_nonzero(drawn & crop) / union >= 0.8


class _Oracle:
    """``decompose_fn`` from the ground truth (cached per image: localization and
    segmentation share it)."""

    def __init__(self) -> None:
        self.cache: dict = {}

    def __call__(self, image, sample):
        if sample.image_id not in self.cache:
            features = oracle_features(sample.load_mask(), patch_size=ORACLE_PATCH, max_size=ORACLE_MAX_SIZE)
            self.cache[sample.image_id] = decompose(features, image, knn_lambda=0.0)
        return self.cache[sample.image_id]


def _shared(name: str):
    if name == "sod":
        root = DATA / "sod"
        if not (root / "images").is_dir():
            pytest.skip(f"shared data not found: {root}")
        return ds.load_mask_folder(root / "images", root / "GT", name="sod")
    if name == "davis":
        root = DATA / "davis2016-val"
        if not (root / "JPEGImages").is_dir():
            pytest.skip(f"shared data not found: {root}")
        return ds.load_mask_folder(root / "JPEGImages", root / "Annotations", name="davis")
    root = DATA / "coco-mini"
    if not (root / "annotations").is_dir():
        pytest.skip(f"shared data not found: {root}")
    val = ds.load_dataset("coco-json", images=root / "val2017", annotations=root / "annotations" / "instances_val2017.json")
    train = ds.load_coco_boxes(root / "train2017", root / "annotations" / "instances_train2017.json")
    val.samples += train.samples
    val.name = "coco-mini"
    return val


def _oracle_run(name: str, limit: int):
    dataset = _shared(name).subset(limit=limit * 2, seed=0)
    dataset.samples = [s for s in dataset.samples if _recoverable(s.load_mask())][:limit]
    assert len(dataset) >= min(limit, 5)
    oracle = _Oracle()
    localization = ev.evaluate_localization(dataset, oracle, verbose=False, figure_rows=0)
    segmentation = ev.evaluate_segmentation(dataset, oracle, crf=False, verbose=False, figure_rows=0)
    assert not localization.errors and not segmentation.errors
    return dataset, localization, segmentation


@pytest.mark.parametrize("name", ["sod", "davis", "coco"])
def test_oracle_chain(name):
    dataset, localization, segmentation = _oracle_run(name, limit=5)
    assert localization.metrics["corloc"] >= 0.95, localization.per_image
    assert segmentation.metrics["miou"] >= 0.85, segmentation.per_image
    assert segmentation.metrics["accuracy"] >= 0.9
    assert segmentation.metrics["max_fbeta"] >= 0.85


@pytest.mark.slow
@pytest.mark.parametrize("name", ["sod", "davis", "coco"])
def test_oracle_chain_more_images(name):
    dataset, localization, segmentation = _oracle_run(name, limit=25)
    print(f"{name}: {len(dataset)} images, CorLoc {localization.metrics['corloc']:.3f}, "
          f"mIoU {segmentation.metrics['miou']:.3f}")  # fmt: skip
    assert localization.metrics["corloc"] >= 0.95
    assert segmentation.metrics["miou"] >= 0.85


def test_oracle_catches_a_coordinate_bug():
    """The same chain with the mask flipped left-right (a classic x/y or flip bug) fails."""
    dataset = _shared("sod").subset(limit=16, seed=0)
    dataset.samples = [s for s in dataset.samples if _recoverable(s.load_mask())][:6]

    def flipped(image, sample):
        features = oracle_features(sample.load_mask()[:, ::-1], patch_size=ORACLE_PATCH, max_size=ORACLE_MAX_SIZE)
        return decompose(features, image, knn_lambda=0.0)

    result = ev.evaluate_segmentation(dataset, flipped, crf=False, verbose=False, figure_rows=0)
    assert result.metrics["miou"] < 0.7


# ---------------------------------------------------------------------------------------
# Scoring existing predictions (exact, no model)
# ---------------------------------------------------------------------------------------


def _mask_dataset(root: Path, n: int = 4) -> tuple[Path, Path]:
    rng = np.random.default_rng(0)
    for i in range(n):
        image = rng.integers(0, 80, (64, 96, 3), dtype=np.uint8)
        mask = np.zeros((64, 96), np.uint8)
        y, x = 12 + 4 * i, 20 + 6 * i
        mask[y : y + 28, x : x + 36] = 255
        image[mask > 0] += 150
        (root / "images").mkdir(parents=True, exist_ok=True)
        (root / "masks").mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(root / "images" / f"im{i}.png")
        Image.fromarray(mask).save(root / "masks" / f"im{i}.png")
    return root / "images", root / "masks"


def test_score_boxes_matches_brute_force(tmp_path):
    images, masks = _mask_dataset(tmp_path)
    predictions = [
        {"image": "im0", "box_xyxy": [20, 12, 56, 40]},  # exact
        {"image": "im1.png", "box_xyxy": [26, 16, 62, 30]},  # half the height: IoU 0.5 -> counts
        {"image": "im2", "box_xyxy": [0, 0, 10, 10]},  # miss
    ]  # im3: no prediction -> wrong
    pred = tmp_path / "boxes.json"
    pred.write_text(json.dumps(predictions))
    out = tmp_path / "out"
    argv = ["eval", "localization", "--pred", str(pred), "--dataset", "masks", "--images", str(images),
            "--masks", str(masks), "-o", str(out), "-q"]  # fmt: skip
    assert main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["corloc"] == pytest.approx(2 / 4)
    ious = {r["image"]: r["iou"] for r in results["per_image"]}
    assert ious == pytest.approx({"im0": 1.0, "im1": 0.5, "im2": 0.0})
    assert results["n_failed"] == 1 and results["version"]


def test_score_masks_matches_brute_force(tmp_path):
    images, masks = _mask_dataset(tmp_path, n=2)
    pred = tmp_path / "pred"
    pred.mkdir()
    gt0 = np.asarray(Image.open(masks / "im0.png")) > 127
    half = gt0.copy()
    half[:, :38] = False  # keeps the right half of the object
    Image.fromarray(gt0.astype(np.uint8) * 255).save(pred / "im0.png")
    Image.fromarray(half.astype(np.uint8) * 255).save(pred / "im1.png")
    gt1 = np.asarray(Image.open(masks / "im1.png")) > 127
    out = tmp_path / "out"
    argv = ["eval", "segmentation", "--pred", str(pred), "--dataset", "masks", "--images", str(images),
            "--masks", str(masks), "-o", str(out), "-q"]  # fmt: skip
    assert main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    iou1 = (half & gt1).sum() / (half | gt1).sum()
    acc1 = (half == gt1).mean()
    assert results["miou"] == pytest.approx((1 + iou1) / 2)
    assert results["accuracy"] == pytest.approx((1 + acc1) / 2)
    p = np.mean([1.0, (half & gt1).sum() / half.sum()])
    r = np.mean([1.0, (half & gt1).sum() / gt1.sum()])
    assert results["max_fbeta"] == pytest.approx(1.3 * p * r / (0.3 * p + r), rel=1e-6)


def test_semseg_with_a_fake_run(tmp_path, monkeypatch):
    """``eval semseg`` through ``tasks.semantic.load_run`` (replaced here): a run whose
    clusters are a permutation of the classes scores mIoU 1 and reports the mapping."""
    voc = tmp_path / "VOCdevkit" / "VOC2012"
    rng = np.random.default_rng(0)
    for i in range(3):
        labels = np.zeros((20, 30), np.uint8)
        labels[2:10, 3 + i : 15] = 8 + i
        labels[12:18, 10:25] = 15
        labels[1, :] = 255
        (voc / "JPEGImages").mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (20, 30, 3), dtype=np.uint8)).save(voc / "JPEGImages" / f"{i}.jpg")
        image = Image.fromarray(labels, mode="P")
        image.putpalette([0, 0, 0] * 256)
        (voc / "SegmentationClass").mkdir(parents=True, exist_ok=True)
        image.save(voc / "SegmentationClass" / f"{i}.png")
    (voc / "ImageSets" / "Segmentation").mkdir(parents=True)
    (voc / "ImageSets" / "Segmentation" / "val.txt").write_text("0\n1\n2\n")
    permutation = {0: 0, 8: 3, 9: 1, 10: 2, 15: 4}

    class FakeRun:
        def predict(self, image):
            label_file = voc / "SegmentationClass" / f"{int(self.names.pop(0))}.png"
            labels = np.asarray(Image.open(label_file)).copy()
            labels[labels == 255] = 0
            return np.vectorize(permutation.get)(labels).astype(np.uint8)

    run = FakeRun()
    run.names = ["0", "1", "2"]
    fake = types.ModuleType("deepspectral.tasks.semantic")
    fake.load_run = lambda path, **options: run
    monkeypatch.setitem(sys.modules, "deepspectral.tasks.semantic", fake)
    out = tmp_path / "out"
    (tmp_path / "run").mkdir()
    argv = ["eval", "semseg", "--dataset", "voc12", "--root", str(tmp_path), "--run", str(tmp_path / "run"),
            "-o", str(out), "-q"]  # fmt: skip
    assert main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["miou"] == pytest.approx(1.0) and results["accuracy"] == pytest.approx(1.0)
    assert results["mapping"] == {str(v): k for k, v in permutation.items()}
    assert results["iou_per_class"]["cat"] == pytest.approx(1.0) and results["iou_per_class"]["dog"] is None


# ---------------------------------------------------------------------------------------
# Random weights, end to end
# ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def weights_file(random_weights) -> Path:
    return random_weights


def test_eval_end_to_end_random_weights(tmp_path, weights_file, capsys):
    images, masks = _mask_dataset(tmp_path / "data", n=3)
    common = ["--dataset", "masks", "--images", str(images), "--masks", str(masks), "--weights", str(weights_file),
              "--device", "cpu", "-q"]  # fmt: skip
    out = tmp_path / "loc"
    assert main(["eval", "localization", *common, "-o", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert 0.0 <= results["corloc"] <= 1.0 and len(results["per_image"]) == 3
    assert results["settings"]["backbone"] == "dino_vits16" and results["settings"]["knn_lambda"] == 10.0
    assert (out / "figure.png").is_file() and (out / "iou_histogram.png").is_file()
    assert any((out / ".cache").rglob("*.npz"))  # cached: a rerun reads it
    assert main(["eval", "localization", *common, "-o", str(out)]) == 0
    assert json.loads((out / "results.json").read_text())["per_image"] == results["per_image"]
    text = capsys.readouterr().out
    assert "corloc" in text and "paper" in text

    seg = tmp_path / "seg"
    assert main(["eval", "segmentation", *common, "--no-crf", "-o", str(seg), "--limit", "2"]) == 0
    results = json.loads((seg / "results.json").read_text())
    assert {"miou", "accuracy", "max_fbeta", "per_image", "settings", "version"} <= set(results)
    assert len(results["per_image"]) == 2 and results["settings"]["crf"] is False

    sweep = tmp_path / "sweep"
    assert main(["eval", "localization", *common, "--sweep", "knn_lambda=0,10", "-o", str(sweep), "--limit", "2"]) == 0
    rows = json.loads((sweep / "sweep.json").read_text())
    assert [r["settings"] for r in rows] == [{"knn_lambda": 0.0}, {"knn_lambda": 10.0}]
    assert (sweep / "knn_lambda-0" / "results.json").is_file()
    assert "Table 7 style" in capsys.readouterr().out


def test_eval_arguments_are_checked(tmp_path, capsys):
    assert main(["eval", "localization", "--dataset", "voc07", "--root", str(tmp_path)]) == 2
    assert "VOC2007" in capsys.readouterr().err
    assert main(["eval", "localization", "--dataset", "masks", "--images", str(tmp_path)]) == 2
    assert "--masks" in capsys.readouterr().err
    assert main(["eval", "localization", "--dataset", "voc07", "--root", ".", "--sweep", "colour=1"]) == 2
