"""MaskCut (CutLER, Wang et al., CVPR 2023): several objects per image by repeated normalised cuts.

The recipe as the authors' code does it (facebookresearch/CutLER, ``maskcut/maskcut.py``:
``maskcut_forward``, commit cca0a27, with TokenCut's ``detect_box`` and ``metric.IoU``),
on one image's patch grid ``(h, w)``:

1. **Graph**: TokenCut's binary affinity (:func:`deepspectral.recipes.tokencut.tokencut_affinity`)
   at ``tau`` = 0.15: 1 where the cosine of two patches' keys exceeds ``tau``, else ``eps``.
2. **Cut** ``i = 0, 1, ... N-1``: the second-smallest generalised eigenvector of
   ``(D − A) y = λ D y``, split at its mean. **Side rule** (:func:`orient`): when at least
   3 of the 4 grid corners are on the ``> mean`` side the split is reversed (the object
   rarely holds three corners); otherwise the side holding the seed (largest ``|y|``) is
   the foreground. The object is the foreground's 4-connected component holding the seed
   (the reversed case: the seed is the smallest ``y``), as TokenCut's ``detect_box``.
3. **Taken patches**: the patches of every kept object have their features *zeroed* for
   the next cuts, not removed: a zero feature's cosine with anything is 0, so its node
   keeps every edge at ``eps`` (:func:`take_patches`) and still takes part in the mean of
   the split.
4. **Drop rules** (from the second cut on): a new object is dropped (an empty mask, and
   nothing more is taken) when its IoU with the previous cut's object exceeds 0.5 or it
   covers at most 1 % of the grid. The previous object is the previous cut's *after* its
   own drop rule, so a dropped cut is followed by the same graph, the same cut, and an IoU
   of 0 with the (empty) previous object: MaskCut then keeps it unless it is small.
5. **Earlier objects subtracted**: the mask of cut ``i`` is its object minus the objects of
   cuts ``0 … i−1``. (MaskCut subtracts after the nearest-neighbour upsampling to the image;
   nearest upsampling commutes with the subtraction, so it is done on the grid here.)

**Eigen-step.** MaskCut calls dense ``scipy.linalg.eigh(D − A, D, subset_by_index=[1, 2])``
per cut (a Cholesky reduction and a full tridiagonalisation, ``O(n³)``; minutes per image at
3,600 nodes). Here (``solver="lanczos"``) the package's eigensolver
(:func:`deepspectral.eigen.laplacian_eigenvectors`: Lanczos on ``D^-1/2 A D^-1/2`` with the
constant eigenvector deflated, products by BLAS ``symv`` on the float32 graph). The zeroed
patches sit at ``mean(y) / (1 − λ)``, only ``λ / (1 − λ)`` of the mean away from the split,
too close for a single-precision vector: their entries are set from the eigen-equation
instead (:func:`cut_eigenpairs`), exactly where the dense solver puts them. The Gram matrix of
the features is computed once for all cuts; a cut only overwrites the taken rows and
columns. ``solver="dense"`` is MaskCut's dense generalised ``eigh`` (for comparisons).

**Sign.** An eigenvector's sign is arbitrary, and MaskCut's corner rule depends on it when
the seed's side holds 3 or 4 corners (it takes the other side for one sign, the seed's for
the other; LAPACK's sign decides). With ``sign="seed"`` (default) the vector is oriented so
that the seed's value is positive first (:func:`orient`): the side with 3 corners is then
never the object, as the rule intends. With ``sign="lapack"`` such a cut (and only such a
cut: no other depends on the sign) also runs MaskCut's dense ``eigh(D − A, D,
subset_by_index=[1, 2])`` on the same graph and takes the side its sign gives
(:func:`lapack_sign_agrees`): CutLER's output on the machine it runs on, at the cost of one
dense solve per sign-dependent cut.

**Score** of a cut (:func:`cut_score`): ``1 − λ₁`` clipped to [0, 1], the complement of the
relaxed normalised-cut value of the split being made. Not :func:`deepspectral.recipes.scores.eigengap_score`:
with several distinct objects, every one of them is a cheap cut (``λ₁ ≈ λ₂ ≈ 0``), so the
eigengap is low exactly when there is much to find; ``1 − λ₁`` is near 1 for every
distinct object and falls once only the background (and the taken patches) remain.

This module is maths: arrays in, arrays out (numpy, scipy and the package's eigensolver).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import defaults
from ..eigen import laplacian_eigenvectors
from .tokencut import check_parameters, one_blas_thread_for, seed_component, tokencut_affinity

__all__ = [
    "NAME",
    "SOLVERS",
    "SIGNS",
    "lapack_sign_agrees",
    "CORNERS_TO_REVERSE",
    "OVERLAP_IOU",
    "MIN_AREA_FRACTION",
    "LANCZOS_TOL",
    "Cut",
    "check_cut_settings",
    "take_patches",
    "cut_eigenpairs",
    "cut_score",
    "count_corners",
    "orient",
    "mask_iou",
    "maskcut",
]

#: Name of the recipe.
NAME = "maskcut"
#: Eigen-steps of :func:`maskcut`: the package's Lanczos, or MaskCut's dense generalised ``eigh``.
SOLVERS = ("lanczos", "dense")
#: How the sign-dependent case of the corner rule is decided (module docstring, "Sign").
SIGNS = defaults.MASKCUT_SIGNS
#: MaskCut's ``check_num_fg_corners(...) >= 3``: the split is reversed.
CORNERS_TO_REVERSE = 3
#: MaskCut's ``metric.IoU(current_mask, pseudo_mask) > 0.5``: the new object is dropped.
OVERLAP_IOU = 0.5
#: MaskCut's ``ratio <= 0.01`` of the grid: the new object is dropped.
MIN_AREA_FRACTION = 0.01
#: Relative accuracy of the Lanczos eigenpairs (ARPACK ``tol``; single precision for the
#: float32 graph): ten times tighter than the single-cut recipes' 1e-5. Measured on a
#: 900-node photo graph: 1e-6 to 1e-10 all converge in about the same time.
LANCZOS_TOL = 1e-6
#: Eigenpairs per cut: the constant one and the cut's (the score needs λ₁ only).
_N_EIGENPAIRS = 2


@dataclass(frozen=True)
class Cut:
    """One normalised cut of :func:`maskcut`.

    Attributes
    ----------
    mask : (h, w) bool
        The object on the patch grid minus the objects of earlier cuts (empty when dropped).
    region : (h, w) bool
        The object before the subtraction (empty when dropped): what the next cuts zero.
    candidate : (h, w) bool
        The seed's component before the drop rules.
    dropped : str or None
        ``"overlap"`` (IoU > 0.5 with the previous object), ``"small"`` (≤ 1 % of the grid)
        or None.
    eigenvalues : (2,) float64
        The cut's two smallest generalised eigenvalues, ascending (the first 0).
    vector : (h, w) float32
        The oriented second eigenvector (the foreground side above its mean).
    seed : int
        Flat index of the seed patch.
    score : float
        :func:`cut_score`.
    reversed : bool
        The corner rule reversed the split (the seed's side held 3 or 4 corners): the case
        where MaskCut's own choice depends on its solver's sign (module docstring).
    """

    mask: np.ndarray
    region: np.ndarray
    candidate: np.ndarray
    dropped: str | None
    eigenvalues: np.ndarray
    vector: np.ndarray
    seed: int
    score: float
    reversed: bool = False


def check_cut_settings(*, n_cuts, tau, eps, min_score, solver, sign=defaults.MASKCUT_SIGN) -> None:
    """Raise ``ValueError`` naming the argument when a setting of :func:`maskcut` is invalid."""
    check_parameters(tau=tau, eps=eps)
    if isinstance(n_cuts, bool) or not isinstance(n_cuts, (int, np.integer)) or n_cuts < 1:
        raise ValueError(f"n_cuts: expected an integer >= 1, got {n_cuts!r}")
    if min_score is not None and (
        isinstance(min_score, bool) or not isinstance(min_score, (int, float, np.integer, np.floating)) or not 0 <= min_score <= 1
    ):
        raise ValueError(f"min_score: expected None or a number in [0, 1], got {min_score!r}")
    if solver not in SOLVERS:
        raise ValueError(f"solver: expected one of {SOLVERS}, got {solver!r}")
    if sign not in SIGNS:
        raise ValueError(f"sign: expected one of {SIGNS}, got {sign!r}")


def take_patches(affinity: np.ndarray, taken: np.ndarray, *, tau: float, eps: float) -> np.ndarray:
    """The affinity after zeroing the features of the ``taken`` patches.

    Parameters
    ----------
    affinity : (n, n) float
        :func:`~deepspectral.recipes.tokencut.tokencut_affinity` of the features.
    taken : (n,) bool
        Patches whose features are zeroed.
    tau, eps : float
        The graph's threshold and small weight.

    Returns
    -------
    (n, n) same dtype
        A copy; the rows and columns of ``taken`` hold the weight of a zero feature's cosine
        (0): ``eps`` when ``0 <= tau`` (MaskCut's ``A > tau``), else 1.
    """
    out = np.array(affinity, copy=True)
    taken = np.asarray(taken, dtype=bool).reshape(-1)
    value = 1.0 if 0.0 > tau else eps
    out[taken, :] = value
    out[:, taken] = value
    return out


def cut_eigenpairs(
    affinity: np.ndarray, *, taken: np.ndarray | None = None, solver: str = "lanczos"
) -> tuple[np.ndarray, np.ndarray]:
    """The two smallest eigenpairs of ``(D − A) y = λ D y`` (the constant one and the cut's).

    Parameters
    ----------
    affinity : (n, n) float32 or float64
        Symmetric, positive (every entry at least ``eps``).
    taken : (n,) bool, optional
        Patches whose rows and columns are constant (zeroed features, :func:`take_patches`).
        With ``solver="lanczos"`` their entries of the cut's vector are set to the value the
        eigen-equation gives them, ``Σ_{j not taken} y_j / (n (1 − λ) − k)`` (``k`` taken):
        identical rows make them equal, and ``(D − A) y = λ D y`` on such a row reads
        ``n y_z − Σ_j y_j = λ n y_z``. Their side of the split (``y_z > mean(y)`` exactly when
        ``λ y_z > 0``) then does not hang on the last digits of the solver.
    solver : {"lanczos", "dense"}
        ``"lanczos"``: :func:`deepspectral.eigen.laplacian_eigenvectors` (in the affinity's
        dtype: float32 for TokenCut's graph) at :data:`LANCZOS_TOL`, with one BLAS thread on
        small graphs (:func:`~deepspectral.recipes.tokencut.one_blas_thread_for`); ``"dense"``: MaskCut's
        ``scipy.linalg.eigh(D − A, D)`` in float64.

    Returns
    -------
    eigenvalues : (2,) float64
        Ascending (one when ``n == 1``).
    eigenvectors : (2, n) float64
        ``D``-orthonormal; row 1 is the cut's vector (sign arbitrary).
    """
    if solver not in SOLVERS:
        raise ValueError(f"solver: expected one of {SOLVERS}, got {solver!r}")
    n = affinity.shape[0]
    k = min(_N_EIGENPAIRS, n)
    if solver == "dense":
        import scipy.linalg

        matrix = np.asarray(affinity, dtype=np.float64)
        degree = np.diag(matrix.sum(axis=1))
        values, vectors = scipy.linalg.eigh(degree - matrix, degree, subset_by_index=[0, k - 1])
        return values, vectors.T
    with one_blas_thread_for(n):
        values, vectors = laplacian_eigenvectors(affinity, k, tol=LANCZOS_TOL)
    vectors = vectors.astype(np.float64)
    if taken is not None and k > 1:
        taken = np.asarray(taken, dtype=bool).reshape(-1)
        count = int(taken.sum())
        denominator = n * (1.0 - values[1]) - count
        if 0 < count < n and denominator != 0:
            vectors[1, taken] = vectors[1, ~taken].sum() / denominator
    return values, vectors


def cut_score(eigenvalues: np.ndarray) -> float:
    """``1 − λ₁`` clipped to [0, 1] from a cut's ascending eigenvalues (0 with fewer than 2)."""
    values = np.asarray(eigenvalues, dtype=np.float64).reshape(-1)
    if values.size < 2 or not np.isfinite(values[1]):
        return 0.0
    return float(np.clip(1.0 - values[1], 0.0, 1.0))


def count_corners(split: np.ndarray) -> int:
    """How many of the 4 corners of an ``(h, w) bool`` grid are True."""
    split = np.asarray(split, dtype=bool)
    return int(split[0, 0]) + int(split[0, -1]) + int(split[-1, 0]) + int(split[-1, -1])


def orient(vector: np.ndarray) -> tuple[np.ndarray, int, np.ndarray]:
    """MaskCut's side rule on the second eigenvector.

    Parameters
    ----------
    vector : (h, w) float
        The cut's eigenvector (any sign).

    Returns
    -------
    foreground : (h, w) bool
        The object's side of the split at the mean.
    seed : int
        Flat index of the seed: the largest value of the oriented vector (the largest
        ``|y|`` unless the split was reversed by the corner rule).
    oriented : (h, w) float
        ``vector`` signed so that ``foreground`` is its ``> mean`` side.

    Notes
    -----
    The vector is first signed so that its largest ``|y|`` is positive; then, as MaskCut,
    the ``> mean`` side is reversed when it holds at least :data:`CORNERS_TO_REVERSE`
    corners, else kept (it holds the seed).
    """
    values = np.asarray(vector, dtype=np.float64)
    if values.ndim != 2 or values.size == 0 or not np.all(np.isfinite(values)):
        raise ValueError(f"vector: expected a non-empty (h, w) array of finite values, got shape {values.shape}")
    flat = values.reshape(-1)
    if flat[int(np.argmax(np.abs(flat)))] < 0:
        values = -values
        flat = values.reshape(-1)
    split = values > flat.sum() / flat.size
    if count_corners(split) >= CORNERS_TO_REVERSE:
        values = -values
        split = ~split
    return split, int(np.argmax(values.reshape(-1))), values


def _reversed_by_corners(vector: np.ndarray) -> bool:
    """Whether :func:`orient` reverses the seed's side of ``vector`` (3 or 4 corners)."""
    values = np.asarray(vector, dtype=np.float64)
    if values.reshape(-1)[int(np.argmax(np.abs(values)))] < 0:
        values = -values
    return count_corners(values > values.mean()) >= CORNERS_TO_REVERSE


def lapack_sign_agrees(affinity: np.ndarray, vector: np.ndarray, *, eps: float) -> bool:
    """Whether the cut's eigenvector as MaskCut's solver signs it points the way of ``vector``.

    MaskCut's solver is ``scipy.linalg.eigh(D − A, D, subset_by_index=[1, 2])`` on its
    float64 binary graph (1 or ``eps``); ``affinity`` is rebuilt as that graph (its entries
    are 1 or ``eps``, possibly in float32) before the call.

    Parameters
    ----------
    affinity : (n, n) float
        The cut's graph (:func:`take_patches` applied).
    vector : (n,) float
        The cut's eigenvector in some sign.
    eps : float
        The graph's weight of the unrelated pairs.

    Returns
    -------
    bool
        ``True`` when LAPACK's vector has a positive dot product with ``vector``.
    """
    import scipy.linalg

    graph = np.where(np.asarray(affinity) >= 1.0, 1.0, float(eps))
    degree = np.diag(graph.sum(axis=1))
    _, vectors = scipy.linalg.eigh(degree - graph, degree, subset_by_index=[1, 2])
    return bool(vectors[:, 0] @ np.asarray(vector, dtype=np.float64).reshape(-1) > 0)


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two boolean masks; NaN when both are empty (as TokenCut's ``metric.IoU``:
    0 / 0, which no ``>`` or ``<`` comparison passes)."""
    a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    union = int(np.logical_or(a, b).sum())
    if union == 0:
        return float("nan")
    return float(np.logical_and(a, b).sum() / union)


def maskcut(
    features: np.ndarray,
    *,
    n_cuts: int = defaults.MAX_OBJECTS,
    tau: float = defaults.MASKCUT_TAU,
    eps: float = defaults.TOKENCUT_EPS,
    min_score: float | None = None,
    solver: str = "lanczos",
    sign: str = defaults.MASKCUT_SIGN,
) -> list[Cut]:
    """MaskCut's repeated normalised cut on one patch grid.

    Parameters
    ----------
    features : (h, w, C) float
        Patch features (keys of the last block; not normalised).
    n_cuts : int >= 1, default 3
        Cuts made (MaskCut's ``N``): the most objects found.
    tau : float, default 0.15
        Cosine threshold of the binary graph.
    eps : float, default 1e-5
        Weight of the other pairs.
    min_score : float in [0, 1] or None
        Stop before the first cut whose :func:`cut_score` is below it (None: make all
        ``n_cuts``).
    solver : {"lanczos", "dense"}
        The eigen-step (:func:`cut_eigenpairs`).
    sign : {"seed", "lapack"}
        How a cut whose side depends on the eigenvector's sign is decided (module
        docstring, "Sign").

    Returns
    -------
    list of Cut
        One per cut made, in order (a dropped cut has empty masks). Fewer than ``n_cuts``
        when ``min_score`` stopped it or every patch was taken.
    """
    check_cut_settings(n_cuts=n_cuts, tau=tau, eps=eps, min_score=min_score, solver=solver, sign=sign)
    grid_features = np.asarray(features)
    if grid_features.ndim != 3 or min(grid_features.shape) < 1:
        raise ValueError(f"features: expected a non-empty (h, w, C) array, got shape {grid_features.shape}")
    grid = grid_features.shape[:2]
    n = grid[0] * grid[1]
    base = tokencut_affinity(grid_features, tau=tau, eps=eps)  # the Gram matrix, once
    taken = np.zeros(grid, dtype=bool)  # MaskCut's "painting"
    covered = np.zeros(grid, dtype=bool)  # union of the kept objects (what is subtracted)
    previous = None  # MaskCut's "current_mask"
    cuts: list[Cut] = []
    for index in range(int(n_cuts)):
        if taken.all():
            break
        affinity = take_patches(base, taken, tau=tau, eps=eps) if taken.any() else base
        values, vectors = cut_eigenpairs(affinity, taken=taken.reshape(-1), solver=solver)
        score = cut_score(values)
        if min_score is not None and score < min_score:
            break
        if vectors.shape[0] < 2:  # a one-patch grid: the patch is the object
            split, seed, oriented, flipped = np.ones(grid, dtype=bool), 0, np.zeros(grid), False
        else:
            split, seed, oriented = orient(vectors[1].reshape(grid))
            flipped = _reversed_by_corners(vectors[1].reshape(grid))
            if flipped and sign == "lapack" and lapack_sign_agrees(affinity, oriented, eps=eps):
                # LAPACK's sign is the opposite of the seed's: MaskCut's corner rule does
                # not fire and its seed rule keeps the seed's side
                oriented = -oriented
                split = oriented > oriented.mean()
                seed = int(np.argmax(oriented.reshape(-1)))
        candidate = seed_component(split, seed)
        dropped = None
        if index >= 1:
            if mask_iou(previous, candidate) > OVERLAP_IOU:
                dropped = "overlap"
            elif candidate.sum() / n <= MIN_AREA_FRACTION:
                dropped = "small"
        region = np.zeros(grid, dtype=bool) if dropped else candidate
        previous = region
        taken |= region
        mask = region & ~covered
        covered |= region
        cuts.append(
            Cut(
                mask=mask,
                region=region,
                candidate=candidate,
                dropped=dropped,
                eigenvalues=np.asarray(values, dtype=np.float64),
                vector=oriented.astype(np.float32),
                seed=seed,
                score=score,
                reversed=flipped,
            )
        )
    return cuts
