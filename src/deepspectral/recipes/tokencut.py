"""TokenCut (Wang et al., CVPR 2022 / TPAMI 2023): a normalised cut on the patch grid.

The recipe, as the authors' code does it (YangtaoWANG95/TokenCut, ``object_discovery.py``:
``ncut`` and ``detect_box``; the saliency variant in
``unsupervised_saliency_detection/``):

1. **Graph** (:func:`tokencut_affinity`): one node per patch of the backbone's grid (no
   upsampling, no colour term); the features (keys of the last block, all heads
   concatenated, class token dropped) are L2-normalised per patch, and the affinity is
   binary: ``A_ij = 1`` where the cosine exceeds ``tau`` (0.2), else ``eps`` (1e-5), the
   diagonal included.
2. **Eigenvector** (:func:`second_eigenvector`): the second-smallest generalised
   eigenvector of ``(D - A) y = λ D y``. The authors call dense
   ``scipy.linalg.eigh(D - A, D, subset_by_index=[1, 2])`` (a Cholesky factorisation of
   ``D`` and a full tridiagonalisation, ``O(n³)``); here the package's eigensolver
   (:func:`deepspectral.eigen.laplacian_eigenvectors`: Lanczos on ``D^-1/2 A D^-1/2`` with
   the known top eigenvector deflated, dense ``eigh`` below 400 nodes) returns the same
   eigenpairs from matrix-vector products.
3. **Bipartition** (:func:`bipartition`): the eigenvector split at its mean; the seed is
   the patch with the largest ``|value|``; when the seed is not on the ``> mean`` side the
   vector and the split are flipped, so the foreground is the side holding the seed.
4. **Object** (:func:`seed_component`): the 4-connected component of the foreground that
   holds the seed (``scipy.ndimage.label``'s default structure, as the authors'). The box
   is its bounding box in patches, ``[xmin·P, ymin·P, (xmax+1)·P, (ymax+1)·P]`` clipped to
   the image (:func:`box`); the saliency mask is the component itself, upsampled with
   torch's ``"nearest"`` rule (:func:`mask`).

How the image meets the grid is not part of the maths but decides parity (see
:mod:`deepspectral.geometry`): for boxes TokenCut zero-pads the normalised image at the
bottom / right to a multiple of P (``fit="pad"``), for its saliency masks it resizes the
image (Lanczos) to the nearest multiple (``fit="resize"``).

**Threads.** The eigensolver of a graph of up to :data:`ONE_BLAS_THREAD_MAX_NODES` patches
runs with one BLAS thread (:func:`one_blas_thread_for`). numpy and scipy each bring their
own OpenBLAS, each with a pool of threads that spin for a while after a call: the Gram
matrix (numpy's, two threads, the faster there) followed by the Lanczos products (scipy's)
put three or four busy threads on two cores.

This module is maths: arrays in, arrays out (numpy, scipy and the package's eigensolver).
"""

from __future__ import annotations

import contextlib

import numpy as np

from .. import defaults
from ..eigen import laplacian_eigenvectors
from ..features import PatchFeatures
from ..spectral import Decomposition, single_threaded_blas

__all__ = [
    "NAME",
    "N_EIGENVECTORS",
    "check_parameters",
    "decomposition_from_eigenpairs",
    "tokencut_affinity",
    "second_eigenvector",
    "bipartition",
    "seed_component",
    "decompose",
    "ONE_BLAS_THREAD_MAX_NODES",
    "one_blas_thread_for",
    "foreground",
    "box_on_grid",
    "box",
    "mask",
]

#: Name of the recipe in :data:`deepspectral.recipes.METHODS` and in ``Decomposition.settings``.
NAME = "tokencut"
#: Eigenpairs kept: the constant one, the second (the cut) and the third (whose eigenvalue
#: the score compares with the second's, see :mod:`deepspectral.recipes.scores`).
N_EIGENVECTORS = 3
#: The eigensolver of binary graphs of up to this many patches runs with one BLAS thread
#: (:func:`one_blas_thread_for`; the Gram matrix keeps the caller's threads). Measured on
#: the 2-vCPU build machine (random-weight ViT-S/16 keys of one DAVIS photo resized, best of
#: 5-15 runs, twice each way), default two threads against one for the eigensolver: TokenCut
#: (graph, eigenpairs, box) at 294 / 900 / 1,600 / 2,025 / 3,600 patches 7.2 / 7.3 / 32.8 /
#: 63.3 / 176.2 ms against 5.2 / 7.8 / 26.3 / 37.7 / 127.0; MaskCut's three cuts 23.2 /
#: 20.7 / 57.2 / 107.4 / 283.6 against 13.3 / 14.0 / 40.8 / 61.6 / 263.0. The paper's
#: recipe (larger graphs, numba kernels) is slower with one thread and keeps both.
ONE_BLAS_THREAD_MAX_NODES = 4096
#: Floor of the feature norm in the L2 normalisation (``torch.nn.functional.normalize``'s).
_NORM_FLOOR = 1e-12


