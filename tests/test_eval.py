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

from deepspectral import evaluation as ev
from deepspectral.cli import main
from deepspectral.data import datasets as ds
from deepspectral.geometry import input_size_for
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
    assert main(argv) == 1  # an image without a prediction is a failed image
    results = json.loads((out / "results.json").read_text())
    assert results["corloc"] == pytest.approx(2 / 4)
    assert [r["image"] for r in json.loads((out / "errors.json").read_text())] == ["im3"]
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


def _fake_voc12(tmp_path: Path) -> Path:
    """Three VOC12 val label maps (classes 8, 9 or 10, and 15; a row of 255 = ignore) with
    random images, in ``tmp_path/VOCdevkit/VOC2012``."""
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
    return voc


def _replace_load_run(monkeypatch, load_run) -> None:
    """``tasks.semantic.load_run`` replaced in the real module (the parser imports that
    module for the ``semseg`` options, so a stand-in module would depend on test order)."""
    from deepspectral.tasks import semantic

    monkeypatch.setattr(semantic, "load_run", load_run)


def test_semseg_with_a_fake_run(tmp_path, monkeypatch):
    """``eval semseg`` through ``tasks.semantic.load_run`` (replaced here): a run whose
    clusters are a permutation of the classes scores mIoU 1 and reports the mapping."""
    voc = _fake_voc12(tmp_path)
    permutation = {0: 0, 8: 3, 9: 1, 10: 2, 15: 4}

    class FakeRun:
        def predict(self, image):
            label_file = voc / "SegmentationClass" / f"{int(self.names.pop(0))}.png"
            labels = np.asarray(Image.open(label_file)).copy()
            labels[labels == 255] = 0
            return np.vectorize(permutation.get)(labels).astype(np.uint8)

    run = FakeRun()
    run.names = ["0", "1", "2"]
    _replace_load_run(monkeypatch, lambda path, **options: run)
    out = tmp_path / "out"
    (tmp_path / "run").mkdir()
    argv = ["eval", "semseg", "--dataset", "voc12", "--root", str(tmp_path), "--run", str(tmp_path / "run"),
            "-o", str(out), "-q"]  # fmt: skip
    assert main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["miou"] == pytest.approx(1.0) and results["accuracy"] == pytest.approx(1.0)
    assert results["mapping"] == {str(v): k for k, v in permutation.items()}
    assert results["iou_per_class"]["cat"] == pytest.approx(1.0) and results["iou_per_class"]["dog"] is None


def _semseg_with_method(tmp_path, monkeypatch, capsys, *, method: str, use: str) -> tuple[dict, str]:
    """``eval semseg`` of a fake run made with ``semseg fit --method METHOD`` (predicting
    all background): its results.json and what it printed."""
    _fake_voc12(tmp_path)

    class FakeRun:
        settings = types.SimpleNamespace(method=method)

        def __init__(self, use: str) -> None:
            self.use = use

        def predict(self, image):
            return np.zeros(image.shape[:2], np.uint8)

    _replace_load_run(monkeypatch, lambda path, **options: FakeRun("model" if options["use"] == "model" else "clusters"))
    out = tmp_path / "out"
    (tmp_path / "run").mkdir()
    argv = ["eval", "semseg", "--dataset", "voc12", "--root", str(tmp_path), "--run", str(tmp_path / "run"),
            "--use", use, "-o", str(out), "-q"]  # fmt: skip
    capsys.readouterr()
    assert main(argv) == 0
    return json.loads((out / "results.json").read_text()), capsys.readouterr().out


@pytest.mark.parametrize(("method", "row", "value"), [("cluster-patch", "Cluster-Patch", 5.3), ("cluster-seg", "Cluster-Seg", 12.1)])
def test_semseg_baseline_is_compared_with_its_own_row(tmp_path, monkeypatch, capsys, method, row, value):
    """A run of a Table 4 baseline is printed beside that baseline's row, not the paper's
    own method ("Ours w/o self-training", 30.8)."""
    results, text = _semseg_with_method(tmp_path, monkeypatch, capsys, method=method, use="clusters")
    assert results["settings"]["method"] == method
    assert results["paper"]["table"] == "Table 4" and row in results["paper"]["note"]
    assert results["paper"]["value"] == pytest.approx(value / 100)
    miou_row = next(line.split() for line in text.splitlines() if line.startswith("miou"))
    assert miou_row[2] == f"{value:.1f}"


def test_semseg_without_a_paper_number(tmp_path, monkeypatch, capsys):
    """A self-trained baseline: the paper has no such number, none is printed or stored."""
    results, text = _semseg_with_method(tmp_path, monkeypatch, capsys, method="cluster-seg", use="model")
    assert results["paper"] is None
    miou_row = next(line.split() for line in text.splitlines() if line.startswith("miou"))
    assert miou_row[2] == "-" and "Table" not in text


