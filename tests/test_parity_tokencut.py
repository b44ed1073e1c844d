"""Parity with TokenCut's own code (YangtaoWANG95/TokenCut), imported from a checkout.

Set ``DEEPSPECTRAL_PEER_TOKENCUT`` to the checkout (e.g. ``/work/peers/TokenCut``); the tests
skip with the reason otherwise, and when ``../shared/data`` is absent. Both sides get the
same random-weight ViT-S/16 (timm); TokenCut's side prepares the image as its scripts do
(see ``tests/peer_tokencut.py`` for the harness and its shims). Targets per photo: second
eigenvector |cos| ≥ 0.99 where the gap is clear, box IoU ≥ 0.9, saliency mask IoU ≥ 0.95,
bilateral-solver mask IoU ≥ 0.9. The first two photos run by default, the other 18 with
the slow tests (``benchmarks/bench_tokencut_parity.py`` prints the table of all 20).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from oracle import iou, shared_data_dir  # noqa: E402
from peer_tokencut import PEER_ENV, load_peer, pick_photos  # noqa: E402

CHECKOUT = os.environ.get(PEER_ENV)
PHOTOS = pick_photos(shared_data_dir()) if shared_data_dir().is_dir() else []
FAST = 2

pytestmark = [
    pytest.mark.skipif(not CHECKOUT, reason=f"set {PEER_ENV} to a TokenCut checkout (github.com/YangtaoWANG95/TokenCut)"),
    pytest.mark.skipif(not PHOTOS, reason=f"no photos under {shared_data_dir()}"),
]


@pytest.fixture(scope="module")
def sides(random_weights):
    from deepspectral.backbones import Backbone

    backbone = Backbone("dino_vits16", weights=random_weights, device="cpu")
    try:
        peer = load_peer(Path(CHECKOUT), backbone.model)
    except (FileNotFoundError, ImportError) as error:
        pytest.skip(f"{PEER_ENV}={CHECKOUT}: {error}")
    return backbone, peer


def _box_iou(a, b) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - iw * ih
    return iw * ih / union


def _cos(a, b) -> float:
    a, b = np.ravel(a).astype(np.float64), np.ravel(b).astype(np.float64)
    return abs(a @ b) / (np.linalg.norm(a) * np.linalg.norm(b))


@pytest.mark.parametrize(
    "path", [pytest.param(p, id=p.name, marks=() if i < FAST else pytest.mark.slow) for i, p in enumerate(PHOTOS)]
)
def test_same_boxes_masks_and_bilateral_output_as_tokencut(sides, path):
    from PIL import Image

    from deepspectral.recipes import tokencut
    from deepspectral.tasks.segment import segment_object

    backbone, peer = sides
    image = np.asarray(Image.open(path).convert("RGB"))
    dec = tokencut.decompose(backbone.extract(image, max_size=None, fit="pad"))
    theirs = peer.box(path)
    gap = 1.0 - dec.eigenvalues[1] / dec.eigenvalues[2]
    if gap > 0.1:
        assert _cos(dec.eigenvectors[1], theirs.box_vector) >= 0.99
    assert _box_iou(tokencut.box(dec), theirs.box) >= 0.9

    dec_m = tokencut.decompose(backbone.extract(image, max_size=None, fit="resize"))
    theirs = peer.saliency_mask(path, bilateral=True)
    assert iou(segment_object(dec_m, image, refine="none"), theirs.mask) >= 0.95
    assert iou(segment_object(dec_m, image, refine="bilateral"), theirs.solver > 0.5) >= 0.9
