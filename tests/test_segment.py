"""Single-object segmentation: dense CRF, the segmentation recipe, oracle-feature checks."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from deepspectral import defaults
from deepspectral.crf import CRF_PROBABILITY_CLIP, dense_crf, unary_from_probabilities
from deepspectral.spectral import decompose
from deepspectral.tasks.localize import localize
from deepspectral.tasks.segment import segment_object, segment_object_probability

from oracle import iou, oracle_features, shared_data_dir

try:
    import pydensecrf.densecrf  # noqa: F401

    HAVE_CRF = True
except ImportError:  # optional dependency
    HAVE_CRF = False

needs_crf = pytest.mark.skipif(not HAVE_CRF, reason='pydensecrf is not installed (pip install "deepspectral[crf]")')

#: SOD photos with one dominant object (foreground < half of the image, one component).
SOD_IDS = ("102061", "113044", "12003", "124084", "12084")


def two_colour_image(size, mask, *, seed=0, noise=6.0):
    """An image whose object (``mask``) and background have distinct colours, with noise."""
    rng = np.random.default_rng(seed)
    image = np.empty((*size, 3), dtype=np.float64)
    image[:] = (40.0, 90.0, 160.0)
    image[mask] = (220.0, 180.0, 40.0)
    image += rng.normal(0.0, noise, image.shape)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def rectangle_mask(size, box_xyxy):
    x1, y1, x2, y2 = box_xyxy
    mask = np.zeros(size, dtype=bool)
    mask[y1:y2, x1:x2] = True
    return mask


# ----------------------------------------------------------------------------- dense CRF


def test_unary_follows_reference_clipping():
    one_hot = np.stack([np.zeros((2, 3)), np.ones((2, 3))]).astype(np.float32)
    unary = unary_from_probabilities(one_hot)
    assert unary.shape == (2, 6) and unary.dtype == np.float32 and unary.flags.c_contiguous
    np.testing.assert_allclose(unary[0], -np.log(CRF_PROBABILITY_CLIP), rtol=1e-6)
    np.testing.assert_allclose(unary[1], -np.log(1 - CRF_PROBABILITY_CLIP), rtol=1e-4)


@needs_crf
def test_dense_crf_snaps_to_colour_edge():
    size = (96, 128)
    truth = np.zeros(size, dtype=bool)
    truth[:, 64:] = True
    image = two_colour_image(size, truth)
    rng = np.random.default_rng(1)
    coarse = np.zeros(size, dtype=bool)
    coarse[:, 72:] = True  # shifted by 8 px
    coarse ^= rng.random(size) < 0.05  # and noisy
    probabilities = np.stack([~coarse, coarse]).astype(np.float32)
    marginals = dense_crf(image, probabilities)
    assert marginals.shape == (2, *size) and marginals.dtype == np.float32
    np.testing.assert_allclose(marginals.sum(axis=0), 1.0, atol=1e-4)
    refined = marginals[1] > 0.5
    assert iou(refined, truth) > iou(coarse, truth) + 0.05
    assert iou(refined, truth) > 0.97


@needs_crf
def test_dense_crf_zero_iterations_is_normalised_unary():
    size = (8, 10)
    mask = np.zeros(size, dtype=bool)
    mask[2:6, 3:7] = True
    marginals = dense_crf(np.zeros((*size, 3), np.uint8), np.stack([~mask, mask]).astype(np.float32), iterations=0)
    np.testing.assert_allclose(marginals[1][mask], 0.99, atol=1e-4)
    np.testing.assert_allclose(marginals[1][~mask], 0.01, atol=1e-4)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"bilateral_weight": -1.0}, "bilateral_weight"),
        ({"bilateral_xy_std": 0.0}, "bilateral_xy_std"),
        ({"bilateral_rgb_std": float("nan")}, "bilateral_rgb_std"),
        ({"gaussian_weight": "3"}, "gaussian_weight"),
        ({"gaussian_xy_std": -2.0}, "gaussian_xy_std"),
        ({"iterations": 2.5}, "iterations"),
        ({"iterations": -1}, "iterations"),
    ],
)
def test_dense_crf_rejects_bad_parameters(kwargs, name):
    image = np.zeros((4, 5, 3), np.uint8)
    probabilities = np.full((2, 4, 5), 0.5, np.float32)
    with pytest.raises(ValueError, match=name):
        dense_crf(image, probabilities, **kwargs)


@pytest.mark.parametrize(
    ("image", "probabilities", "name"),
    [
        (np.zeros((4, 5), np.uint8), np.full((2, 4, 5), 0.5, np.float32), "image"),
        (np.zeros((4, 5, 3), np.float32), np.full((2, 4, 5), 0.5, np.float32), "image"),
        (np.zeros((4, 5, 3), np.uint8), np.full((1, 4, 5), 0.5, np.float32), "probabilities"),
        (np.zeros((4, 5, 3), np.uint8), np.full((2, 4, 6), 0.5, np.float32), "probabilities"),
        (np.zeros((4, 5, 3), np.uint8), np.full((2, 4, 5), 1.5, np.float32), "probabilities"),
        (np.zeros((4, 5, 3), np.uint8), np.full((2, 4, 5), np.nan, np.float32), "probabilities"),
    ],
)
def test_dense_crf_rejects_bad_inputs(image, probabilities, name):
    with pytest.raises(ValueError, match=name):
        dense_crf(image, probabilities)


def test_dense_crf_without_pydensecrf_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "pydensecrf.densecrf", None)  # makes the import fail
    with pytest.raises(ImportError, match=r"deepspectral\[crf\]"):
        dense_crf(np.zeros((4, 5, 3), np.uint8), np.full((2, 4, 5), 0.5, np.float32))


# ------------------------------------------------------------------------ helpers


def test_grid_mask_to_input_nearest_then_edge_replication():
    from deepspectral.geometry import ImageGeometry

    grid = np.array([[0, 1], [2, 3]])
    up = ImageGeometry((5, 7), (5, 7), 2).grid_to_input(grid)  # crop (4, 6)
    expected = np.array(
        [
            [0, 0, 0, 1, 1, 1, 1],
            [0, 0, 0, 1, 1, 1, 1],
            [2, 2, 2, 3, 3, 3, 3],
            [2, 2, 2, 3, 3, 3, 3],
            [2, 2, 2, 3, 3, 3, 3],
        ]
    )
    np.testing.assert_array_equal(up, expected)


def test_oracle_features_grid_follows_backbone_crop():
    mask = rectangle_mask((197, 250), (70, 50, 190, 140))
    features = oracle_features(mask, patch_size=16, dim=32)
    assert features.features.shape == (12, 15, 32)
    assert features.crop_size == (192, 240)
    assert features.image_size == (197, 250) and features.input_size == (197, 250)
    small = oracle_features(np.zeros((400, 600), bool), max_size=300, patch_size=14)
    assert small.input_size == (200, 300) and small.grid_size == (14, 21)


# ------------------------------------------------------------------ oracle checks


@pytest.fixture(scope="module")
def rectangle_case():
    size = (197, 250)  # not a multiple of 16: exercises the crop and the edge replication
    box = (70, 50, 190, 140)
    mask = rectangle_mask(size, box)
    image = two_colour_image(size, mask)
    decomposition = decompose(oracle_features(mask), image)
    return image, mask, box, decomposition


def test_oracle_rectangle_localize(rectangle_case):
    _, _, box, decomposition = rectangle_case
    found = localize(decomposition)
    assert np.max(np.abs(np.subtract(found, box))) <= 8, (found, box)


@pytest.mark.parametrize(
    ("crf", "min_iou"),
    [
        pytest.param(True, 0.9, marks=needs_crf),
        # without the CRF the mask keeps the 16-px patch quantization of the oracle
        # (0.85 for "patch mostly inside" on this box); the colour affinity helps a bit
        (False, 0.85),
    ],
)
def test_oracle_rectangle_segment(rectangle_case, crf, min_iou):
    image, mask, _, decomposition = rectangle_case
    segmentation = segment_object(decomposition, image, crf=crf)
    assert segmentation.shape == mask.shape and segmentation.dtype == bool
    assert iou(segmentation, mask) > min_iou


@pytest.mark.parametrize("crf", [pytest.param(True, marks=needs_crf), False])
def test_oracle_segment_after_max_size_resize(crf):
    size = (400, 600)
    box = (150, 90, 420, 300)
    mask = rectangle_mask(size, box)
    image = two_colour_image(size, mask)
    decomposition = decompose(oracle_features(mask, max_size=300), image)
    assert decomposition.input_size == (200, 300)
    probability = segment_object_probability(decomposition, image, crf=crf)
    assert probability.shape == size and probability.dtype == np.float32
    assert np.all(np.isfinite(probability)) and probability.min() >= 0 and probability.max() <= 1
    segmentation = segment_object(decomposition, image, crf=crf)
    assert segmentation.shape == size
    assert iou(segmentation, mask) > 0.9


@pytest.mark.parametrize("crf", [pytest.param(True, marks=needs_crf), False])
def test_segment_uniform_image_is_defined(crf):
    size = (70, 90)
    image = np.full((*size, 3), 128, dtype=np.uint8)
    decomposition = decompose(oracle_features(np.zeros(size, bool)), image)
    probability = segment_object_probability(decomposition, image, crf=crf)
    assert probability.shape == size and np.all(np.isfinite(probability))
    segmentation = segment_object(decomposition, image, crf=crf)
    assert segmentation.shape == size and segmentation.dtype == bool


def test_segment_object_validates_arguments(rectangle_case):
    image, _, _, decomposition = rectangle_case
    with pytest.raises(ValueError, match="image"):
        segment_object(decomposition, image[:-1], crf=False)
    with pytest.raises(ValueError, match="crf_params"):
        segment_object(decomposition, image, crf_params={"bilateral_weigth": 5.0})
    with pytest.raises(ValueError, match="decomposition"):
        segment_object(object(), image)
    with pytest.raises(ValueError, match="crf"):
        segment_object(decomposition, image, crf="yes")


@needs_crf
def test_crf_params_are_used(rectangle_case):
    image, _, _, decomposition = rectangle_case
    default = segment_object_probability(decomposition, image)
    explicit = segment_object_probability(decomposition, image, crf_params=dict(defaults.CRF_PARAMS))
    np.testing.assert_array_equal(default, explicit)
    unary_only = segment_object_probability(decomposition, image, crf_params={"iterations": 0})
    coarse = segment_object_probability(decomposition, image, crf=False)
    np.testing.assert_allclose(unary_only, np.where(coarse > 0.5, 0.99, 0.01), atol=1e-4)


# -------------------------------------------------------------- real photos (SOD)


def _sod_case(image_id):
    root = shared_data_dir() / "sod"
    if not (root / "images").is_dir() or not (root / "GT").is_dir():
        pytest.skip(f"shared SOD data not found at {root} (set DEEPSPECTRAL_SHARED_DATA)")
    from PIL import Image

    image = np.asarray(Image.open(root / "images" / f"{image_id}.jpg").convert("RGB"))
    mask = np.asarray(Image.open(root / "GT" / f"{image_id}.png").convert("L")) > 127
    return image, mask


@pytest.mark.parametrize("image_id", SOD_IDS)
def test_oracle_sod_photo_segmentation(image_id):
    image, mask = _sod_case(image_id)
    decomposition = decompose(oracle_features(mask), image)
    coarse_iou = iou(segment_object(decomposition, image, crf=False), mask)
    assert coarse_iou > 0.85, coarse_iou
    if not HAVE_CRF:
        pytest.skip('pydensecrf is not installed (pip install "deepspectral[crf]")')
    crf_iou = iou(segment_object(decomposition, image, crf=True), mask)
    assert crf_iou > 0.9, crf_iou
    assert coarse_iou <= crf_iou + 0.02, (coarse_iou, crf_iou)
