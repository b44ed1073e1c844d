"""TokenCut (``--method tokencut``): its graph, eigenvector, split, box and mask checked against
independent computations (brute-force loops, dense generalised ``eigh``, torch's resizes),
the geometry of its two image fits (zero padding, resize), and its wiring into the engine,
the Python API and the command line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
from PIL import Image

from deepspectral import defaults
from deepspectral.cli import main
from deepspectral.engine import Engine
from deepspectral.features import PatchFeatures
from deepspectral.geometry import FITS, ImageGeometry, resize_nearest
from deepspectral.recipes import METHODS, decompose, get_recipe, method_of, tokencut
from deepspectral.store import Store, load_decomposition
from deepspectral.tasks.localize import localize
from deepspectral.tasks.segment import resolve_refine, segment_object

from oracle import iou, oracle_features  # noqa: E402


def _ellipse(height, width, cy, cx, ry, rx):
    yy, xx = np.mgrid[:height, :width]
    return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1


# ---------------------------------------------------------------------------------------
# Geometry of the two fits
# ---------------------------------------------------------------------------------------


def test_pad_geometry_rounds_the_grid_up_and_maps_back_inside_the_image():
    g = ImageGeometry.for_image((321, 481), 16, None, fit="pad")
    assert g.fit == "pad" and g.input_size == (321, 481)
    assert g.patch_grid == (21, 31) and g.crop_size == (336, 496) and g.padding == (15, 15)
    # TokenCut's box rule: cells * 16, clipped to the image
    box = g.grid_boxes_to_image([[29, 19, 31, 21]], grid_size=g.patch_grid)[0]
    assert box.tolist() == [464, 304, 481, 321]
    # a grid map covering the padded area loses the padded strip
    grid = np.arange(21 * 31).reshape(21, 31)
    back = g.grid_to_image(grid)
    assert back.shape == (321, 481)
    assert np.array_equal(back, np.kron(grid, np.ones((16, 16), int))[:321, :481])
    # an exact multiple pads nothing and crops nothing
    exact = ImageGeometry.for_image((320, 480), 16, None, fit="pad")
    assert exact.patch_grid == (20, 30) and exact.padding == (0, 0)


def test_resize_geometry_rounds_to_the_nearest_multiple_as_tokencut():
    # utils.resize_pil: int(round(w / 16)) * 16 (Python's round: halves to even)
    for (h, w), expected in {(321, 481): (320, 480), (330, 488): (336, 480), (8, 20): (16, 16), (24, 40): (32, 32)}.items():
        g = ImageGeometry.for_image((h, w), 16, None, fit="resize")
        assert g.fit == "crop" and g.input_size == expected, (h, w)
        assert g.crop_size == g.input_size
    with pytest.raises(ValueError, match="fit"):
        ImageGeometry.for_image((100, 100), 16, None, fit="stretch")
    with pytest.raises(ValueError, match="fit"):
        ImageGeometry((10, 10), (10, 10), 16, "resize")
    assert FITS == ("crop", "pad", "resize")


def test_floor_nearest_rule_matches_torch_nearest():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    for (h, w), (H, W) in [((20, 30), (321, 481)), ((7, 5), (40, 13)), ((13, 17), (9, 11))]:
        grid = rng.random((h, w)).astype(np.float32)
        expected = torch.nn.functional.interpolate(torch.from_numpy(grid)[None, None], size=(H, W), mode="nearest")[0, 0].numpy()
        assert np.array_equal(resize_nearest(grid, (H, W), rule="floor"), expected)
    with pytest.raises(ValueError, match="rule"):
        resize_nearest(grid, (3, 3), rule="round")


def test_two_step_floor_upsampling_equals_the_direct_one():
    """grid → input (×16) → original with the floor rule = grid → original in one step
    (what TokenCut's F.interpolate does), for the resize fit's geometry."""
    rng = np.random.default_rng(1)
    for size in [(321, 481), (333, 250), (480, 854)]:
        g = ImageGeometry.for_image(size, 16, None, fit="resize")
        grid = rng.integers(0, 5, g.patch_grid)
        assert np.array_equal(g.grid_to_image(grid, rule="floor"), resize_nearest(grid, size, rule="floor"))


def test_backbone_pads_after_normalising(random_weights):
    """fit="pad" equals a hand-made zero-padded normalised tensor through the same model."""
    torch = pytest.importorskip("torch")
    from deepspectral.backbones import Backbone

    bb = Backbone("dino_vits16", weights=random_weights, device="cpu")
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (37, 50, 3), dtype=np.uint8)
    feats = bb.extract(image, max_size=None, fit="pad")
    assert feats.grid_size == (3, 4) and feats.fit == "pad" and feats.crop_size == (48, 64)
    x = torch.from_numpy(image).permute(2, 0, 1).float() / 255
    x = (x - torch.tensor(defaults.IMAGENET_MEAN)[:, None, None]) / torch.tensor(defaults.IMAGENET_STD)[:, None, None]
    padded = torch.zeros(3, 48, 64)
    padded[:, :37, :50] = x
    captured = {}
    handle = bb.model.blocks[-1].attn.qkv.register_forward_hook(lambda m, i, o: captured.setdefault("qkv", o))
    with torch.no_grad():
        bb.model.forward_features(padded[None])
    handle.remove()
    keys = captured["qkv"][0, 1:, 384:768].reshape(3, 4, 384).numpy()
    np.testing.assert_allclose(feats.features, keys, rtol=1e-4, atol=1e-4)
    # resize: the input is Lanczos-resized to round(37/16)*16 x round(50/16)*16 = 32 x 48
    resized = bb.extract(image, max_size=None, fit="resize")
    assert resized.input_size == (32, 48) and resized.grid_size == (2, 3) and resized.fit == "crop"


# ---------------------------------------------------------------------------------------
# The maths
# ---------------------------------------------------------------------------------------


def test_affinity_matches_a_brute_force_loop():
    rng = np.random.default_rng(0)
    f = rng.standard_normal((3, 4, 8)).astype(np.float32)
    f[0, 0] = 0.0  # a zero feature: cosine 0 with everything, itself included
    a = tokencut.tokencut_affinity(f, tau=0.2, eps=1e-5)
    flat = f.reshape(12, 8).astype(np.float64)
    for i in range(12):
        for j in range(12):
            ni, nj = np.linalg.norm(flat[i]), np.linalg.norm(flat[j])
            cos = 0.0 if ni == 0 or nj == 0 else flat[i] @ flat[j] / (ni * nj)
            assert a[i, j] == pytest.approx(1.0 if cos > 0.2 else 1e-5), (i, j)
    assert a.dtype == np.float32 and np.array_equal(a, a.T)
    assert set(np.unique(a).tolist()) == {np.float32(1e-5), 1.0}


@pytest.mark.parametrize("shape", [(12, 15), (25, 30)])  # dense path (180 nodes) and Lanczos (750)
def test_second_eigenvector_matches_dense_generalised_eigh(shape):
    mask = _ellipse(shape[0] * 16, shape[1] * 16, shape[0] * 8, shape[1] * 7, shape[0] * 5, shape[1] * 4)
    feats = oracle_features(mask, noise=1.2, seed=3)  # noisy: a graph with many cross edges
    a = tokencut.tokencut_affinity(feats.features).astype(np.float64)
    d = np.diag(a.sum(1))
    values, vectors = scipy.linalg.eigh(d - a, d)
    ours_values, ours_vectors = tokencut.second_eigenvector(tokencut.tokencut_affinity(feats.features))
    np.testing.assert_allclose(ours_values, values[:3], atol=1e-5)
    for k in (1, 2):
        y = ours_vectors[k].astype(np.float64)
        cos = abs(y @ d @ vectors[:, k]) / np.sqrt((y @ d @ y) * (vectors[:, k] @ d @ vectors[:, k]))
        assert cos > 0.999, (k, cos)


def test_bipartition_flips_towards_the_seed():
    v = np.array([0.1, 0.2, -0.9, 0.3, 0.25])  # mean -0.01: the > mean side lacks the seed (-0.9)
    split, seed, oriented = tokencut.bipartition(v)
    assert seed == 2
    assert split.tolist() == [False, False, True, False, False]
    np.testing.assert_array_equal(oriented, -v)
    split2, seed2, oriented2 = tokencut.bipartition(-v)
    assert seed2 == 2 and split2.tolist() == split.tolist() and np.array_equal(oriented2, -v)
    with pytest.raises(ValueError, match="vector"):
        tokencut.bipartition(np.array([np.nan, 1.0]))


def test_seed_component_is_four_connected():
    fg = np.array(
        [
            [1, 1, 0, 0],
            [0, 0, 1, 0],  # touches the first blob by a corner only
            [0, 0, 1, 1],
        ],
        bool,
    )
    np.testing.assert_array_equal(tokencut.seed_component(fg, 0), fg & np.array([[1, 1, 0, 0]] * 1 + [[0, 0, 0, 0]] * 2, bool))
    assert tokencut.seed_component(fg, 6).sum() == 3
    assert not tokencut.seed_component(fg, 3).any()  # the seed outside the foreground
    with pytest.raises(ValueError, match="seed"):
        tokencut.seed_component(fg, 12)


def test_oracle_object_box_and_mask():
    h, w = 321, 481
    mask = _ellipse(h, w, 170, 260, 90, 130)
    # a second, smaller blob of the same kind: the seed's component only is kept
    mask |= _ellipse(h, w, 40, 40, 25, 25)
    dec = tokencut.decompose(oracle_features(mask, noise=0.3))
    assert method_of(dec) == "tokencut" and dec.settings["tau"] == 0.2 and dec.eigenvectors.shape == (3, 20, 30)
    box = localize(dec)
    # the big ellipse's box, to a patch
    assert box[0] == pytest.approx(130, abs=16) and box[2] == pytest.approx(390, abs=16)
    assert box[1] == pytest.approx(80, abs=16) and box[3] == pytest.approx(260, abs=16)
    seg = segment_object(dec, np.zeros((h, w, 3), np.uint8), refine="none")
    assert iou(seg, _ellipse(h, w, 170, 260, 90, 130)) > 0.85


def test_box_is_clipped_to_the_padded_image():
    h, w = 100, 90  # pad to 112 x 96: grid 7 x 6
    mask = np.zeros((h, w), bool)
    mask[60:, 50:] = True  # an object in the bottom-right corner, into the padding
    geometry = ImageGeometry.for_image((h, w), 16, None, fit="pad")
    inside = np.zeros(geometry.patch_grid, bool)
    inside[4:, 3:] = True  # the features of the padded grid
    rng = np.random.default_rng(0)
    dirs = rng.standard_normal((2, 32))
    feats = np.where(inside[..., None], dirs[1], dirs[0]) + 0.05 * rng.standard_normal((7, 6, 32))
    pf = PatchFeatures(feats.astype(np.float32), 16, (h, w), (h, w))
    assert pf.fit == "pad"
    dec = tokencut.decompose(pf)
    assert dec.crop_size == (112, 96) and dec.geometry.fit == "pad"
    assert localize(dec) == (48, 64, 90, 100)


def test_parameters_are_checked():
    feats = oracle_features(np.zeros((64, 64), bool))
    for bad in [{"tau": 1.0}, {"tau": float("nan")}, {"eps": 0.0}, {"eps": 1.0}, {"tau": True}]:
        with pytest.raises(ValueError, match=next(iter(bad))):
            tokencut.decompose(feats, **bad)
    with pytest.raises(ValueError, match="knn_lambda: not a parameter of method 'tokencut'"):
        decompose(feats, method="tokencut", knn_lambda=1.0)
    with pytest.raises(ValueError, match="method"):
        get_recipe("lost")
    assert tuple(METHODS) == defaults.METHOD_NAMES == ("dsm", "tokencut") and defaults.METHOD == "dsm"
    assert get_recipe("tokencut").fit_for("boxes") == "pad" and get_recipe("tokencut").fit_for("masks") == "resize"
    assert get_recipe("dsm").fit_for("masks") == "crop"


def test_refine_resolution():
    dec = tokencut.decompose(oracle_features(_ellipse(64, 64, 32, 32, 20, 20)))
    assert resolve_refine(dec) == "bilateral"
    assert resolve_refine(dec, crf=False) == "none" and resolve_refine(dec, crf=True) == "crf"
    assert resolve_refine(dec, refine="none") == "none"
    with pytest.raises(ValueError, match="contradicts"):
        resolve_refine(dec, crf=True, refine="bilateral")
    with pytest.raises(ValueError, match="contradicts"):
        resolve_refine(dec, crf=False, refine="crf")
    assert resolve_refine(dec, crf=False, refine="bilateral") == "bilateral"  # no CRF indeed
    with pytest.raises(ValueError, match="refine"):
        resolve_refine(dec, refine="grabcut")


# ---------------------------------------------------------------------------------------
# Engine, store, CLI
# ---------------------------------------------------------------------------------------


class _Item:
    def __init__(self, name, image):
        self.name, self._image = name, image

    def load_image(self):
        return self._image


def test_engine_runs_tokencut_with_its_own_cache_keys(random_weights, tmp_path):
    from deepspectral.backbones import Backbone

    bb = Backbone("dino_vits16", weights=random_weights, device="cpu")
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (50, 70, 3), dtype=np.uint8)
    store = Store(tmp_path / "cache")
    boxes = Engine(bb, method="tokencut", store=store)
    masks = Engine(bb, method="tokencut", method_params={"tau": 0.3}, use="masks", store=store)
    dsm = Engine(bb, store=store)
    assert "fit" not in dsm.feature_settings() and "method" not in dsm.decomposition_settings()
    assert boxes.feature_settings()["fit"] == "pad" and masks.feature_settings()["fit"] == "resize"
    assert boxes.decomposition_settings()["method"] == "tokencut" and masks.decomposition_settings()["tau"] == 0.3
    (rb,) = [r.check() for r in boxes.run([_Item("a", image)])]
    (rm,) = [r.check() for r in masks.run([_Item("a", image)])]
    assert rb.decomposition.grid_size == (4, 5) and rb.decomposition.crop_size == (64, 80)
    assert rm.decomposition.grid_size == (3, 4) and rm.decomposition.input_size == (48, 64)
    assert rm.decomposition.settings["tau"] == 0.3
    # a rerun reads both from the cache, each under its own key
    (again,) = [r.check() for r in boxes.run([_Item("a", image)])]
    assert "eigenvectors" not in again.seconds
    np.testing.assert_array_equal(again.decomposition.eigenvectors, rb.decomposition.eigenvectors)
    direct = tokencut.decompose(bb.extract(image, fit="pad"))
    np.testing.assert_allclose(rb.decomposition.eigenvectors, direct.eigenvectors, atol=1e-6)
    with pytest.raises(ValueError, match="method_params"):
        Engine(bb, method_params={"tau": 0.1})
    with pytest.raises(ValueError, match="method"):
        Engine(bb, method="lost")


@pytest.fixture(scope="module")
def photo_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tc_photos")
    rng = np.random.default_rng(0)
    image = rng.integers(20, 90, (70, 90, 3), dtype=np.uint8)
    image[20:50, 30:60] = 220
    Image.fromarray(image).save(root / "one.png")
    return root


def _cli(command, photos, out, weights, *extra):
    return main([command, str(photos), "-o", str(out), "--weights", str(weights), "--device", "cpu", *extra])


def test_cli_localize_eigs_segment_with_tokencut(photo_dir, random_weights, tmp_path):
    out = tmp_path / "loc"
    assert _cli("localize", photo_dir, out, random_weights, "--method", "tokencut", "--tau", "0.25", "-q") == 0
    (record,) = json.loads((out / "boxes.json").read_text())
    assert len(record["box_xyxy"]) == 4 and 0.0 <= record["score"] <= 1.0
    x1, y1, x2, y2 = record["box_xyxy"]
    assert x2 % 16 == 0 or x2 == 90  # patch edges, clipped to the image
    out = tmp_path / "eigs"
    assert _cli("eigs", photo_dir, out, random_weights, "--method", "tokencut", "-q") == 0
    dec = load_decomposition(out / "one.npz")
    assert dec.settings["method"] == "tokencut" and dec.settings["tau"] == 0.2 and dec.crop_size == (80, 96)
    out = tmp_path / "seg"
    assert _cli("segment", photo_dir, out, random_weights, "--method", "tokencut", "-q") == 0  # bilateral by default
    mask = np.asarray(Image.open(out / "one.png"))
    assert mask.shape == (70, 90) and set(np.unique(mask)) <= {0, 255}
    (scored,) = json.loads((out / "scores.json").read_text())
    assert 0.0 <= scored["score"] <= 1.0 and scored["empty"] == (not mask.any())
    assert _cli("segment", photo_dir, tmp_path / "seg2", random_weights, "--method", "tokencut", "--refine", "none", "-q") == 0


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--tau", "0.3"], "--tau: applies to --method tokencut only"),
        (["--method", "tokencut", "--knn-lambda", "5"], "--knn-lambda: applies to --method dsm only"),
        (["--method", "tokencut", "--n-eigenvectors", "3"], "--n-eigenvectors: applies to --method dsm only"),
        (["--method", "tokencut", "--tau", "1.5"], "--tau: expected"),
        (["--method", "tokencut", "--eps", "0"], "--eps: expected"),
        (["--min-score", "1.5"], "--min-score: expected a number in [0, 1]"),
        (["--no-crf", "--refine", "bilateral"], "--no-crf: contradicts --refine bilateral"),
    ],
)
def test_cli_refuses_options_of_another_recipe(photo_dir, random_weights, tmp_path, capsys, extra, message):
    command = "segment" if "--refine" in extra or "--no-crf" in extra else "localize"
    assert _cli(command, photo_dir, tmp_path / "out", random_weights, *extra) == 2
    assert message in capsys.readouterr().err


def test_eigs_has_no_min_score(photo_dir, random_weights, tmp_path):
    assert _cli("eigs", photo_dir, tmp_path / "out", random_weights, "--min-score", "0.5") == 2


def test_bilateral_refinement_of_a_large_image_is_solved_smaller(monkeypatch):
    """Above defaults.BILATERAL_MAX_SIZE the solver works on a downscaled image; the mask
    comes back at the original size and agrees with the full-resolution solve."""
    h, w = 96, 128
    truth = _ellipse(h, w, 48, 64, 30, 40)
    image = np.where(truth[..., None], [210, 80, 60], [30, 100, 50]).astype(np.uint8)
    feats = oracle_features(truth)
    dec = tokencut.decompose(feats)
    full = segment_object(dec, image, refine="bilateral")
    monkeypatch.setattr(defaults, "BILATERAL_MAX_SIZE", 64)
    small = segment_object(dec, image, refine="bilateral")
    assert small.shape == (h, w) and iou(small, full) > 0.9 and iou(small, truth) > 0.85


def test_small_graphs_are_solved_with_one_blas_thread(monkeypatch):
    # numpy's and scipy's OpenBLAS pools spin against each other on small graphs: the
    # eigensolve of one up to ONE_BLAS_THREAD_MAX_NODES patches runs with one BLAS thread
    # (and the caller's setting is back afterwards); larger graphs keep the caller's
    from threadpoolctl import threadpool_info, threadpool_limits

    def blas_threads() -> set[int]:
        return {entry["num_threads"] for entry in threadpool_info() if entry["user_api"] == "blas"}

    seen = []
    solve = tokencut.laplacian_eigenvectors

    def spying(affinity, k):
        seen.append((len(affinity), blas_threads()))
        return solve(affinity, k)

    monkeypatch.setattr(tokencut, "laplacian_eigenvectors", spying)
    affinity = tokencut.tokencut_affinity(np.random.default_rng(0).standard_normal((30, 8)))
    with threadpool_limits(limits=2, user_api="blas"):  # the caller's setting: 2 threads
        tokencut.second_eigenvector(affinity)
        assert blas_threads() == {2}
        monkeypatch.setattr(tokencut, "ONE_BLAS_THREAD_MAX_NODES", 29)
        tokencut.second_eigenvector(affinity)
    assert seen == [(30, {1}), (30, {2})]
