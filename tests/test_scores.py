"""The confidence of every box and mask (deepspectral.recipes.scores): low on uniform and
pure-noise images, high on oracle-feature objects, for both recipes; ``--min-score`` turns a
low one into "no object", and CorLoc still counts that image (as a miss)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from deepspectral.cli import main
from deepspectral.features import PatchFeatures
from deepspectral.recipes import decompose, tokencut
from deepspectral.recipes.scores import check_min_score, eigengap_score, spectral_score
from deepspectral.tasks.localize import Detection, detect
from deepspectral.tasks.segment import segment_object

from oracle import oracle_features  # noqa: E402

H, W = 193, 289
LOW, HIGH = 0.2, 0.7


def _ellipse(cy, cx, ry, rx):
    yy, xx = np.mgrid[:H, :W]
    return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1


def _noise_features(seed=0, dim=64):
    rng = np.random.default_rng(seed)
    return PatchFeatures(rng.standard_normal((H // 16, W // 16, dim)).astype(np.float32), 16, (H, W), (H, W))


def _noise_image(seed=1):
    return np.random.default_rng(seed).integers(0, 256, (H, W, 3), dtype=np.uint8)


def _decompose(method, feats, image):
    return decompose(feats, image, method=method)


def test_eigengap_score_from_eigenvalues():
    assert eigengap_score([0.0, 0.1, 0.5]) == pytest.approx(0.8)
    assert eigengap_score([0.0, 0.8, 0.8, 0.9]) == pytest.approx(0.0)
    assert eigengap_score([0.0, 0.0, 0.0]) == 0.0  # three free parts: no single split
    assert eigengap_score([0.0, 0.3]) == pytest.approx(0.7)  # only λ₁: 1 − λ₁
    assert eigengap_score([0.0]) == 0.0
    assert eigengap_score([0.0, 1.2, 1.1]) == 0.0  # clipped
    with pytest.raises(ValueError, match="min_score"):
        check_min_score(1.5)
    with pytest.raises(ValueError, match="min_score"):
        check_min_score(True)


@pytest.mark.parametrize("method", ["dsm", "tokencut"])
def test_uniform_and_noise_score_low_objects_high(method):
    uniform = _decompose(method, oracle_features(np.zeros((H, W), bool)), np.zeros((H, W, 3), np.uint8))
    noise = _decompose(method, _noise_features(), _noise_image())
    assert spectral_score(uniform) < LOW
    assert spectral_score(noise) < LOW
    for mask in [_ellipse(96, 144, 50, 70), _ellipse(40, 50, 22, 22)]:
        image = np.where(mask[..., None], 200, 40).astype(np.uint8).repeat(3, axis=2)
        for noise_level in (0.3, 1.0):
            dec = _decompose(method, oracle_features(mask, noise=noise_level), image)
            assert spectral_score(dec) > HIGH, (noise_level, dec.eigenvalues)


@pytest.fixture(scope="module")
def backbone(random_weights):
    from deepspectral.backbones import Backbone

    return Backbone("dino_vits16", weights=random_weights, device="cpu")


@pytest.mark.parametrize("method", ["dsm", "tokencut"])
def test_random_weight_backbone_on_flat_and_noise_images(backbone, method):
    """The issue's case: a uniform black image got a box covering half of it."""
    bb = backbone
    fit = "pad" if method == "tokencut" else "crop"
    small = (96, 144, 3)
    for image in [np.zeros(small, np.uint8), np.full(small, 128, np.uint8), _noise_image()[:96, :144]]:
        dec = _decompose(method, bb.extract(image, fit=fit), image)
        assert spectral_score(dec) < LOW
        found = detect(dec, min_score=0.5)
        assert found.box is None and found.score == spectral_score(dec)
        assert not segment_object(dec, image, refine="none", min_score=0.5).any()


def test_detect_keeps_the_box_above_the_threshold():
    mask = _ellipse(96, 144, 50, 70)
    dec = tokencut.decompose(oracle_features(mask))
    found = detect(dec, min_score=0.5)
    assert isinstance(found, Detection) and found.box == tokencut.box(dec) and found.score > 0.9
    assert detect(dec).box is not None and detect(dec, min_score=1.0).box is None
    assert segment_object(dec, np.zeros((H, W, 3), np.uint8), refine="none", min_score=0.5).any()
    with pytest.raises(ValueError, match="min_score"):
        detect(dec, min_score=-0.1)


def test_min_score_in_boxes_json_and_corloc_keeps_the_image(tmp_path, random_weights):
    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir()
    masks.mkdir()
    Image.fromarray(np.zeros((64, 96, 3), np.uint8)).save(images / "black.png")
    gt = np.zeros((64, 96), np.uint8)
    gt[10:50, 20:70] = 255
    Image.fromarray(gt).save(masks / "black.png")
    out = tmp_path / "loc"
    argv = ["localize", str(images), "-o", str(out), "--weights", str(random_weights), "--device", "cpu", "-q"]
    assert main([*argv, "--min-score", "0.5"]) == 0
    (record,) = json.loads((out / "boxes.json").read_text())
    assert record["box_xyxy"] is None and record["score"] < 0.5
    assert main([*argv, "--min-score", "0"]) == 0  # the default: a box as before, with its score
    (record,) = json.loads((out / "boxes.json").read_text())
    assert len(record["box_xyxy"]) == 4
    # a null box is a miss, not a dropped image
    boxes = [{"image": "black", "box_xyxy": None, "score": 0.01}]
    (tmp_path / "pred.json").write_text(json.dumps(boxes))
    result = tmp_path / "eval"
    assert main(["eval", "localization", "--pred", str(tmp_path / "pred.json"), "--dataset", "masks", "--images",
                 str(images), "--masks", str(masks), "-o", str(result), "-q"]) == 0  # fmt: skip
    results = json.loads((result / "results.json").read_text())
    assert results["corloc"] == 0.0 and len(results["per_image"]) == 1 and results["n_failed"] == 0