def check_parameters(*, tau: float, eps: float) -> None:
    """Raise ``ValueError`` naming the argument when ``tau`` or ``eps`` is invalid:
    ``tau`` a finite cosine in ``[-1, 1)``, ``eps`` finite and in ``(0, 1)`` (a zero weight
    could disconnect the graph; 1 would erase the split)."""
    if isinstance(tau, bool) or not isinstance(tau, (int, float, np.floating, np.integer)) or not np.isfinite(tau) or not -1 <= tau < 1:
        raise ValueError(f"tau: expected a cosine threshold in [-1, 1), got {tau!r}")
    if isinstance(eps, bool) or not isinstance(eps, (int, float, np.floating, np.integer)) or not np.isfinite(eps) or not 0 < eps < 1:
        raise ValueError(f"eps: expected an edge weight in (0, 1), got {eps!r}")


def tokencut_affinity(
    features: np.ndarray, *, tau: float = defaults.TOKENCUT_TAU, eps: float = defaults.TOKENCUT_EPS
) -> np.ndarray:
    """TokenCut's binary affinity of the patches.

    Parameters
    ----------
    features : (h, w, C) or (n, C) float
        Patch features (not normalised).
    tau : float, default 0.2
        Cosine threshold: an edge of weight 1 where ``cos > tau``.
    eps : float, default 1e-5
        Weight of every other pair.

    Returns
    -------
    (n, n) float32
        Symmetric, 1 on the diagonal (for a non-zero feature), entries in ``{eps, 1}``.
    """
    check_parameters(tau=tau, eps=eps)
    f = np.asarray(features, dtype=np.float32)
    f = f.reshape(-1, f.shape[-1])
    f = f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), _NORM_FLOOR)
    # the Gram matrix (BLAS gemm; syrk, half the products, measured slower in OpenBLAS)
    # is most of the graph's cost; then 0/1 -> eps/1 in one pass (3x faster than np.where)
    affinity = (f @ f.T > np.float32(tau)).astype(np.float32)
    np.maximum(affinity, np.float32(eps), out=affinity)
    return affinity


def one_blas_thread_for(n_nodes: int):
    """Context for the eigensolver of a binary graph of ``n_nodes`` patches: one BLAS
    thread up to :data:`ONE_BLAS_THREAD_MAX_NODES` nodes
    (:func:`deepspectral.spectral.single_threaded_blas`), the caller's setting above."""
    return single_threaded_blas() if n_nodes <= ONE_BLAS_THREAD_MAX_NODES else contextlib.nullcontext()


def second_eigenvector(affinity: np.ndarray, n_eigenvectors: int = N_EIGENVECTORS) -> tuple[np.ndarray, np.ndarray]:
    """Smallest eigenpairs of ``(D - A) y = λ D y`` (the constant one first).

    Parameters
    ----------
    affinity : (n, n) float32 or float64
        Symmetric, non-negative (e.g. :func:`tokencut_affinity`).
    n_eigenvectors : int, default 3
        Eigenpairs returned (capped at ``n``).

    Returns
    -------
    eigenvalues : (K,) float64
        Ascending, the first 0.
    eigenvectors : (K, n) float32
        ``D``-orthonormal; row 1 is TokenCut's vector (sign not fixed: see :func:`bipartition`).
    """
    with one_blas_thread_for(len(affinity)):
        return laplacian_eigenvectors(affinity, n_eigenvectors)


def bipartition(vector: np.ndarray) -> tuple[np.ndarray, int, np.ndarray]:
    """TokenCut's split of its eigenvector.

    Parameters
    ----------
    vector : (...) float
        The second-smallest eigenvector (any sign).

    Returns
    -------
    foreground : (...) bool
        ``vector > mean(vector)``, complemented when the seed is not in it.
    seed : int
        Flat index of the largest ``|value|`` (the first one on ties, as ``np.argmax``).
    oriented : (...) same dtype
        ``vector``, negated when the split was flipped (the seed then has a value above the mean).
    """
    values = np.asarray(vector)
    flat = values.reshape(-1).astype(np.float64)
    if flat.size == 0 or not np.all(np.isfinite(flat)):
        raise ValueError("vector: expected a non-empty array of finite values")
    split = flat > flat.sum() / flat.size
    seed = int(np.argmax(np.abs(flat)))
    oriented = values
    if not split[seed]:
        split = ~split
        oriented = -values
    return split.reshape(values.shape), seed, oriented


