"""``eval --method dsm,tokencut``: several recipes scored on the same images in one run,
one comparison table (#13 part 5)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from deepspectral.cli import main


@pytest.fixture(scope="module")
def mask_dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("methods")
    images, masks = root / "images", root / "masks"
    images.mkdir()
    masks.mkdir()
    rng = np.random.default_rng(3)
    for index in range(4):
        mask = np.zeros((96, 128), bool)
        y, x = rng.integers(8, 40), rng.integers(8, 60)
        mask[y : y + 40, x : x + 56] = True
        image = np.where(mask[..., None], rng.integers(120, 255, 3), rng.integers(0, 100, 3)).astype(np.uint8)
        image = np.clip(image + rng.normal(0, 6, image.shape), 0, 255).astype(np.uint8)
        Image.fromarray(image).save(images / f"im{index}.png")
        Image.fromarray(mask.astype(np.uint8) * 255).save(masks / f"im{index}.png")
    return images, masks


@pytest.mark.parametrize("task", ["localization", "segmentation"])
def test_several_methods_in_one_table(task, mask_dataset, random_weights, tmp_path, capsys):
    images, masks = mask_dataset
    base = ["eval", task, "--dataset", "masks", "--images", str(images), "--masks", str(masks),
            "--weights", str(random_weights), "--no-crf", "-q"]  # fmt: skip
    if task == "localization":
        base.remove("--no-crf")
    out = tmp_path / "both"
    assert main([*base, "--method", "dsm,tokencut", "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "Comparison" in printed and "ms per image" in printed
    rows = json.loads((out / "sweep.json").read_text())
    assert [row["settings"] for row in rows] == [{"method": "dsm"}, {"method": "tokencut"}]
    metric = "corloc" if task == "localization" else "miou"
    for row in rows:
        assert row["ms_per_image"] > 0 and 0 <= row[metric] <= 1
        # each row is what a run of that recipe alone gives
        alone = tmp_path / row["settings"]["method"]
        assert main([*base, "--method", row["settings"]["method"], "-o", str(alone)]) == 0
        assert json.loads((alone / "results.json").read_text())[metric] == pytest.approx(row[metric])
    assert (out / "method-dsm" / "results.json").is_file() and (out / "method-tokencut" / "results.json").is_file()


def test_unknown_method_is_refused(capsys):
    assert main(["eval", "localization", "--dataset", "masks", "--method", "dsm,lost"]) == 2
    assert "expected one or more of dsm, tokencut" in capsys.readouterr().err
