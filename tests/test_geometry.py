"""The one owner of image geometry: sizes, boxes, masks and maps back to the original image,
checked against brute-force definitions."""

from __future__ import annotations

import numpy as np
import pytest

from deepspectral.geometry import (
    ImageGeometry,
    grid_colours_of_crop,
    mask_to_box,
    resize_bilinear,
    resize_nearest,
    working_grid,
)


def test_sizes_of_a_downscaled_image():
    geometry = ImageGeometry.for_image((1000, 1500), 16, 800)
    assert geometry.input_size == (533, 800)
    assert geometry.patch_grid == (33, 50)
    assert geometry.crop_size == (528, 800)
    assert geometry.grid_size == (66, 100) == working_grid((528, 800))
    assert geometry.cell_size == (8.0, 8.0)
    assert geometry.scale == pytest.approx((1000 / 533, 1.875))


def test_for_image_rejects_bad_arguments():
    with pytest.raises(ValueError, match="max_size"):
        ImageGeometry.for_image((100, 100), 16, 0)
    with pytest.raises(ValueError, match="smaller than one patch"):
        ImageGeometry.for_image((10, 100), 16, None)
    with pytest.raises(ValueError, match="patch_size"):
        ImageGeometry((10, 10), (10, 10), 0)


def test_resize_nearest_takes_the_pixel_under_each_centre():
    rng = np.random.default_rng(0)
    for (h, w), (H, W) in [((3, 5), (7, 11)), ((6, 8), (48, 64)), ((9, 4), (4, 9)), ((5, 5), (5, 5))]:
        grid = rng.integers(0, 100, (h, w))
        out = resize_nearest(grid, (H, W))
        for i in range(H):
            for j in range(W):
                src = (min(int((i + 0.5) * h / H), h - 1), min(int((j + 0.5) * w / W), w - 1))
                assert out[i, j] == grid[src]


def test_resize_bilinear_matches_half_pixel_centres():
    rng = np.random.default_rng(1)
    array = rng.standard_normal((5, 7)).astype(np.float32)
    out = resize_bilinear(array, (9, 4))

    def sample(y, x):
        y = min(max(y, 0.0), 4.0)
        x = min(max(x, 0.0), 6.0)
        y0, x0 = int(np.floor(y)), int(np.floor(x))
        y1, x1 = min(y0 + 1, 4), min(x0 + 1, 6)
        fy, fx = y - y0, x - x0
        top = array[y0, x0] * (1 - fx) + array[y0, x1] * fx
        bottom = array[y1, x0] * (1 - fx) + array[y1, x1] * fx
        return top * (1 - fy) + bottom * fy

    expected = [[sample((i + 0.5) * 5 / 9 - 0.5, (j + 0.5) * 7 / 4 - 0.5) for j in range(4)] for i in range(9)]
    np.testing.assert_allclose(out, expected, atol=1e-5)


def test_grid_boxes_to_image_scales_rounds_and_clips():
    geometry = ImageGeometry((300, 450), (200, 300), 16)  # crop 192 x 288, grid 24 x 36, scale 1.5
    boxes = geometry.grid_boxes_to_image([[0, 0, 36, 24], [1, 2, 3, 4], [35, 23, 40, 30]])
    np.testing.assert_array_equal(boxes, [[0, 0, 432, 288], [12, 24, 36, 48], [420, 276, 450, 300]])
    grown = geometry.grid_boxes_to_input([[1, 1, 2, 2]], expand=32)
    np.testing.assert_array_equal(grown, [[0, 0, 48, 48]])
    np.testing.assert_array_equal(geometry.input_boxes_to_image(grown), [[0, 0, 72, 72]])


def test_grid_to_image_replicates_the_dropped_strips():
    geometry = ImageGeometry((50, 70), (50, 70), 16)  # crop 48 x 64, grid 6 x 8
    grid = np.arange(48).reshape(6, 8)
    full = geometry.grid_to_image(grid)
    assert full.shape == (50, 70) and full.dtype == grid.dtype
    np.testing.assert_array_equal(full[:48:8, :64:8], grid)
    np.testing.assert_array_equal(full[48:, :64], np.repeat(full[47:48, :64], 2, axis=0))
    np.testing.assert_array_equal(full[:, 64:], np.repeat(full[:, 63:64], 6, axis=1))


