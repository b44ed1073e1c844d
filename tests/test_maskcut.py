"""MaskCut's repeated normalised cut (deepspectral.recipes.maskcut) against independent
computations: dense generalised ``eigh`` of the graph, the graph rebuilt from zeroed
features, and hand-made eigenvectors for the side and drop rules."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg

from deepspectral.recipes import maskcut as mc
from deepspectral.recipes.tokencut import tokencut_affinity


def scene(h, w, rects, *, dim=32, noise=0.1, seed=0):
    """Features with one direction per rectangle ``(y0, y1, x0, x1)`` and one for the
    background (orthonormal), plus noise; and the label map (0: background)."""
    rng = np.random.default_rng(seed)
    labels = np.zeros((h, w), dtype=int)
    for index, (y0, y1, x0, x1) in enumerate(rects, 1):
        labels[y0:y1, x0:x1] = index
    directions = np.linalg.qr(rng.standard_normal((dim, len(rects) + 1)))[0].T
    features = directions[labels] + rng.standard_normal((h, w, dim)) * noise / np.sqrt(dim)
    return features.astype(np.float32), labels


def dense_generalised(affinity):
    """The reference: scipy's dense ``eigh(D - A, D)``, three smallest pairs."""
    a = np.asarray(affinity, dtype=np.float64)
    d = np.diag(a.sum(axis=1))
    return scipy.linalg.eigh(d - a, d, subset_by_index=[0, 2])


def d_cosine(a, b, degree):
    return abs(float(a @ (degree * b))) / np.sqrt(float(a @ (degree * a)) * float(b @ (degree * b)))


def test_lanczos_eigenpairs_match_dense_generalised_eigh_with_taken_patches():
    # 21 x 21 = 441 nodes: above the eigensolver's dense threshold, so Lanczos runs
    features, labels = scene(21, 21, [(3, 9, 3, 10), (12, 19, 11, 19)], seed=1)
    affinity = tokencut_affinity(features, tau=0.15, eps=1e-5)
    taken = (labels == 1).reshape(-1)
    graph = mc.take_patches(affinity, taken, tau=0.15, eps=1e-5)
    values, vectors = mc.cut_eigenpairs(graph, taken=taken)
    ref_values, ref_vectors = dense_generalised(graph)
    np.testing.assert_allclose(values, ref_values[:2], atol=1e-6)
    degree = graph.astype(np.float64).sum(axis=1)
    assert d_cosine(vectors[1], ref_vectors[:, 1], degree) > 1 - 1e-6
    # the zeroed patches sit at mean(y) / (1 - λ) (the module docstring's claim) ...
    y = ref_vectors[:, 1]
    np.testing.assert_allclose(y[taken], y.mean() / (1 - ref_values[1]), rtol=1e-6)
    # ... where ours are put, on the same side of the mean as the dense solver's
    ours = vectors[1] * np.sign(vectors[1] @ (degree * y))
    np.testing.assert_allclose(ours[taken], y[taken], rtol=1e-4)
    assert ((ours > ours.mean()) == (y > y.mean())).all()
    dense_values, _ = mc.cut_eigenpairs(graph, solver="dense")
    np.testing.assert_allclose(dense_values, ref_values[:2], atol=1e-12)


def test_take_patches_is_the_graph_of_zeroed_features():
    features, labels = scene(8, 9, [(2, 5, 2, 6)], seed=2)
    taken = labels == 1
    zeroed = np.where(taken[..., None], 0.0, features)
    expected = tokencut_affinity(zeroed, tau=0.15, eps=1e-5)
    got = mc.take_patches(tokencut_affinity(features, tau=0.15, eps=1e-5), taken.reshape(-1), tau=0.15, eps=1e-5)
    np.testing.assert_array_equal(got, expected)
    # a negative threshold links a zero feature to everything (0 > tau), as MaskCut's A > tau
    expected = tokencut_affinity(zeroed, tau=-0.1, eps=1e-5)
    got = mc.take_patches(tokencut_affinity(features, tau=-0.1, eps=1e-5), taken.reshape(-1), tau=-0.1, eps=1e-5)
    np.testing.assert_array_equal(got, expected)


def test_lanczos_and_dense_solvers_find_the_same_objects():
    features, labels = scene(21, 21, [(2, 8, 2, 9), (11, 19, 12, 20), (14, 20, 1, 6)], seed=3)
    fast = mc.maskcut(features, n_cuts=3)
    slow = mc.maskcut(features, n_cuts=3, solver="dense")
    assert len(fast) == len(slow) == 3
    for a, b in zip(fast, slow):
        np.testing.assert_array_equal(a.mask, b.mask)
        assert a.dropped == b.dropped
        assert a.score == pytest.approx(b.score, abs=1e-6)
    # the three objects, one per cut, each exactly
    found = {int(np.bincount(labels[cut.mask]).argmax()) for cut in fast[:3]}
    assert found == {1, 2, 3}
    for cut in fast[:3]:
        assert (labels[cut.mask] == labels[cut.mask][0]).all()
        assert cut.mask.sum() == (labels == labels[cut.mask][0]).sum()
        assert cut.score > 0.9


