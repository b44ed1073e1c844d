"""COCO RLE and instances.json (deepspectral.instances) against pycocotools and a
brute-force decoder written here from the format's description."""

from __future__ import annotations

import json

import numpy as np
import pytest

from deepspectral.instances import (
    annotation,
    coco_instances,
    decode_rle,
    encode_rle,
    image_record,
    rle_counts,
    write_instances,
)


def brute_force_decode(rle: dict) -> np.ndarray:
    """Character by character: 5-bit groups, continuation bit 0x20, sign bit 0x10 on the
    last group, deltas from the fourth count on; then runs of 0 / 1 down the columns."""
    height, width = rle["size"]
    counts = []
    text = rle["counts"]
    i = 0
    while i < len(text):
        value, k = 0, 0
        while True:
            c = ord(text[i]) - 48
            i += 1
            value += (c & 0x1F) * (32**k)
            k += 1
            if not c & 0x20:
                if c & 0x10:
                    value -= 32**k
                break
        if len(counts) >= 3:
            value += counts[-2]
        counts.append(value)
    pixels = []
    for index, count in enumerate(counts):
        pixels += [index % 2] * count
    assert len(pixels) == height * width
    out = np.zeros((height, width), dtype=bool)
    for position, value in enumerate(pixels):
        out[position % height, position // height] = bool(value)
    return out


def masks():
    rng = np.random.default_rng(0)
    yield np.zeros((5, 7), bool)
    yield np.ones((4, 3), bool)
    yield np.eye(6, dtype=bool)  # first pixel set: the counts start with 0
    yield np.ones((1, 1), bool)
    blob = np.zeros((40, 61), bool)
    blob[5:30, 10:50] = True
    blob[12:20, 20:30] = False
    yield blob
    for density in (0.05, 0.5, 0.95):
        yield rng.random((23, 37)) < density
    big = np.zeros((300, 400), bool)
    big[10:290, 3:397] = True  # long runs: counts of several 5-bit groups, large deltas
    big[100:101, :] = False
    yield big


@pytest.mark.parametrize("mask", list(masks()), ids=lambda m: f"{m.shape}-{int(m.sum())}")
def test_rle_round_trips_and_matches_the_brute_force_decoder(mask):
    rle = encode_rle(mask)
    assert rle["size"] == list(mask.shape)
    np.testing.assert_array_equal(decode_rle(rle), mask)
    np.testing.assert_array_equal(brute_force_decode(rle), mask)
    counts = rle_counts(mask)
    assert sum(counts) == mask.size
    np.testing.assert_array_equal(decode_rle({"size": list(mask.shape), "counts": counts}), mask)


@pytest.mark.parametrize("mask", list(masks()), ids=lambda m: f"{m.shape}-{int(m.sum())}")
def test_pycocotools_reads_our_rle_and_writes_the_same_string(mask):
    mask_api = pytest.importorskip("pycocotools.mask", reason="pycocotools not installed (pip install pycocotools)")
    ours = encode_rle(mask)
    np.testing.assert_array_equal(mask_api.decode(ours).astype(bool), mask)
    theirs = mask_api.encode(np.asfortranarray(mask.astype(np.uint8)))
    assert ours["counts"] == theirs["counts"].decode("ascii")
    if mask.any():
        assert annotation(mask, 0.5)["bbox"] == [int(v) for v in mask_api.toBbox(ours)]
        assert annotation(mask, 0.5)["area"] == int(mask_api.area(ours))


def test_decode_refuses_counts_that_do_not_fill_the_size():
    with pytest.raises(ValueError, match="rle"):
        decode_rle({"size": [2, 2], "counts": [1, 2]})
    with pytest.raises(ValueError, match="rle"):
        decode_rle({"counts": "0"})
    with pytest.raises(ValueError, match="mask"):
        annotation(np.zeros((3, 3), bool), 1.0)


def test_instances_json_loads_in_pycocotools(tmp_path):
    coco_module = pytest.importorskip("pycocotools.coco", reason="pycocotools not installed (pip install pycocotools)")
    a = np.zeros((20, 30), bool)
    a[2:9, 3:12] = True
    b = np.zeros((20, 30), bool)
    b[10:18, 15:29] = True
    c = np.zeros((12, 8), bool)
    c[1:5, 2:3] = True
    records = [
        image_record("x/one.jpg", a.shape, [annotation(a, 0.9), annotation(b, 0.4)]),
        image_record("two.png", (12, 8), []),
        image_record("three.jpg", c.shape, [annotation(c, 0.7)]),
    ]
    path = write_instances(tmp_path / "instances.json", records)
    data = json.loads(path.read_text())
    assert data["categories"] == [{"id": 1, "name": "object"}]
    assert [image["id"] for image in data["images"]] == [1, 2, 3]
    assert data["images"][0] == {"id": 1, "file_name": "x/one.jpg", "width": 30, "height": 20}
    assert [(ann["id"], ann["image_id"]) for ann in data["annotations"]] == [(1, 1), (2, 1), (3, 3)]
    assert data["annotations"][0]["bbox"] == [3, 2, 9, 7]
    assert all(ann["iscrowd"] == 0 and ann["category_id"] == 1 for ann in data["annotations"])
    coco = coco_module.COCO(str(path))
    assert sorted(coco.getImgIds()) == [1, 2, 3]
    for ann_id, mask in zip((1, 2, 3), (a, b, c)):
        (ann,) = coco.loadAnns([ann_id])
        np.testing.assert_array_equal(coco.annToMask(ann).astype(bool), mask)
    assert coco_instances([]) == {"images": [], "annotations": [], "categories": [{"id": 1, "name": "object"}]}