def test_maps_to_image_are_bilinear_and_clipped():
    geometry = ImageGeometry((100, 140), (50, 70), 16)  # crop 48 x 64
    maps = np.stack([np.full((6, 8), 0.25, np.float32), np.full((6, 8), 2.0, np.float32)])
    out = geometry.crop_maps_to_image(maps)
    assert out.shape == (2, 100, 140) and out.dtype == np.float32
    np.testing.assert_allclose(out[0], 0.25, atol=1e-6)
    np.testing.assert_array_equal(out[1], 1.0)
    probability = np.zeros((1, 50, 70), np.float32)
    probability[0, :, 35:] = 1.0
    up = geometry.input_maps_to_image(probability)[0]
    assert up.shape == (100, 140) and up[:, :69].max() == 0.0 and up[:, 71:].min() == 1.0


def test_crop_and_grid_colours():
    rng = np.random.default_rng(2)
    image = rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)
    geometry = ImageGeometry.for_image((40, 60), 16, None)
    np.testing.assert_array_equal(geometry.crop(image), image[:32, :48])
    colours = geometry.grid_colours(image)
    assert colours.shape == (4, 6, 3) and colours.dtype == np.float32 and 0 <= colours.min() <= colours.max() <= 1
    with pytest.raises(ValueError, match="does not match"):
        geometry.crop(image[:30])


def _triangle_shrink(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Brute-force antialiased bilinear shrink of ``(H, W, 3)`` to ``size``: each output
    pixel is the triangle-weighted mean over its footprint widened by the scale (the
    definition of PIL's BILINEAR filter when shrinking), in float64, no rounding."""
    out = image.astype(np.float64)
    for axis, n_out in ((1, size[1]), (0, size[0])):
        n_in = out.shape[axis]
        scale = n_in / n_out
        centres = (np.arange(n_out) + 0.5) * scale
        source = np.arange(n_in) + 0.5
        weights = np.maximum(1.0 - np.abs(source[None, :] - centres[:, None]) / scale, 0.0)
        weights /= weights.sum(axis=1, keepdims=True)
        out = np.moveaxis(np.tensordot(weights, np.moveaxis(out, axis, 0), axes=(1, 0)), 0, axis)
    return out


def test_grid_colours_are_the_papers_pil_bilinear_resize_of_the_crop():
    from PIL import Image

    rng = np.random.default_rng(5)
    image = rng.integers(0, 256, (75, 101, 3), dtype=np.uint8)
    geometry = ImageGeometry.for_image((75, 101), 16, None)
    crop = image[:64, :96]
    colours = geometry.grid_colours(image)
    assert colours.shape == (8, 12, 3) and colours.dtype == np.float32
    # the paper's code: PIL's BILINEAR resize to the grid, uint8 / 255 (of the crop here)
    expected = np.asarray(Image.fromarray(crop).resize((12, 8), Image.BILINEAR)) / 255.0
    np.testing.assert_array_equal(colours, expected.astype(np.float32))
    np.testing.assert_array_equal(geometry.crop_to_grid_colours(crop), colours)
    np.testing.assert_array_equal(grid_colours_of_crop(crop, (8, 12)), colours)
    # antialiased: the mean over the footprint (to PIL's 8-bit rounding), not 2 samples
    np.testing.assert_allclose(colours, _triangle_shrink(crop, (8, 12)) / 255.0, atol=1.5 / 255)
    two_tap = resize_bilinear(crop.astype(np.float32) / 255.0, (8, 12))
    assert np.abs(two_tap - colours).max() > 0.2  # noise: two samples are far from the mean


def test_grid_colours_use_the_crop_not_the_squeezed_image():
    # the paper's code squeezes the uncropped image onto the crop's grid; here the dropped
    # rows / columns (a bright strip) must not leak into the grid colours
    image = np.zeros((40, 56, 3), np.uint8)
    image[32:, :] = 255
    image[:, 48:] = 255
    geometry = ImageGeometry.for_image((40, 56), 16, None)
    assert geometry.crop_size == (32, 48)
    np.testing.assert_array_equal(geometry.grid_colours(image), 0.0)


def test_grid_colours_reject_a_wrong_crop():
    geometry = ImageGeometry.for_image((40, 56), 16, None)
    with pytest.raises(ValueError, match="crop"):
        geometry.crop_to_grid_colours(np.zeros((40, 56, 3), np.uint8))
    with pytest.raises(ValueError, match="crop"):
        grid_colours_of_crop(np.zeros((32, 48), np.uint8), (4, 6))


def test_mask_to_box():
    mask = np.zeros((5, 7), bool)
    assert mask_to_box(mask) is None
    mask[1:3, 2:6] = True
    assert mask_to_box(mask) == (2, 1, 6, 3)
