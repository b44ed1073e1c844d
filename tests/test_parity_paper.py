"""Parity of the paper's eigen-step and box with the authors' own code.

The authors' code (lukemelas/deep-spectral-segmentation) is imported at run time from the
checkout named by ``DEEPSPECTRAL_PEER_DSM`` (``extract/extract.py: _extract_eig`` and
``object-localization/object_discovery.py: get_bbox_from_patch_mask``, through the harness
of ``benchmarks/bench_paper_parity.py``); without it, or without the packages their
computation needs (pymatting, scikit-image), the tests skip with the reason. Both sides get
the same random-weight ViT-S/16 features and the same cropped pixels of real photos.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("DEEPSPECTRAL_SHARED_DATA", ROOT.parent / "shared" / "data"))
#: Photos of the check: the first of each set of ../shared/data (20 in all).
N_SOD, N_COCO = 12, 8


def _harness():
    spec = importlib.util.spec_from_file_location("bench_paper_parity", ROOT / "benchmarks" / "bench_paper_parity.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def harness():
    return _harness()


@pytest.fixture(scope="module")
def paper_code(harness):
    checkout = harness.peer_path()
    if checkout is None:
        pytest.skip(f"the authors' code is not given: set {harness.PEER_ENV} to a checkout of "
                    "lukemelas/deep-spectral-segmentation")  # fmt: skip
    try:
        return harness.load_paper_code(checkout)
    except harness.PeerUnavailable as error:
        pytest.skip(str(error))


def _photos() -> list[Path]:
    sod = sorted((SHARED / "sod" / "images").glob("*.jpg"))[:N_SOD]
    coco = sorted((SHARED / "coco-mini" / "val2017").glob("*.jpg"))[:N_COCO]
    return sod + coco


def test_clear_gap_rule(harness):
    values = np.array([0.0, 0.10, 0.1005, 0.30, 0.60])
    assert not harness.clear_gap(values, 1) and not harness.clear_gap(values, 2)
    assert harness.clear_gap(values, 3)


def test_stubs_do_not_outlive_the_import(harness, paper_code):
    for name in ("extract_utils", "cv2", "fire", "accelerate", "datasets"):
        module = sys.modules.get(name)
        assert module is None or not getattr(module, "__deepspectral_stub__", False)
    assert "extract_utils" not in sys.modules


def test_the_papers_eigenpairs_are_those_of_our_graph(harness, paper_code, tmp_path):
    # their eigenpairs, from the affinity their own function builds, solve
    # (D - W) y = λ D y for deepspectral's affinity of the same inputs (residuals)
    from deepspectral.geometry import grid_colours_of_crop
    from deepspectral.spectral import grid_affinity

    rng = np.random.default_rng(0)
    features = rng.normal(size=(4, 5, 12)).astype(np.float32)
    crop = rng.integers(0, 256, (64, 80, 3), dtype=np.uint8)
    values, vectors, _ = harness.paper_eigenpairs(paper_code, features, crop, tmp_path, n_eigenvectors=4)
    assert vectors.shape == (4, 8, 10) and values[0] == pytest.approx(0.0, abs=1e-5)
    upper = grid_affinity(features, grid_colours_of_crop(crop, (8, 10)), knn_lambda=10.0).astype(np.float64)
    affinity = np.triu(upper) + np.triu(upper, 1).T
    degree = affinity.sum(axis=1)
    for value, vector in zip(values, vectors.reshape(4, -1).astype(np.float64)):
        residual = degree * vector - affinity @ vector - value * degree * vector
        assert np.linalg.norm(residual) <= 1e-4 * np.linalg.norm(degree * vector)


@pytest.mark.slow
def test_eigenvectors_and_boxes_match_the_papers_code(harness, paper_code, tmp_path, random_weights):
    from deepspectral import Backbone
    from deepspectral.data.images import load_image

    photos = _photos()
    if len(photos) < N_SOD + N_COCO:
        pytest.skip(f"../shared/data not found at {SHARED} (set DEEPSPECTRAL_SHARED_DATA)")
    backbone = Backbone("dino_vits16", weights=str(random_weights), device="cpu")
    clear_cosines, failures = [], []
    for path in photos:
        result = harness.compare_photo(paper_code, backbone, load_image(path), path.name, tmp_path)
        clear_cosines += [c for c, g in zip(result.cosines, result.clear) if g]
        if result.box_iou < 0.9 or result.mask_iou < 0.95 or any(
            c < 0.99 for c, g in zip(result.cosines, result.clear) if g
        ):
            failures.append((path.name, result.cosines, result.clear, result.box_iou, result.mask_iou))
    assert not failures, failures
    assert len(clear_cosines) >= 2 * len(photos)  # most eigenvectors have a clear gap