def test_paper_number_of_semantic_methods():
    from deepspectral.paper import paper_number

    ours = paper_number("semantic", "voc12", backbone="", n_clusters=20)
    assert (ours.value, ours.table) == (pytest.approx(0.308), "Table 4")
    assert paper_number("semantic", "voc12", backbone="", self_training=True).value == pytest.approx(0.372)
    assert paper_number("semantic", "voc12", backbone="", method="cluster-patch").value == pytest.approx(0.053)
    assert paper_number("semantic", "voc12", backbone="", method="cluster-seg", n_clusters=20).value == pytest.approx(0.121)
    assert paper_number("semantic", "voc12", backbone="", method="cluster-seg", self_training=True) is None
    assert paper_number("semantic", "voc07", backbone="", method="cluster-patch") is None
    with pytest.raises(ValueError, match="method"):
        paper_number("semantic", "voc12", backbone="", method="kmeans")


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


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("--knn-lambda", "-1"),
        ("--n-eigenvectors", "0"),
        ("--max-size", "-5"),
        ("--device", "gpu"),
        ("--figure-rows", "-1"),
        ("--seed", "-1"),
        ("--sweep", "knn_lambda=-1"),
        ("--sweep", "knn_kernel=gauss"),
    ],
)
def test_eval_options_are_validated(tmp_path, weights_file, capsys, option, value):
    """Bad decomposition settings are refused by argparse (exit 2, the option named), not
    run on every image (where each image failed and CorLoc 0.0 was printed)."""
    images, masks = _mask_dataset(tmp_path / "data", n=2)
    argv = ["eval", "localization", "--dataset", "masks", "--images", str(images), "--masks", str(masks),
            "--weights", str(weights_file), "--device", "cpu", "--no-cache", "-q", "--limit", "2", option, value]  # fmt: skip
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert f"argument {option}" in captured.err and "corloc" not in captured.out


def test_eval_semseg_options_are_validated(tmp_path, capsys):
    for option, value in (("--device", "gpu"), ("--limit", "0"), ("--seed", "-1")):
        argv = ["eval", "semseg", "--dataset", "voc12", "--root", str(tmp_path), "--run", str(tmp_path), option, value]
        assert main(argv) == 2
        assert f"argument {option}" in capsys.readouterr().err


def test_data_commands_are_registered_by_the_cli():
    """``data`` is in the CLI's own list, not a side effect of registering ``eval``."""
    import argparse

    from deepspectral.cli import COMMAND_MODULES, build_parser
    from deepspectral.cli import eval as eval_command

    assert "deepspectral.cli.data" in COMMAND_MODULES
    commands = argparse.ArgumentParser().add_subparsers()
    eval_command.register(commands, argparse.HelpFormatter)
    assert set(commands.choices) == {"eval"}
    assert build_parser().parse_args(["data", "list"]).command == "data"


# ---------------------------------------------------------------------------------------
# Pictures
# ---------------------------------------------------------------------------------------


def _toy_decomposition(rng):
    from deepspectral.spectral import Decomposition

    return Decomposition(
        eigenvalues=np.arange(3, dtype=np.float64),
        eigenvectors=rng.standard_normal((3, 3, 4)).astype(np.float32),
        image_size=(50, 70),
        input_size=(50, 70),
        crop_size=(48, 64),
        patch_size=16,
    )


def test_figure_rows_draw_the_eigenvector_as_the_eigs_pictures_do():
    """The eval figure's eigenvector panel is the ``eigs`` picture's panel: the grid over
    the area it covers, the cropped strip grey (it used to be stretched over the image)."""
    from deepspectral.viz import eigenvector_figure, localization_row, segmentation_row

    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, size=(50, 70, 3), dtype=np.uint8)
    decomposition = _toy_decomposition(rng)
    expected = eigenvector_figure(image, decomposition, n_eigenvectors=1)[:, -70:]
    coarse = np.zeros((3, 4), bool)
    coarse[1, 1:3] = True
    mask = np.zeros((50, 70), bool)
    mask[10:30, 20:50] = True
    loc = localization_row(image, decomposition, [16, 16, 48, 32], np.array([[10.0, 10, 50, 40]]), True, coarse)
    seg = segmentation_row(image, decomposition, mask, mask)
    for row in (loc, seg):
        assert len(row) == 4 and all(panel.shape == image.shape and panel.dtype == np.uint8 for panel in row)
        np.testing.assert_array_equal(row[1], expected)
        np.testing.assert_array_equal(row[1][48:], 128)  # the rows the grid does not cover
    np.testing.assert_array_equal(loc[2][16, 30], [0, 200, 0])  # a correct box is green


def test_picture_grid_and_histogram():
    from deepspectral.viz import iou_histogram, picture_grid

    a = np.zeros((20, 40, 3), np.uint8)
    b = np.zeros((40, 40, 3), np.uint8)
    grid = picture_grid([[a, b], [a]], row_height=10)
    assert grid.dtype == np.uint8 and grid.shape == (10 + 4 + 10, 20 + 4 + 10, 3)
    np.testing.assert_array_equal(grid[14:, 20:], 255)  # the short row padded with white
    with pytest.raises(ValueError, match="rows"):
        picture_grid([])
    histogram = iou_histogram([0.0, 0.95, 0.97, None, float("nan")], bins=10, size=(100, 120))
    assert histogram.shape == (100, 120, 3) and histogram.dtype == np.uint8
    with pytest.raises(ValueError, match="bins"):
        iou_histogram([0.5], bins=0)
