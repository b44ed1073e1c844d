"""Instance masks in COCO's format: compressed RLE and the ``instances.json`` file.

**Run-length encoding** (COCO's ``maskApi``, documented in ``pycocotools/mask.py``): the
mask is read in column-major order (down the first column, then the next) and written as
the lengths of alternating runs, starting with a run of zeros (0 when the first pixel is
set). **Compressed** RLE writes those counts as a string: each count (from the fourth on,
its difference with the count two before) as a little-endian sequence of 5-bit groups in
two's complement, each group ``+ 48`` as one ASCII character, bit 0x20 set on every group but
the last of a count; a count ends when the rest of the number is 0 (or −1 for a negative
one, whose last group has its sign bit 0x10 set). ``{"size": [H, W], "counts": "..."}``
is what pycocotools' ``mask.decode`` and detectron2 read.

**instances.json** (:func:`coco_instances`, :func:`write_instances`)::

    {"images": [{"id", "file_name", "width", "height"}, ...],
     "annotations": [{"id", "image_id", "category_id": 1, "bbox": [x, y, w, h],
                      "segmentation": RLE, "area", "score", "iscrowd": 0}, ...],
     "categories": [{"id": 1, "name": "object"}]}

Ids count from 1 in the order of the image records given; boxes are the masks' tight boxes
in pixels (``x, y`` the top-left pixel, ``w, h`` in pixels, as ``pycocotools.mask.toBbox``).
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "CATEGORY",
    "encode_rle",
    "decode_rle",
    "rle_counts",
    "annotation",
    "image_record",
    "coco_instances",
    "write_instances",
    "read_instances",
]

#: The one class of class-agnostic pseudo-labels.
CATEGORY = {"id": 1, "name": "object"}


def rle_counts(mask: np.ndarray) -> list[int]:
    """Uncompressed COCO RLE counts of an ``(H, W) bool`` mask (column-major runs, zeros first)."""
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 2:
        raise ValueError(f"mask: expected shape (H, W), got {mask.shape}")
    flat = mask.T.reshape(-1).astype(np.int8)
    if flat.size == 0:
        return []
    changes = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], changes, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat[0]:
        counts.insert(0, 0)
    return [int(c) for c in counts]


def _compress(counts: list[int]) -> str:
    chars = []
    for index, count in enumerate(counts):
        x = count - counts[index - 2] if index > 2 else count
        more = True
        while more:
            group = x & 0x1F
            x >>= 5  # arithmetic shift: a negative difference stays negative
            more = x != -1 if group & 0x10 else x != 0
            if more:
                group |= 0x20
            chars.append(chr(group + 48))
    return "".join(chars)


def _decompress(text: str) -> list[int]:
    counts: list[int] = []
    position = 0
    while position < len(text):
        x, shift, more = 0, 0, True
        while more:
            group = ord(text[position]) - 48
            x |= (group & 0x1F) << shift
            more = bool(group & 0x20)
            position += 1
            if not more and group & 0x10:
                x |= -1 << (shift + 5)
            shift += 5
        if len(counts) > 2:
            x += counts[-2]
        counts.append(x)
    return counts


def encode_rle(mask: np.ndarray) -> dict:
    """COCO compressed RLE ``{"size": [H, W], "counts": str}`` of an ``(H, W) bool`` mask."""
    mask = np.asarray(mask, dtype=bool)
    counts = rle_counts(mask)
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": _compress(counts)}


def decode_rle(rle: dict) -> np.ndarray:
    """The ``(H, W) bool`` mask of a COCO RLE (compressed: ``counts`` a string; or
    uncompressed: a list of counts); ``ValueError`` when the counts do not fill the size."""
    try:
        height, width = (int(v) for v in rle["size"])
        counts = rle["counts"]
    except (KeyError, TypeError, ValueError):
        raise ValueError(f"rle: expected {{'size': [H, W], 'counts': ...}}, got {rle!r}") from None
    if isinstance(counts, bytes):
        counts = counts.decode("ascii")
    counts = _decompress(counts) if isinstance(counts, str) else [int(c) for c in counts]
    if any(c < 0 for c in counts) or sum(counts) != height * width:
        raise ValueError(f"rle: counts sum to {sum(counts)}, expected {height} x {width} = {height * width}")
    values = np.zeros(len(counts), dtype=bool)
    values[1::2] = True
    flat = np.repeat(values, counts)
    return flat.reshape(width, height).T.copy()


def annotation(mask: np.ndarray, score: float) -> dict:
    """One instance without its ids: ``bbox`` [x, y, w, h], ``area``, ``score``,
    ``segmentation`` (compressed RLE) of a non-empty ``(H, W) bool`` mask."""
    mask = np.asarray(mask, dtype=bool)
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        raise ValueError("mask: expected a non-empty mask")
    x, y = int(cols[0]), int(rows[0])
    return {
        "bbox": [x, y, int(cols[-1]) + 1 - x, int(rows[-1]) + 1 - y],
        "area": int(mask.sum()),
        "score": round(float(score), 6),
        "segmentation": encode_rle(mask),
    }


def image_record(file_name: str, size: tuple[int, int], annotations: list[dict]) -> dict:
    """One image's entry for :func:`coco_instances`: ``file_name``, ``width``, ``height``
    (``size = (H, W)``) and its :func:`annotation` dicts."""
    return {"file_name": str(file_name), "width": int(size[1]), "height": int(size[0]), "annotations": list(annotations)}


def coco_instances(records: list[dict]) -> dict:
    """The COCO ``instances.json`` dict of :func:`image_record` entries, ids from 1 in order."""
    images, annotations = [], []
    for image_id, record in enumerate(records, 1):
        images.append(
            {"id": image_id, "file_name": record["file_name"], "width": int(record["width"]), "height": int(record["height"])}
        )
        for found in record["annotations"]:
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": CATEGORY["id"],
                    "bbox": found["bbox"],
                    "segmentation": found["segmentation"],
                    "area": found["area"],
                    "score": found["score"],
                    "iscrowd": 0,
                }
            )
    return {"images": images, "annotations": annotations, "categories": [dict(CATEGORY)]}


def write_instances(path, records: list[dict]):
    """Write :func:`coco_instances` of ``records`` to ``path`` atomically; returns the path."""
    from .files import atomic_write_json

    return atomic_write_json(path, coco_instances(records))


def read_instances(path) -> dict:
    """An ``instances.json`` as a dict (``json.load``)."""
    import json
    from pathlib import Path

    return json.loads(Path(path).read_text(encoding="utf-8"))
