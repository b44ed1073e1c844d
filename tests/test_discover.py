"""``deepspectral.discover`` (tasks/discover.py): several instances per image from oracle
features, MaskCut's CRF step and its way back to the original size."""

from __future__ import annotations

import numpy as np
import pytest

from deepspectral import PatchFeatures, discover
from deepspectral.tasks import discover as task

COLOURS = [(40, 60, 50), (220, 40, 40), (40, 200, 60), (50, 70, 230), (230, 220, 40)]


def labelled(height, width, rects):
    labels = np.zeros((height, width), dtype=int)
    for index, (y0, y1, x0, x1) in enumerate(rects, 1):
        labels[y0:y1, x0:x1] = index
    return labels


def oracle(labels_grid, *, patch=16, image_size=None, noise=0.05, seed=0, dim=16):
    """Features with one orthonormal direction per label of the ``(h, w)`` grid."""
    rng = np.random.default_rng(seed)
    h, w = labels_grid.shape
    directions = np.linalg.qr(rng.standard_normal((dim, labels_grid.max() + 1)))[0].T
    features = directions[labels_grid] + rng.standard_normal((h, w, dim)) * noise / np.sqrt(dim)
    input_size = (h * patch, w * patch)
    return PatchFeatures(features.astype(np.float32), patch, image_size or input_size, input_size, backbone="oracle")


def picture(labels):
    rng = np.random.default_rng(1)
    image = np.asarray(COLOURS, dtype=float)[labels] + rng.normal(0, 4, (*labels.shape, 3))
    return np.clip(image, 0, 255).astype(np.uint8)


RECTS = [(1, 5, 1, 6), (6, 11, 8, 15), (7, 11, 1, 4)]  # on a 12 x 16 grid of 16-px patches


def test_three_objects_found_exactly_without_refinement():
    grid = labelled(12, 16, RECTS)
    labels = np.kron(grid, np.ones((16, 16), dtype=int))
    found = discover(oracle(grid), picture(labels), refine="none")
    assert len(found) == 3
    seen = set()
    for instance in found:
        (label,) = set(np.unique(labels[instance.mask]))
        seen.add(label)
        np.testing.assert_array_equal(instance.mask, labels == label)
        ys, xs = np.nonzero(instance.mask)
        assert instance.box == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
        assert instance.area == instance.mask.sum()
        assert 0.9 < instance.score <= 1.0
    assert seen == {1, 2, 3}
    assert [instance.cut for instance in found] == [0, 1, 2]


def test_crf_keeps_objects_whose_colours_agree():
    pytest.importorskip("pydensecrf", reason='the dense CRF needs pydensecrf (pip install "deepspectral[crf]")')
    grid = labelled(12, 16, RECTS)
    labels = np.kron(grid, np.ones((16, 16), dtype=int))
    found = discover(oracle(grid), picture(labels), refine="crf")
    assert len(found) == 3
    for instance in found:
        label = np.bincount(labels[instance.mask]).argmax()
        target = labels == label
        assert (instance.mask & target).sum() / (instance.mask | target).sum() > 0.95


def test_masks_come_back_to_the_original_size_from_a_square_input():
    # a 150 x 250 photo seen as a 192 x 192 square (MaskCut's resize ignores the aspect ratio)
    grid = labelled(12, 12, [(2, 8, 3, 9)])
    features = oracle(grid, image_size=(150, 250))
    image = np.full((150, 250, 3), 90, np.uint8)
    (instance,) = discover(features, image, max_objects=2, refine="none")
    assert instance.mask.shape == (150, 250)
    expected = np.zeros((150, 250), bool)
    expected[int(150 * 2 / 12) : int(150 * 8 / 12), int(250 * 3 / 12) : int(250 * 9 / 12)] = True
    assert (instance.mask & expected).sum() / (instance.mask | expected).sum() > 0.95


def test_auto_stops_when_only_background_is_left():
    one = labelled(12, 16, RECTS[:1])
    three = labelled(12, 16, RECTS)
    img_one = picture(np.kron(one, np.ones((16, 16), dtype=int)))
    img_three = picture(np.kron(three, np.ones((16, 16), dtype=int)))
    assert len(discover(oracle(one), img_one, max_objects="auto", refine="none")) == 1
    assert len(discover(oracle(three), img_three, max_objects="auto", refine="none")) == 3
    # a fixed number keeps cutting (and the background's cut scores low)
    found = discover(oracle(one), img_one, max_objects=3, refine="none")
    assert found[0].score > 0.9
    assert all(instance.score < 0.7 for instance in found[1:])