def test_side_rule_three_corners_reverse_else_the_seed_side():
    # the seed (largest |y|) is on the side holding 3 corners: the other side is the object
    v = np.full((6, 6), -1.0)
    v[0, :] = 2.0
    v[:, 0] = 2.0
    v[-1, 0] = 3.0
    split, seed, oriented = mc.orient(v)
    assert mc.count_corners(~split) == 3
    np.testing.assert_array_equal(split, v < v.mean())
    assert seed == int(np.argmax(-v.reshape(-1)))  # the reversed vector's maximum
    np.testing.assert_array_equal(oriented, -v)
    # the other sign gives the same answer (the rule no longer depends on the solver's sign)
    split2, seed2, _ = mc.orient(-v)
    np.testing.assert_array_equal(split2, split)
    assert seed2 == seed
    assert mc._reversed_by_corners(v) and mc._reversed_by_corners(-v)
    # two corners: the seed's side, whatever the sign
    w = np.full((6, 6), -1.0)
    w[:, :2] = 1.0
    w[2, 3] = -5.0  # the seed, on the small side
    for sign in (1, -1):
        split, seed, oriented = mc.orient(sign * w)
        assert seed == 2 * 6 + 3
        np.testing.assert_array_equal(split, w < w.mean())  # the seed's side: 24 patches, 2 corners
        assert oriented.reshape(-1)[seed] > oriented.mean()
        assert not mc._reversed_by_corners(sign * w)


def _scripted(monkeypatch, vectors):
    """Make each cut's eigenvector the next of ``vectors`` (flat)."""
    calls = iter(vectors)

    def fake(affinity, **kwargs):
        n = affinity.shape[0]
        return np.array([0.0, 0.1, 0.5]), np.stack([np.ones(n), next(calls).reshape(-1), np.zeros(n)])

    monkeypatch.setattr(mc, "cut_eigenpairs", fake)


def _blob(shape, y0, y1, x0, x1):
    v = np.full(shape, -1.0)
    v[y0:y1, x0:x1] = 2.0
    return v


def test_overlap_and_small_drop_rules_and_subtraction(monkeypatch):
    shape = (10, 10)
    a = _blob(shape, 1, 5, 1, 5)  # 16 patches
    b = _blob(shape, 1, 5, 1, 6)  # IoU with a: 16 / 20 > 0.5 -> dropped
    c = _blob(shape, 6, 7, 6, 7)  # 1 patch = 1 % of the grid -> dropped
    d = _blob(shape, 3, 8, 3, 8)  # overlaps a a little: kept, a's part subtracted
    _scripted(monkeypatch, [a, b, b, c, d])
    features = np.random.default_rng(0).standard_normal((*shape, 4)).astype(np.float32)
    cuts = mc.maskcut(features, n_cuts=5)
    assert [cut.dropped for cut in cuts] == [None, "overlap", None, "small", None]
    assert cuts[0].mask.sum() == 16
    assert not cuts[1].mask.any() and not cuts[1].region.any() and cuts[1].candidate.sum() == 20
    # after a dropped cut the previous object is empty: the same candidate is kept, minus a
    assert cuts[2].region.sum() == 20 and cuts[2].mask.sum() == 4
    assert not cuts[3].mask.any()
    np.testing.assert_array_equal(cuts[4].region, d > 0)
    np.testing.assert_array_equal(cuts[4].mask, (d > 0) & ~(b > 0))
    masks = np.stack([cut.mask for cut in cuts])
    assert masks.sum(axis=0).max() == 1  # disjoint


def test_first_cut_is_never_dropped(monkeypatch):
    shape = (10, 10)
    _scripted(monkeypatch, [_blob(shape, 6, 7, 6, 7)])
    cuts = mc.maskcut(np.ones((*shape, 3), np.float32), n_cuts=1)
    assert cuts[0].dropped is None and cuts[0].mask.sum() == 1


def test_taken_patches_are_zeroed_for_the_next_cut(monkeypatch):
    shape = (10, 10)
    seen = []
    vectors = iter([_blob(shape, 1, 5, 1, 5), _blob(shape, 6, 9, 6, 9)])

    def fake(affinity, **kwargs):
        seen.append(affinity.copy())
        n = affinity.shape[0]
        return np.array([0.0, 0.1, 0.5]), np.stack([np.ones(n), next(vectors).reshape(-1), np.zeros(n)])

    monkeypatch.setattr(mc, "cut_eigenpairs", fake)
    features, _ = scene(*shape, [(2, 6, 2, 6)], seed=4)
    mc.maskcut(features, n_cuts=2, tau=0.15, eps=1e-5)
    taken = np.zeros(shape, bool)
    taken[1:5, 1:5] = True
    zeroed = np.where(taken[..., None], 0.0, features)
    np.testing.assert_array_equal(seen[1], tokencut_affinity(zeroed, tau=0.15, eps=1e-5))


def test_min_score_stops_before_the_first_weak_cut():
    features, _ = scene(16, 16, [(2, 7, 2, 8), (9, 14, 9, 15)], seed=5)
    every = mc.maskcut(features, n_cuts=4)
    scores = [cut.score for cut in every]
    assert scores[0] > 0.9 and scores[1] > 0.9 and scores[2] < 0.5  # two objects, then background
    stopped = mc.maskcut(features, n_cuts=4, min_score=0.7)
    assert len(stopped) == 2
    assert mc.maskcut(features, n_cuts=4, min_score=scores[0] + 1e-9) == []


def test_cut_score_and_bad_arguments():
    assert mc.cut_score([0.0, 0.2, 0.9]) == pytest.approx(0.8)
    assert mc.cut_score([0.0, 1.3, 1.4]) == 0.0
    assert mc.cut_score([0.0]) == 0.0
    features = np.ones((4, 4, 3), np.float32)
    for kwargs, name in [
        ({"n_cuts": 0}, "n_cuts"),
        ({"tau": 1.5}, "tau"),
        ({"eps": 0.0}, "eps"),
        ({"min_score": 2.0}, "min_score"),
        ({"solver": "qr"}, "solver"),
    ]:
        with pytest.raises(ValueError, match=name):
            mc.maskcut(features, **kwargs)
    with pytest.raises(ValueError, match="features"):
        mc.maskcut(np.ones((4, 4)))
