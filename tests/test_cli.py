"""End-to-end runs of the ``deepspectral`` command line, in process, on small generated images
with a random-initialised ViT-S/16 loaded through ``--weights`` (no network needed)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from deepspectral import defaults
from deepspectral.cli import build_parser, main
from deepspectral.spectral import Decomposition
from deepspectral.store import load_decomposition


@pytest.fixture(scope="module")
def weights_file(random_weights) -> Path:
    return random_weights


def _object_image(height: int, width: int, seed: int) -> np.ndarray:
    """A textured background with a brighter rectangle (the 'object')."""
    rng = np.random.default_rng(seed)
    image = rng.integers(20, 90, size=(height, width, 3), dtype=np.uint8)
    y1, x1 = height // 4, width // 3
    image[y1 : y1 + height // 2, x1 : x1 + width // 3] = rng.integers(180, 255, size=3, dtype=np.uint8)
    return image


def _save(path: Path, array: np.ndarray, **options) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, **options)
    return path


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """photos/{one.jpg, two.png, sub/three.webp}, of different sizes (not multiples of 16)."""
    root = tmp_path_factory.mktemp("photos")
    _save(root / "one.jpg", _object_image(70, 90, 1), quality=95)
    _save(root / "two.png", _object_image(64, 64, 2))
    _save(root / "sub" / "three.webp", _object_image(50, 83, 3), lossless=True)
    return root


SIZES = {"one": (70, 90), "two": (64, 64), "sub/three": (50, 83)}


def _run(command, inputs, out, weights, *extra):
    argv = [command, *[str(p) for p in inputs], "-o", str(out), "--weights", str(weights), "--device", "cpu", *extra]
    return main(argv)


def _no_temp_files(folder: Path) -> None:
    leftovers = [p for p in folder.rglob("*") if p.name.endswith(".tmp")]
    assert leftovers == []


def test_eigs(photos, weights_file, tmp_path, capsys):
    out = tmp_path / "out"
    assert _run("eigs", [photos], out, weights_file) == 0
    for name, (height, width) in SIZES.items():
        decomposition = load_decomposition(out / f"{name}.npz")
        assert decomposition.image_size == (height, width)
        assert decomposition.eigenvectors.shape[0] == defaults.N_EIGENVECTORS
        assert decomposition.settings["knn_lambda"] == defaults.KNN_LAMBDA
        assert decomposition.settings["backbone"] == defaults.BACKBONE
        with Image.open(out / f"{name}.eigs.png") as figure:
            assert figure.mode == "RGB"
            assert figure.height == height
            assert figure.width > width * defaults.N_EIGENVECTORS
    assert not (out / "errors.json").exists()
    _no_temp_files(out)
    summary = capsys.readouterr().out
    assert "3 images done, 0 failed" in summary and "s per image" in summary


def test_eigs_options(photos, weights_file, tmp_path):
    out = tmp_path / "out"
    code = _run(
        "eigs", [photos / "two.png"], out, weights_file,
        "--n-eigenvectors", "3", "--knn-lambda", "0", "--block", "-2", "--feature", "tokens", "--max-size", "32", "-q",
    )
    assert code == 0
    decomposition = load_decomposition(out / "two.npz")
    assert decomposition.eigenvectors.shape[0] == 3
    assert decomposition.settings["knn_lambda"] == 0.0
    assert decomposition.settings["feature"] == "tokens"
    assert decomposition.image_size == (64, 64) and decomposition.input_size == (32, 32)


def test_localize(photos, weights_file, tmp_path):
    out = tmp_path / "out"
    assert _run("localize", [photos], out, weights_file, "--save-viz") == 0
    records = json.loads((out / "boxes.json").read_text(encoding="utf-8"))
    assert [r["image"] for r in records] == ["one", "sub/three", "two"]  # sorted paths
    for record in records:
        height, width = SIZES[record["image"]]
        assert set(record) == {"image", "file", "box_xyxy", "score", "image_size"}
        assert record["image_size"] == [width, height] and 0.0 <= record["score"] <= 1.0
        x1, y1, x2, y2 = record["box_xyxy"]
        assert all(isinstance(v, int) for v in record["box_xyxy"])
        assert 0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height
        assert Path(record["file"]).is_file()
        with Image.open(out / f"{record['image']}.box.jpg") as picture:
            assert picture.size == (width, height)
    _no_temp_files(out)


def test_segment_without_crf(photos, weights_file, tmp_path):
    out = tmp_path / "out"
    assert _run("segment", [photos], out, weights_file, "--no-crf", "--save-viz") == 0
    for name, (height, width) in SIZES.items():
        with Image.open(out / f"{name}.png") as mask:
            assert mask.mode == "L"
            assert mask.size == (width, height)
            values = np.unique(np.asarray(mask))
        assert set(values.tolist()) <= {0, 255}
        assert (out / f"{name}.overlay.jpg").is_file()
    _no_temp_files(out)


@pytest.mark.skipif(importlib.util.find_spec("pydensecrf") is None, reason="pydensecrf not installed")
def test_segment_with_crf(photos, weights_file, tmp_path):
    out = tmp_path / "out"
    assert _run("segment", [photos / "one.jpg"], out, weights_file) == 0
    with Image.open(out / "one.png") as mask:
        assert mask.mode == "L" and mask.size == (90, 70)
        assert set(np.unique(np.asarray(mask)).tolist()) <= {0, 255}


def test_broken_file_does_not_stop_the_batch(photos, weights_file, tmp_path, capsys):
    inputs = tmp_path / "in"
    _save(inputs / "a_good.png", _object_image(48, 64, 4))
    (inputs / "b_broken.jpg").write_text("not an image at all\n")
    _save(inputs / "c_good.jpg", _object_image(64, 48, 5), quality=90)
    out = tmp_path / "out"
    assert _run("segment", [inputs], out, weights_file, "--no-crf") == 1
    errors = json.loads((out / "errors.json").read_text(encoding="utf-8"))
    assert len(errors) == 1
    assert errors[0]["path"] == str(inputs / "b_broken.jpg")
    assert "b_broken.jpg" in errors[0]["error"]
    for name, size in (("a_good", (64, 48)), ("c_good", (48, 64))):
        with Image.open(out / f"{name}.png") as mask:
            assert mask.size == size and mask.mode == "L"
    assert not (out / "b_broken.png").exists()
    captured = capsys.readouterr()
    assert "2 images done, 1 failed" in captured.out
    assert "b_broken.jpg" in captured.err

    # A later clean run over the same output folder removes the stale errors.json.
    (inputs / "b_broken.jpg").unlink()
    assert _run("segment", [inputs], out, weights_file, "--no-crf", "-q") == 0
    assert not (out / "errors.json").exists()


def test_same_names_in_different_folders(weights_file, tmp_path):
    inputs = tmp_path / "in"
    _save(inputs / "a" / "x.png", _object_image(48, 48, 6))
    _save(inputs / "b" / "x.png", _object_image(32, 64, 7))
    single = _save(tmp_path / "elsewhere" / "x.png", _object_image(40, 40, 8))
    out = tmp_path / "out"
    assert _run("segment", [inputs, single], out, weights_file, "--no-crf", "-q") == 0
    with Image.open(out / "a" / "x.png") as first, Image.open(out / "b" / "x.png") as second:
        assert first.size == (48, 48) and second.size == (64, 32)
    with Image.open(out / "x.png") as third:
        assert third.size == (40, 40)


def test_weights_unavailable_offline(tmp_path, monkeypatch, capsys):
    import huggingface_hub.constants as hub_constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    image = _save(tmp_path / "x.png", _object_image(32, 32, 9))
    code = main(["eigs", str(image), "-o", str(tmp_path / "out"), "--device", "cpu"])
    assert code == 2
    err = capsys.readouterr().err
    assert "--weights" in err
    assert "Traceback" not in err


def test_missing_weights_file(tmp_path, capsys):
    image = _save(tmp_path / "x.png", _object_image(32, 32, 9))
    assert main(["eigs", str(image), "-o", str(tmp_path / "out"), "--weights", str(tmp_path / "nope.pth")]) == 2
    assert "nope.pth" in capsys.readouterr().err


def test_missing_input(tmp_path, capsys):
    assert main(["eigs", str(tmp_path / "nothing-here"), "-o", str(tmp_path / "out")]) == 2
    assert "nothing-here" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["eigs"],
        ["eigs", "x.png"],  # no -o
        ["eigs", "x.png", "-o", "out", "--backbone", "dino_vits"],  # no substring matching
        ["eigs", "x.png", "-o", "out", "--knn-lambda", "-1"],
        ["eigs", "x.png", "-o", "out", "--n-eigenvectors", "0"],
        ["eigs", "x.png", "-o", "out", "--feature", "z"],
        ["eigs", "x.png", "-o", "out", "--device", "gpu"],
        ["eigs", "x.png", "-o", "out", "--max-size", "-5"],
        ["localize", "x.png", "-o", "out", "--no-crf"],
    ],
)
def test_bad_arguments(argv, capsys):
    assert main(argv) == 2
    assert "error" in capsys.readouterr().err


def test_help_shows_defaults(capsys):
    for command in ("eigs", "localize", "segment"):
        assert main([command, "--help"]) == 0
        text = " ".join(capsys.readouterr().out.split())  # undo line wrapping
        assert f"default: {defaults.BACKBONE}" in text
        assert f"default: {defaults.KNN_LAMBDA}" in text
        assert f"default: {defaults.N_EIGENVECTORS}" in text
        assert f"default: {defaults.MAX_SIZE}" in text
    args = build_parser().parse_args(["segment", "x", "-o", "y"])
    assert (args.backbone, args.knn_lambda, args.n_eigenvectors, args.max_size, args.block, args.feature, args.crf) == (
        defaults.BACKBONE, defaults.KNN_LAMBDA, defaults.N_EIGENVECTORS, defaults.MAX_SIZE,
        defaults.BLOCK, defaults.FEATURE, True,
    )


def _run_python(code: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONIOENCODING="utf-8")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)


def test_version_and_help_do_not_import_torch():
    from deepspectral import __version__

    result = _run_python(
        "import sys\n"
        "from deepspectral.cli import main\n"
        "assert main(['--version']) == 0\n"
        "assert main(['segment', '--help']) == 0\n"
        "heavy = sorted(m for m in ('torch', 'timm', 'scipy', 'tqdm') if m in sys.modules)\n"
        "print('HEAVY', heavy)\n"
    )
    assert result.returncode == 0, result.stderr
    assert f"deepspectral {__version__}" in result.stdout
    assert "HEAVY []" in result.stdout


def test_python_dash_m(tmp_path):
    from deepspectral import __version__

    result = subprocess.run(
        [sys.executable, "-m", "deepspectral", "--version"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert __version__ in result.stdout


# --------------------------------------------------------------------------- files, engine, viz


def test_atomic_write_keeps_the_old_file_on_failure(tmp_path):
    from deepspectral.files import atomic_write, atomic_write_bytes

    target = tmp_path / "sub" / "f.bin"
    atomic_write_bytes(target, b"old")

    def failing(handle):
        handle.write(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, failing)
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in target.parent.iterdir()) == ["f.bin"]


def test_save_png_atomic_masks(tmp_path):
    from deepspectral.files import save_png_atomic

    mask = np.zeros((5, 7), dtype=bool)
    mask[1:3, 2:5] = True
    save_png_atomic(tmp_path / "m.png", mask)
    with Image.open(tmp_path / "m.png") as saved:
        assert saved.mode == "L" and saved.size == (7, 5)
        np.testing.assert_array_equal(np.asarray(saved), mask.astype(np.uint8) * 255)


def test_run_batch_errors(tmp_path, capsys):
    from deepspectral.backbones import WeightsUnavailableError
    from deepspectral.data.images import InputImage
    from deepspectral.engine import run_batch
    from pathlib import PurePosixPath

    items = [InputImage(Path(f"/x/{i}.png"), PurePosixPath(str(i))) for i in range(4)]

    def process(item):
        if item.relative.name == "1":
            raise RuntimeError("CUDA out of memory")
        if item.relative.name == "2":
            raise OSError("broken")

    summary = run_batch(items, process, out_dir=tmp_path, desc="test", verbose=False)
    assert (summary.done, summary.failed) == (2, 2)
    errors = json.loads((tmp_path / "errors.json").read_text())
    assert [e["path"] for e in errors] == ["/x/1.png", "/x/2.png"]
    assert errors[0]["error"] == "RuntimeError: CUDA out of memory"

    def no_weights(item):
        raise WeightsUnavailableError("offline")

    with pytest.raises(WeightsUnavailableError):
        run_batch(items, no_weights, out_dir=tmp_path, desc="test", verbose=False)

    def bug(item):
        raise TypeError("a bug is not an image problem")

    with pytest.raises(TypeError):
        run_batch(items, bug, out_dir=tmp_path, desc="test", verbose=False)


def test_eigenvector_panel_of_a_padded_grid_keeps_cells_over_their_pixels():
    """TokenCut's boxes zero-pad the input (40 px -> a 48 px crop, 3 cells of 16 px): the
    panel cuts the padded strip off instead of squeezing 3 cells into 40 px."""
    from deepspectral.viz import colormap, eigenvector_figure

    column = np.array([-1.0, 0.0, 1.0], dtype=np.float32)
    vectors = np.stack([np.ones((3, 3), np.float32), np.tile(column, (3, 1))])
    decomposition = Decomposition(
        eigenvalues=np.arange(2, dtype=np.float64),
        eigenvectors=vectors,
        image_size=(40, 40),
        input_size=(40, 40),
        crop_size=(48, 48),
        patch_size=16,
    )
    assert decomposition.geometry.fit == "pad"
    panel = eigenvector_figure(np.zeros((40, 40, 3), np.uint8), decomposition)[:, -40:]
    expected = colormap(np.array([0.0, 0.5, 1.0]))
    for x, cell in [(0, 0), (15, 0), (16, 1), (31, 1), (32, 2), (39, 2)]:
        np.testing.assert_array_equal(panel[20, x], expected[cell], err_msg=f"pixel column {x}")


def test_viz_shapes():
    from deepspectral.viz import colormap, draw_box, eigenvector_figure, overlay_mask

    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, size=(50, 70, 3), dtype=np.uint8)
    decomposition = Decomposition(
        eigenvalues=np.arange(4, dtype=np.float64),
        eigenvectors=rng.standard_normal((4, 6, 8)).astype(np.float32),
        image_size=(50, 70),
        input_size=(50, 70),
        crop_size=(48, 64),
        patch_size=16,
    )
    figure = eigenvector_figure(image, decomposition)
    assert figure.dtype == np.uint8 and figure.shape[0] == 50 and figure.shape[1] > 4 * 70
    np.testing.assert_array_equal(figure[:, :70], image)
    small = eigenvector_figure(image, decomposition, n_eigenvectors=1, max_height=25)
    assert small.shape[0] == 25 and small.shape[1] < 2 * 36 + 5
    colours = colormap(np.array([0.0, 0.5, 1.0]))
    np.testing.assert_array_equal(colours[[0, 2]], [[0x44, 0x01, 0x54], [0xFD, 0xE7, 0x25]])
    boxed = draw_box(image, (10, 5, 40, 30), (255, 0, 0), width=2)
    np.testing.assert_array_equal(boxed[5, 20], [255, 0, 0])
    np.testing.assert_array_equal(boxed[29, 20], [255, 0, 0])
    np.testing.assert_array_equal(boxed[20, 39], [255, 0, 0])
    np.testing.assert_array_equal(boxed[15, 20], image[15, 20])
    mask = np.zeros((50, 70), dtype=bool)
    mask[10:20, 10:30] = True
    overlaid = overlay_mask(image, mask)
    np.testing.assert_array_equal(overlaid[~mask], image[~mask])
    assert not np.array_equal(overlaid[mask], image[mask])
    assert overlay_mask(image, mask[::10, ::10]).shape == image.shape  # coarse masks stretched