def test_mask_to_original_is_maskcuts_bicubic_and_half_maximum():
    mask = np.zeros((8, 8), bool)
    mask[2:6, 3:7] = True
    np.testing.assert_array_equal(task.mask_to_original(mask, (8, 8)), mask)
    up = task.mask_to_original(mask, (32, 32))
    # bicubic, cut at half the maximum: the block's own pixels but its four corners
    assert up[8:24, 12:28].sum() == 16 * 16 - 4 and up.sum() == 16 * 16 - 4
    assert not up[8, 12] and not up[23, 27]
    # a mask of the whole image stays whole (max == min: every pixel is "upper")
    assert task.mask_to_original(np.ones((4, 4), bool), (9, 7)).all()


def test_crf_step_drops_a_refined_mask_far_from_the_coarse_one(monkeypatch):
    import deepspectral.crf

    image = np.zeros((20, 20, 3), np.uint8)
    mask = np.zeros((20, 20), bool)
    mask[4:16, 4:16] = True

    def crf_keeping(keep):
        def fake(image, probabilities, **params):
            assert params == task.defaults.MASKCUT_CRF_PARAMS
            fg = probabilities[1]
            assert np.allclose(fg[mask], np.e / (1 + np.e)) and np.allclose(fg[~mask], 1 / (1 + np.e))
            out = np.zeros_like(probabilities)
            out[1] = keep
            out[0] = 1 - keep
            return out

        return fake

    ring = mask.copy()
    ring[7:13, 7:13] = False  # a hole: filled
    monkeypatch.setattr(deepspectral.crf, "dense_crf", crf_keeping(ring.astype(float)))
    np.testing.assert_array_equal(task.refine_with_crf(image, mask), mask)
    small = np.zeros((20, 20))
    small[4:8, 4:8] = 1  # IoU 16 / 144 < 0.5: dropped
    monkeypatch.setattr(deepspectral.crf, "dense_crf", crf_keeping(small))
    assert not task.refine_with_crf(image, mask).any()


def test_square_input_feeds_the_backbone_a_square_and_keeps_the_original_size():
    seen = []

    class Fake:
        name, patch_size, weights = "fake", 16, None

        def extract(self, image, *, max_size=None, fit="crop"):
            seen.append((image.shape, max_size, fit))
            h, w = image.shape[0] // 16, image.shape[1] // 16
            return PatchFeatures(np.zeros((h, w, 4), np.float32), 16, image.shape[:2], image.shape[:2])

        def extract_batch(self, images, **kwargs):
            return [self.extract(image, **kwargs) for image in images]

    square = task.SquareInput(Fake(), 480)
    features = square.extract(np.zeros((300, 500, 3), np.uint8), max_size=800, fit="crop")
    assert seen == [((480, 480, 3), None, "resize")]
    assert features.image_size == (300, 500) and features.input_size == (480, 480) and features.grid_size == (30, 30)
    assert square.name == "fake@square480" and square.patch_size == 16
    (batch,) = square.extract_batch([np.zeros((100, 60, 3), np.uint8)])
    assert batch.image_size == (100, 60)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"max_objects": 0}, "max_objects"),
        ({"max_objects": "many"}, "max_objects"),
        ({"min_score": 1.5}, "min_score"),
        ({"refine": "bilateral"}, "refine"),
        ({"tau": 2.0}, "tau"),
    ],
)
def test_bad_arguments_name_themselves(kwargs, name):
    grid = labelled(4, 4, [(1, 3, 1, 3)])
    with pytest.raises(ValueError, match=name):
        discover(oracle(grid), np.zeros((64, 64, 3), np.uint8), **kwargs)


def test_image_must_be_the_features_image():
    grid = labelled(4, 4, [(1, 3, 1, 3)])
    with pytest.raises(ValueError, match="image"):
        discover(oracle(grid), np.zeros((50, 64, 3), np.uint8))
    with pytest.raises(ValueError, match="features"):
        discover(np.zeros((4, 4, 3)), np.zeros((64, 64, 3), np.uint8))