def seed_component(foreground: np.ndarray, seed: int) -> np.ndarray:
    """The 4-connected component of ``foreground`` ``(h, w) bool`` holding the flat index
    ``seed`` (an empty mask when the seed is not in the foreground)."""
    from scipy import ndimage

    foreground = np.asarray(foreground, dtype=bool)
    if foreground.ndim != 2:
        raise ValueError(f"foreground: expected shape (h, w), got {foreground.shape}")
    if not 0 <= seed < foreground.size:
        raise ValueError(f"seed: expected a flat index in [0, {foreground.size}), got {seed!r}")
    labels, _ = ndimage.label(foreground)
    label = labels.reshape(-1)[seed]
    if label == 0:
        return np.zeros_like(foreground)
    return labels == label


def decompose(
    features: PatchFeatures,
    image=None,
    *,
    tau: float = defaults.TOKENCUT_TAU,
    eps: float = defaults.TOKENCUT_EPS,
) -> Decomposition:
    """TokenCut's eigenvectors of one image on its patch grid.

    Parameters
    ----------
    features : PatchFeatures
        Keys of the last block (:meth:`deepspectral.Backbone.extract`, the default
        ``block`` and ``feature``), extracted with ``fit="pad"`` for boxes or
        ``fit="resize"`` for saliency masks, or oracle features.
    image : ignored
        Accepted so that every recipe is called alike (TokenCut's graph has no colour term).
    tau, eps : float
        See :func:`tokencut_affinity`.

    Returns
    -------
    Decomposition
        ``eigenvectors`` ``(3, h, w) float32`` on the patch grid: the constant one, the
        oriented second eigenvector (the seed's side above its mean) and the third;
        ``crop_size`` the area the grid covers; ``settings`` record ``method="tokencut"``,
        ``tau``, ``eps`` and where the features come from.
    """
    if not isinstance(features, PatchFeatures):
        raise ValueError(f"features: expected PatchFeatures, got {type(features).__name__}")
    check_parameters(tau=tau, eps=eps)
    affinity = tokencut_affinity(features.features, tau=tau, eps=eps)
    eigenvalues, eigenvectors = second_eigenvector(affinity)
    return decomposition_from_eigenpairs(features, eigenvalues, eigenvectors, tau=tau, eps=eps)


def decomposition_from_eigenpairs(
    features: PatchFeatures, eigenvalues: np.ndarray, eigenvectors: np.ndarray, *, tau: float, eps: float, **settings
) -> Decomposition:
    """The :class:`Decomposition` of TokenCut's eigenpairs ``(K,)`` / ``(K, h·w)`` of
    ``features``' grid (any eigensolver): the second eigenvector oriented by
    :func:`bipartition`, the settings recorded (``settings`` adds entries)."""
    eigenvectors = eigenvectors.reshape(-1, *features.grid_size)
    if len(eigenvectors) > 1:
        _, _, eigenvectors[1] = bipartition(eigenvectors[1])
    settings = {
        "method": NAME,
        "backbone": features.backbone,
        "block": features.block,
        "feature": features.feature,
        "tau": float(tau),
        "eps": float(eps),
        **settings,
    }
    return Decomposition(
        eigenvalues=np.ascontiguousarray(eigenvalues),
        eigenvectors=np.ascontiguousarray(eigenvectors, dtype=np.float32),
        image_size=tuple(features.image_size),
        input_size=tuple(features.input_size),
        crop_size=tuple(features.crop_size),
        patch_size=features.patch_size,
        settings=settings,
    )


def foreground(decomposition: Decomposition) -> np.ndarray:
    """The object on the patch grid: the seed's 4-connected component of the
    bipartition, ``(h, w) bool`` (the whole grid when it has a single patch)."""
    if decomposition.eigenvectors.shape[0] < 2:
        return np.ones(decomposition.grid_size, dtype=bool)
    split, seed, _ = bipartition(decomposition.eigenvectors[1])
    return seed_component(split, seed)


def box_on_grid(decomposition: Decomposition) -> tuple[int, int, int, int]:
    """The object's box in patches ``(xmin, ymin, xmax + 1, ymax + 1)``."""
    from ..geometry import mask_to_box

    found = mask_to_box(foreground(decomposition))
    assert found is not None  # the seed is always in its own component
    return found


def box(decomposition: Decomposition) -> tuple[int, int, int, int]:
    """TokenCut's box ``(x1, y1, x2, y2)`` in pixels of the original image (``x2``, ``y2``
    exclusive): the patch box times P, clipped to the input image, then scaled to the
    original when a ``max_size`` resize happened."""
    geometry = decomposition.geometry
    grid = decomposition.grid_size
    return tuple(int(v) for v in geometry.grid_boxes_to_image([box_on_grid(decomposition)], grid_size=grid)[0])


def mask(decomposition: Decomposition) -> np.ndarray:
    """TokenCut's saliency mask ``(H, W) bool`` on the original image: the seed's
    component upsampled with torch's ``"nearest"`` rule (``src = floor(i · h / H)``)."""
    return decomposition.geometry.grid_to_image(foreground(decomposition), rule="floor")
