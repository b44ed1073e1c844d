"""Image matting (paper Sec. 4.4): soft alpha mattes and soft layers from the eigenvectors.

Two modes compute the same kind of result, an alpha matte of the main object at the
original image size (and, with ``n_layers``, soft layers that sum to 1). Both work on the
input image the features saw (the original brought down to ``max_size``, cropped to a
multiple of the patch size) and resize the results back to the original pixels, the
cropped right/bottom strips taking the values of the last row / column:

``"full"`` — the paper's recipe
    The decomposition of Sec. 3.2 at *full* resolution of the (cropped) input image:
    features bilinearly upsampled from the patch grid to every pixel, ``W_feat`` sparsified
    by keeping a seeded random ``sample_rate`` (default 1/256 = 1/16²) of its entries, plus
    ``λ_knn · W_knn`` (the KNN colour affinity of the full-resolution image). The dense
    ``N × N`` matrix is never formed: pairs ``(i, j)``, ``i < j``, are drawn row by row
    (``Binomial(N - 1 - i, rate)`` partners ``j > i`` for row ``i``, drawn uniformly with
    replacement: a pair drawn twice counts twice, which at rate 1/256 concerns about 0.2 %
    of the entries) and only their affinities
    ``max(f_i · f_j, 0)`` are computed, through the exact identity
    ``f_i · f_j = Σ_a Σ_b u_ia u_jb G[p_ia, p_jb]`` (``u``/``p``: the 4 bilinear taps of a
    pixel, ``G``: the Gram matrix of the L2-normalised patch features). The sampled
    entries are *not* rescaled (as in the paper). The eigenvectors of the normalised
    Laplacian (``D^-1/2 W D^-1/2`` with the constant eigenvector deflated) come from block
    LOBPCG started from the 1/8-grid eigenvectors upsampled (``solver="lobpcg"``, default;
    a few dozen passes over the matrix) or from cold-start Lanczos (``"lanczos"``, several
    hundred passes). They give soft layers by *spectral matting* (below); the alpha matte
    is the layer grown from the object side (:func:`foreground_side`) of the Fiedler
    vector's sign.
    **Scaling**: 1/256 of ``N²`` grows quadratically (a 500 × 375 photo: 1.4e8 entries; a
    megapixel: 4e9). Above ``FULL_MAX_PARTNERS · 256 ≈ 197k`` pixels the expected number of
    random feature partners per pixel is fixed at ``FULL_MAX_PARTNERS`` = 768 instead
    (:func:`full_sample_rate`): memory and time then grow linearly, about 3 KB per pixel.
    ``max_pixels`` additionally downscales the crop before the decomposition. The paper
    itself notes that its full-resolution eigenproblem takes "around 1 min on 100 CPUs".

``"fast"`` — eigenvectors on the 1/8 grid, then guided feathering (the default)
    :func:`deepspectral.decompose` on the working grid (as for segmentation); the cells,
    ordered by the Fiedler vector, are split where the normalised cut of
    ``W_feat + SPLIT_KNN_LAMBDA · W_knn`` is smallest (Shi & Malik's splitting point,
    :func:`deepspectral.spectral.ncut_sweep`, not at 0: for a small object the zero
    threshold takes in its colour neighbours as well; with the full colour weight in the
    cut the cheapest split often separates a differently coloured part of the object),
    the object side of the split (:func:`foreground_side`) is upsampled to the input
    image and refined by a colour guided filter (:func:`guided_filter`, radius one grid
    cell): the edges move onto the colour edges and stay soft where colours mix. With
    ``n_layers`` the layers are computed on the grid by spectral matting, upsampled
    bilinearly, refined the same way and renormalised to sum to 1. (On 60 photos with
    8-px oracle features and the same coarse masks: guided filter 0.905 mean IoU, a
    trimap (8-px band) with a KNN-matting solve 0.865, PyMatting's
    closed-form matting on trimaps with a 4-px / 8-px band 0.903 / 0.880.)

**Spectral matting layers** (after Levin, Rav-Acha & Lischinski 2008, simplified): the
``K`` eigenvectors span a smooth, edge-aware subspace that contains the constant vector.
Starting from a hard partition (seeded k-means++ on the rows of the eigenvector matrix,
or a given labelling), the layers alternate between the orthogonal projection onto that
subspace and the projection onto the probability simplex per pixel (clip to ``[0, 1]``,
renormalise to sum 1). Because the constant vector lies in the subspace, the projection
keeps the sum at 1; the result is non-negative, sums to 1 at every pixel and is soft
only where the eigenvectors are. This replaces Levin et al.'s Newton iterations on a
sparsity prior with a projection scheme that needs no tuning.

Cut-outs (:func:`cutout_rgba`) and composites (:func:`composite`) use foreground colours
decontaminated by :func:`estimate_foreground` (blur-fusion), so soft edges carry no halo
of the old background.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import scipy.linalg.blas
import scipy.sparse
import scipy.sparse.linalg

from .. import defaults
from ..affinity import bilinear_taps, knn_affinity, linear_taps, resize_bilinear
from ..data.images import as_rgb_array, resize_image
from ..features import PatchFeatures
from ..spectral import Decomposition, decompose, grid_affinity, ncut_sweep, orient_eigenvectors

__all__ = [
    "MATTING_MODES",
    "MATTING_MODE",
    "FEATURE_SAMPLE_RATE",
    "FULL_MAX_PARTNERS",
    "FULL_SOLVERS",
    "FULL_LOBPCG_TOL",
    "full_sample_rate",
    "SPLIT_KNN_LAMBDA",
    "GUIDED_RADIUS",
    "GUIDED_EPS",
    "Matte",
    "matte",
    "SparseAffinity",
    "full_resolution_affinity",
    "sparse_laplacian_eigenvectors",
    "matting_layers",
    "guided_filter",
    "foreground_side",
    "estimate_foreground",
    "cutout_rgba",
    "composite",
]

#: Matting modes: ``"fast"`` (grid eigenvectors + guided feathering) and
#: ``"full"`` (the paper's full-resolution sparse decomposition).
MATTING_MODES = ("fast", "full")
#: Default mode (see the module docstring and ``benchmarks/bench_matting.py``).
MATTING_MODE = "fast"
#: Share of the full-resolution feature affinity kept in ``"full"`` mode (paper: 1/16²).
FEATURE_SAMPLE_RATE = 1.0 / 256.0
#: ``"full"`` mode: expected random feature partners per pixel are capped at this (the
#: paper's 1/256 of a 500 x 375 photo's 187,500 pixels is 732), so larger images keep
#: memory and time linear in the pixels (see :func:`full_sample_rate`).
FULL_MAX_PARTNERS = 768
#: ``"full"`` mode eigensolvers (see :func:`matte`).
FULL_SOLVERS = ("lobpcg", "lanczos")
#: ``"full"`` mode LOBPCG residual tolerance. Against Lanczos at 1e-5 on the test scene it
#: gives the same eigenvalues to 3e-5 and alphas within 0.003 on average (0.03 at most);
#: against LOBPCG at 1e-3 it changed the alpha of 3 SOD photos (oracle features) by
#: 0.0013 on average and not their IoU, with 25-30 % fewer passes over the matrix.
FULL_LOBPCG_TOL = 3e-3
#: Extra vectors in the LOBPCG block beyond the K - 1 wanted (see
#: :func:`sparse_laplacian_eigenvectors`).
LOBPCG_GUARD = 3
#: ``"fast"`` mode: weight of the colour affinity in the normalised cut that picks where
#: the Fiedler vector (of ``W_feat + λ_knn W_knn``, λ_knn = 10) is split. With 10 the
#: cheapest cut often separates a differently coloured part of the object; with 0 the
#: split follows the patch grid only. Measured (oracle features, IoU after the guided
#: filter): 8-px patches, 60 SOD + DAVIS photos: 0.906 (10), 0.932 (0…3); 16-px patches:
#: 0.800 (10), 0.808 (0), 0.794 (2); the synthetic scene of the tests: 0.979 (10), 0.971
#: (2), 0.879 (0).
SPLIT_KNN_LAMBDA = 2.0
#: Radius (pixels of the input image) of the ``"fast"`` mode's guided filter: one cell of
#: the 1/8 working grid, as far as the coarse mask's edge can be off.
GUIDED_RADIUS = defaults.GRID_STRIDE
#: Ridge term of the guided filter (colours in [0, 1]); 1e-4…1e-2 (radius 6…8) gave the
#: same IoU within 0.005 on 60 photos with 8-px oracle features; smaller keeps edges sharper.
GUIDED_EPS = 1e-3
#: Iterations of the alternating projections of :func:`matting_layers`.
LAYER_ITERATIONS = 30


# ---------------------------------------------------------------------------------------
# Full-resolution sparse affinity
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SparseAffinity:
    """A symmetric sparse affinity ``W = S + Sᵀ + diag(s) + C`` stored without the dense matrix.

    ``S`` (the sampled feature affinities strictly above the diagonal) is stored in square
    tiles of ``PAIR_TILE`` pixels (see :mod:`deepspectral._kernels`): entry ``e`` of tile
    ``(a, b)`` (entries ``tile_ptr[a * T + b] : tile_ptr[a * T + b + 1]``, ``T`` tiles a
    side) is ``S[a · PAIR_TILE + rows[e], b · PAIR_TILE + cols[e]] = data[e]`` — 8 bytes an
    entry like CSR, and products whose memory accesses stay within the cache.

    Attributes
    ----------
    tile_ptr : (T * T + 1,) int64
    rows, cols : (E,) uint16
        Offsets of each sampled entry within its tile.
    data : (E,) float32
        ``max(f̂_i · f̂_j, 0)``; a pair drawn twice is stored twice.
    diagonal : (N,) float32
        Feature self-affinities ``max(f_i · f_i, 0)`` (``s``; not sampled).
    colour : (N, N) float32 CSR
        ``λ_knn · W_knn`` (``C``, symmetric), or an all-zero matrix when λ_knn = 0.
    size : (h, w)
        Pixel grid the nodes live on (row-major).
    """

    tile_ptr: np.ndarray
    rows: np.ndarray
    cols: np.ndarray
    data: np.ndarray
    diagonal: np.ndarray
    colour: scipy.sparse.csr_matrix
    size: tuple[int, int]

    @property
    def shape(self) -> tuple[int, int]:
        n = self.diagonal.shape[0]
        return (n, n)

    @property
    def tiles_per_side(self) -> int:
        """``T``, tiles along each side of the matrix."""
        return int(round(np.sqrt(self.tile_ptr.size - 1)))

    @property
    def nnz(self) -> int:
        """Stored entries (the upper part counts once)."""
        return int(self.data.size + self.colour.nnz + self.diagonal.size)

    @property
    def upper(self) -> scipy.sparse.csr_matrix:
        """``S`` as a CSR matrix (entries in drawing order per row, repeats kept apart)."""
        from .._kernels import PAIR_TILE

        n = self.shape[0]
        tiles = self.tiles_per_side
        tile_of_entry = np.repeat(np.arange(tiles * tiles), np.diff(self.tile_ptr))
        rows = (tile_of_entry // tiles) * PAIR_TILE + self.rows
        cols = (tile_of_entry % tiles) * PAIR_TILE + self.cols
        order = np.argsort(rows, kind="stable")
        indptr = np.zeros(n + 1, np.int64)
        np.cumsum(np.bincount(rows, minlength=n), out=indptr[1:])
        return scipy.sparse.csr_matrix((self.data[order], cols[order], indptr), shape=(n, n))

    def matmat(self, x: np.ndarray) -> np.ndarray:
        """``W @ x`` for ``x`` of shape ``(N,)`` or ``(N, m)``."""
        from .. import _kernels

        x = np.asarray(x, dtype=np.float32)
        x2 = np.ascontiguousarray(x.reshape(x.shape[0], -1))
        out = np.ascontiguousarray(self.colour @ x2, dtype=np.float32)
        out += self.diagonal[:, None] * x2
        # S + Sᵀ in one parallel pass over S, tile by tile (scipy would read it twice, on
        # one core, with cache misses at every entry); row tiles split by entry count
        tiles = self.tiles_per_side
        row_ends = self.tile_ptr[tiles :: tiles]  # entries before each row tile's end
        bounds = np.searchsorted(row_ends, np.linspace(0, self.data.size, _kernels.SPMM_PARTS + 1), side="left")
        bounds = np.minimum(np.maximum.accumulate(bounds), tiles).astype(np.int64)
        bounds[0], bounds[-1] = 0, tiles
        parts = np.empty((_kernels.SPMM_PARTS, *x2.shape), np.float32)
        _kernels.tiled_symmetric_spmm(self.tile_ptr, self.rows, self.cols, self.data, bounds, x2, parts)
        for part in parts:
            out += part
        return out.reshape(x.shape)

    def degree(self) -> np.ndarray:
        """Row sums ``W 1``, (N,) float64."""
        ones = np.ones(self.shape[0], np.float32)
        return self.matmat(ones).astype(np.float64)

    def to_csr(self) -> scipy.sparse.csr_matrix:
        """The whole matrix as one CSR (for tests on small images; doubles the memory)."""
        upper = self.upper
        full = upper + upper.T + self.colour + scipy.sparse.diags(self.diagonal)
        return full.tocsr()


def full_resolution_affinity(
    features: PatchFeatures | np.ndarray,
    image_full: np.ndarray,
    *,
    knn_lambda: float = defaults.KNN_LAMBDA,
    sample_rate: float = FEATURE_SAMPLE_RATE,
    knn_kernel: str = defaults.KNN_KERNEL,
    seed: int = 0,
) -> SparseAffinity:
    """Paper Sec. 4.4: ``W = sample(W_feat) + λ_knn · W_knn`` at the resolution of ``image_full``.

    Parameters
    ----------
    features : PatchFeatures or (h_p, w_p, C) float
        Patch features; L2-normalised on the patch grid, then (implicitly) bilinearly
        upsampled to the pixels of ``image_full`` (``align_corners=False``).
    image_full : (H, W, 3) float in [0, 1]
        The image the nodes are the pixels of (the cropped input, possibly downscaled).
    knn_lambda : float, default 10
        Weight of the colour affinity.
    sample_rate : float in (0, 1], default 1/256
        Expected share of the feature affinity's off-diagonal entries kept (symmetrically).
    knn_kernel : {"binary", "soft"}
    seed : int, default 0
        Seeds the sampled pairs.

    Returns
    -------
    SparseAffinity
        About ``sample_rate · N² / 2`` stored feature entries plus ``≤ 60 N`` colour ones.
    """
    patch = features.features if isinstance(features, PatchFeatures) else np.asarray(features)
    if patch.ndim != 3:
        raise ValueError(f"features: expected shape (h, w, C), got {patch.shape}")
    image_full = np.asarray(image_full, dtype=np.float32)
    if image_full.ndim != 3 or image_full.shape[2] != 3:
        raise ValueError(f"image_full: expected shape (H, W, 3), got {image_full.shape}")
    if not (np.isfinite(sample_rate) and 0.0 < sample_rate <= 1.0):
        raise ValueError(f"sample_rate: expected a value in (0, 1], got {sample_rate!r}")
    if not np.isfinite(knn_lambda) or knn_lambda < 0:
        raise ValueError(f"knn_lambda: expected a finite value >= 0, got {knn_lambda!r}")
    if knn_kernel not in defaults.KNN_KERNELS:
        raise ValueError(f"knn_kernel: expected one of {defaults.KNN_KERNELS}, got {knn_kernel!r}")
    hp, wp, channels = patch.shape
    size = (int(image_full.shape[0]), int(image_full.shape[1]))
    n = size[0] * size[1]
    f = np.asarray(patch, dtype=np.float32).reshape(hp * wp, channels)
    f = f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)
    gram = np.ascontiguousarray(scipy.linalg.blas.sgemm(1.0, f, f, trans_b=True), dtype=np.float32)
    taps, weights = bilinear_taps((hp, wp), size)
    from .. import _kernels

    counts = _kernels.count_pairs(n, float(sample_rate), int(seed) % (2**31))
    tiles = (n + _kernels.PAIR_TILE - 1) // _kernels.PAIR_TILE
    tile_counts = np.zeros((tiles, tiles), np.int64)
    _kernels.count_tile_pairs(counts, int(seed) % (2**31), tile_counts)
    tile_ptr = np.zeros(tiles * tiles + 1, np.int64)
    np.cumsum(tile_counts.ravel(), out=tile_ptr[1:])
    total = int(tile_ptr[-1])
    rows, cols = np.empty(total, np.uint16), np.empty(total, np.uint16)
    data = np.empty(total, np.float32)
    iy, wy = linear_taps(hp, size[0])
    ix, wx = linear_taps(wp, size[1])
    _kernels.sample_feature_tiles(
        counts, tile_ptr, gram, wp, size[1], iy, wy, ix, wx, int(seed) % (2**31), rows, cols, data
    )
    diagonal = _kernels.self_affinity(gram, taps, weights)
    if knn_lambda > 0:
        colour = knn_affinity(image_full, kernel=knn_kernel)
        colour = (colour * np.float32(knn_lambda)).astype(np.float32).tocsr()
    else:
        colour = scipy.sparse.csr_matrix((n, n), dtype=np.float32)
    return SparseAffinity(
        tile_ptr=tile_ptr, rows=rows, cols=cols, data=data, diagonal=diagonal, colour=colour, size=size
    )


def sparse_laplacian_eigenvectors(
    affinity: SparseAffinity | scipy.sparse.spmatrix,
    n_eigenvectors: int,
    *,
    initial: np.ndarray | None = None,
    tol: float | None = None,
    maxiter: int = 200,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Smallest eigenpairs of ``(D - W) y = λ D y`` for a *sparse* symmetric affinity.

    Works on ``M = D^-1/2 W D^-1/2`` (largest eigenvalues ``μ = 1 - λ``) with its known top
    eigenvector ``D^1/2 1`` deflated to ``-1``, from sparse products only; the same
    eigenpairs as the reference's shift-invert ``eigsh(D - W, k, sigma=0, M=D)``. Without
    ``initial``: Lanczos (ARPACK ``eigsh``). With ``initial``: block LOBPCG started from
    that guess (e.g. the 1/8-grid eigenvectors upsampled), which needs far fewer passes
    over the matrix when the guess is close.

    Parameters
    ----------
    affinity : SparseAffinity or (N, N) scipy sparse matrix
        Symmetric, non-negative.
    n_eigenvectors : int
        K, eigenpairs returned (the constant one included), capped at N.
    initial : (K', N) float, optional
        Guess of the eigenvectors (``y``, any scale; the constant one may be included:
        it is projected out). At least ``K - 1`` vectors are used (padded with seeded noise).
    tol : float, optional
        Relative accuracy for ARPACK (default 1e-5) / residual norm for LOBPCG (default
        1e-3, which matches the eigenvectors of ARPACK at 1e-5 to ``|cos| > 0.9999``).
    maxiter : int, default 200
        LOBPCG iterations (ignored by ARPACK).
    seed : int, default 0
        Seeds the Lanczos start vector / the padding of ``initial``.

    Returns
    -------
    eigenvalues : (K,) float64, ascending, the first 0
    eigenvectors : (K, N) float32, ``D``-orthonormal, not oriented
    """
    if not isinstance(n_eigenvectors, (int, np.integer)) or n_eigenvectors < 1:
        raise ValueError(f"n_eigenvectors: expected an integer >= 1, got {n_eigenvectors!r}")
    if isinstance(affinity, SparseAffinity):
        product = affinity.matmat
    elif scipy.sparse.issparse(affinity):
        matrix = affinity.tocsr().astype(np.float32)
        product = lambda x: matrix @ np.asarray(x, dtype=np.float32)  # noqa: E731
    else:
        raise ValueError(f"affinity: expected a SparseAffinity or a scipy sparse matrix, got {type(affinity).__name__}")
    n = affinity.shape[0]
    k = min(int(n_eigenvectors), n)
    degree = np.maximum(product(np.ones(n, np.float32)).astype(np.float64), 1e-12)
    inv_sqrt = 1.0 / np.sqrt(degree)
    inv_sqrt32 = inv_sqrt.astype(np.float32)
    top64 = np.sqrt(degree) / np.linalg.norm(np.sqrt(degree))
    values = np.ones(k, np.float64)
    vectors = np.empty((k, n), np.float64)
    vectors[0] = top64
    if k > 1:

        def matvec(x: np.ndarray) -> np.ndarray:
            x = np.asarray(x).reshape(n, -1)
            out = (inv_sqrt32[:, None] * product(inv_sqrt32[:, None] * x.astype(np.float32))).astype(np.float64)
            out -= 2.0 * top64[:, None] * (top64 @ x)[None, :]
            return out

        if n <= 400 or k >= n - 1:  # tiny problems: dense
            dense = matvec(np.eye(n))
            dense = 0.5 * (dense + dense.T)
            mu, v = np.linalg.eigh(dense)
            mu, v = mu[n - k + 1 :], v[:, n - k + 1 :]
        elif initial is not None:
            guess = np.asarray(initial, dtype=np.float64).reshape(-1, n).T * np.sqrt(degree)[:, None]  # y -> v
            guess -= top64[:, None] * (top64 @ guess)[None, :]
            norms = np.linalg.norm(guess, axis=0)
            guess = guess[:, norms > 1e-8 * max(1.0, float(norms.max(initial=0.0)))]
            # a few more vectors than wanted: a block of exactly K - 1 can settle on a wrong
            # set of eigenvectors when the guess is rough (seen on a test scene)
            block = min(k - 1 + LOBPCG_GUARD, n // 3)
            guess = guess[:, :block]
            if guess.shape[1] < block:
                noise = np.random.default_rng(seed).standard_normal((n, block - guess.shape[1]))
                guess = np.column_stack([guess, noise])
            operator = scipy.sparse.linalg.LinearOperator((n, n), matvec=matvec, matmat=matvec, dtype=np.float64)
            constraint = top64[:, None]
            mu, v = scipy.sparse.linalg.lobpcg(
                operator, guess, Y=constraint, tol=1e-3 if tol is None else tol, maxiter=maxiter, largest=True
            )
            order = np.argsort(-mu)[: k - 1]
            mu, v = mu[order], v[:, order]
        else:
            operator = scipy.sparse.linalg.LinearOperator((n, n), matvec=matvec, matmat=matvec, dtype=np.float64)
            start = np.random.default_rng(seed).standard_normal(n)
            ncv = min(n - 1, max(2 * k + 1, 24))
            mu, v = scipy.sparse.linalg.eigsh(
                operator, k=k - 1, which="LA", v0=start, tol=1e-5 if tol is None else tol, ncv=ncv
            )
        order = np.argsort(-mu)
        values[1:] = mu[order]
        vectors[1:] = v[:, order].T
    eigenvalues = np.clip(1.0 - values, 0.0, 2.0)
    eigenvalues[0] = 0.0
    return eigenvalues, (vectors * inv_sqrt[None, :]).astype(np.float32)


# ---------------------------------------------------------------------------------------
# Layers, object side, guided filter, compositing
# ---------------------------------------------------------------------------------------


def matting_layers(
    eigenvectors: np.ndarray,
    n_layers: int,
    *,
    labels: np.ndarray | None = None,
    iterations: int = LAYER_ITERATIONS,
    seed: int = 0,
) -> np.ndarray:
    """Soft layers (non-negative, summing to 1 per pixel) from eigenvectors (spectral matting).

    Parameters
    ----------
    eigenvectors : (K, ...) float
        Eigenvectors (the constant one included, or not: it is added to the span).
    n_layers : int >= 1
        Number of layers.
    labels : (...) int, optional
        Initial hard partition, values in ``[0, n_layers)``; default: k-means++ (seeded)
        on the rows of the non-constant eigenvectors (each scaled to unit RMS).
    iterations : int, default 30
        Alternating projections (span of the eigenvectors ↔ probability simplex).
    seed : int, default 0

    Returns
    -------
    (n_layers, ...) float32, each pixel's values in [0, 1] summing to 1; layers ordered by
    decreasing area (sum of alpha) when ``labels`` is not given, else in label order.
    """
    vectors = np.asarray(eigenvectors, dtype=np.float64)
    if vectors.ndim < 2:
        raise ValueError(f"eigenvectors: expected shape (K, ...), got {vectors.shape}")
    if not isinstance(n_layers, (int, np.integer)) or n_layers < 1:
        raise ValueError(f"n_layers: expected an integer >= 1, got {n_layers!r}")
    if not isinstance(iterations, (int, np.integer)) or iterations < 0:
        raise ValueError(f"iterations: expected an integer >= 0, got {iterations!r}")
    spatial = vectors.shape[1:]
    flat = vectors.reshape(len(vectors), -1)
    n = flat.shape[1]
    basis = np.vstack([np.ones((1, n)), flat]).T  # (N, K + 1)
    q, r = np.linalg.qr(basis)
    keep = np.abs(np.diag(r)) > 1e-8 * max(1.0, float(np.abs(np.diag(r)).max()))
    q = q[:, keep]  # orthonormal basis of the span (constant included)
    if labels is None:
        from scipy.cluster.vq import kmeans2

        embedding = flat[1:] if len(flat) > 1 else flat
        embedding = embedding - embedding.mean(axis=1, keepdims=True)
        embedding = embedding / np.maximum(np.sqrt((embedding**2).mean(axis=1, keepdims=True)), 1e-12)
        if n_layers == 1:
            labels_flat = np.zeros(n, np.int64)
        else:
            _, labels_flat = kmeans2(embedding.T, n_layers, minit="++", seed=np.random.default_rng(seed))
    else:
        labels_flat = np.asarray(labels).reshape(-1)
        if labels_flat.size != n:
            raise ValueError(f"labels: expected {spatial} values, got shape {np.shape(labels)}")
        if labels_flat.min() < 0 or labels_flat.max() >= n_layers:
            raise ValueError(f"labels: expected values in [0, {n_layers}), got [{labels_flat.min()}, {labels_flat.max()}]")
    layers = np.zeros((n_layers, n))
    layers[labels_flat, np.arange(n)] = 1.0
    for _ in range(int(iterations)):
        layers = (layers @ q) @ q.T  # projection onto the span keeps the sum at 1
        np.clip(layers, 0.0, 1.0, out=layers)
        total = layers.sum(axis=0)
        empty = total <= 1e-12
        layers[:, empty] = 1.0 / n_layers
        total[empty] = 1.0
        layers /= total[None, :]
    if labels is None:
        layers = layers[np.argsort(-layers.sum(axis=1), kind="stable")]
    return layers.reshape(n_layers, *spatial).astype(np.float32)


def foreground_side(split: np.ndarray) -> np.ndarray:
    """The side of a two-way split (e.g. of the Fiedler vector) that is the object to cut out.

    The localization's rule (the positive, minority side) would make any object that
    fills more than half of the photo its background. For matting the side that lies
    less on the image border is the object: of ``split`` and ``~split`` the one whose
    share of border cells, relative to its area, is smaller (a border prior; ties keep
    ``split``).

    Parameters
    ----------
    split : (h, w) bool

    Returns
    -------
    (h, w) bool
    """
    side = np.asarray(split, dtype=bool)
    if side.all() or not side.any() or min(side.shape) < 3:
        return side
    edge = np.zeros(side.shape, bool)
    edge[0], edge[-1], edge[:, 0], edge[:, -1] = True, True, True, True

    def border_density(part: np.ndarray) -> float:
        return float((part & edge).sum()) / float(part.sum())

    return ~side if border_density(side) > border_density(~side) else side


def _box_mean(array: np.ndarray, radius: int) -> np.ndarray:
    """Mean of ``array`` (H, W, ...) over the ``(2 r + 1)²`` window around each pixel,
    clipped to the image (each mean over the pixels that are inside), float64."""
    out = np.asarray(array, dtype=np.float64)
    for axis in (0, 1):
        n = out.shape[axis]
        sums = np.cumsum(out, axis=axis)
        sums = np.concatenate([np.zeros_like(np.take(sums, [0], axis=axis)), sums], axis=axis)
        high = np.minimum(np.arange(n) + radius + 1, n)
        low = np.maximum(np.arange(n) - radius, 0)
        counts = (high - low).astype(np.float64).reshape([-1 if a == axis else 1 for a in range(out.ndim)])
        out = (np.take(sums, high, axis=axis) - np.take(sums, low, axis=axis)) / counts
    return out


def guided_filter(
    guide: np.ndarray, source: np.ndarray, *, radius: int = GUIDED_RADIUS, eps: float = GUIDED_EPS
) -> np.ndarray:
    """Colour guided filter (He, Sun & Tang, "Guided image filtering", ECCV 2010 / TPAMI 2013).

    In every ``(2 r + 1)²`` window the output is an affine function of the guide's colour,
    ``q = aᵀ I + b``, fitted to ``source`` by ridge regression (``eps``); the
    coefficients of the windows covering a pixel are averaged. Filtering a coarse mask
    with the image as the guide ("guided feathering") moves its edges onto the colour
    edges and leaves them soft where the colours mix — the local linear colour model of
    closed-form matting, solved window by window instead of as one global system.

    Parameters
    ----------
    guide : (H, W, 3) float
        Colours in [0, 1].
    source : (H, W) float
        The map to filter (e.g. a coarse 0/1 mask).
    radius : int >= 0, default 8
    eps : float > 0, default 1e-3

    Returns
    -------
    (H, W) float32 (not clipped)
    """
    guide = np.asarray(guide, dtype=np.float64)
    source = np.asarray(source, dtype=np.float64)
    if guide.ndim != 3 or guide.shape[2] != 3:
        raise ValueError(f"guide: expected shape (H, W, 3), got {guide.shape}")
    if source.shape != guide.shape[:2]:
        raise ValueError(f"source: expected shape {guide.shape[:2]}, got {source.shape}")
    if not isinstance(radius, (int, np.integer)) or radius < 0:
        raise ValueError(f"radius: expected an integer >= 0, got {radius!r}")
    if not (np.isfinite(eps) and eps > 0):
        raise ValueError(f"eps: expected a finite value > 0, got {eps!r}")
    height, width = source.shape
    mean_i = _box_mean(guide, radius)
    mean_p = _box_mean(source, radius)
    cov_ip = _box_mean(guide * source[..., None], radius) - mean_i * mean_p[..., None]
    outer = (guide[..., :, None] * guide[..., None, :]).reshape(height, width, 9)
    var_i = _box_mean(outer, radius).reshape(height, width, 3, 3) - mean_i[..., :, None] * mean_i[..., None, :]
    var_i += eps * np.eye(3)
    a = np.linalg.solve(var_i, cov_ip[..., None])[..., 0]
    b = mean_p - np.einsum("hwc,hwc->hw", a, mean_i)
    return (np.einsum("hwc,hwc->hw", _box_mean(a, radius), guide) + _box_mean(b, radius)).astype(np.float32)


#: Box-filter radii (pixels) of the two passes of :func:`estimate_foreground`.
FOREGROUND_RADII = (90, 6)


def _blur_fusion(rgb: np.ndarray, alpha: np.ndarray, fg: np.ndarray, bg: np.ndarray, radius: int):
    """One pass of blur-fusion: local means of the foreground / background colours weighted
    by ``alpha`` / ``1 - alpha`` (box filter of side ``2 radius + 1``), then the foreground
    corrected so that ``alpha · F + (1 - alpha) · B`` reproduces the pixel."""
    from scipy import ndimage

    size = (2 * radius + 1, 2 * radius + 1)

    def box(array: np.ndarray) -> np.ndarray:
        if array.ndim == 3:
            return np.stack([ndimage.uniform_filter(array[..., c], size, mode="nearest") for c in range(3)], -1)
        return ndimage.uniform_filter(array, size, mode="nearest")

    a = alpha[..., None]
    weight_fg = box(alpha)[..., None]
    weight_bg = 1.0 - weight_fg
    mean_fg = box(fg * a) / np.maximum(weight_fg, 1e-5)
    mean_bg = box(bg * (1.0 - a)) / np.maximum(weight_bg, 1e-5)
    fg = mean_fg + a * (rgb - a * mean_fg - (1.0 - a) * mean_bg)
    return np.clip(fg, 0.0, 1.0), mean_bg


def _image_and_alpha(image, alpha) -> tuple[np.ndarray, np.ndarray]:
    """``(H, W, 3) uint8`` image and ``(H, W) float32`` alpha, their sizes checked."""
    rgb = as_rgb_array(image)
    alpha = np.asarray(alpha, dtype=np.float32)
    if alpha.shape != rgb.shape[:2]:
        raise ValueError(f"alpha: expected shape {rgb.shape[:2]}, got {alpha.shape}")
    return rgb, alpha


def estimate_foreground(image, alpha: np.ndarray) -> np.ndarray:
    """Foreground colours ``F`` such that ``image ≈ α F + (1 - α) B`` (colour decontamination).

    Where alpha is fractional a pixel mixes the object's colour with the old background's;
    a cut-out or composite made with the raw pixels keeps a halo of that background. This
    estimates ``F`` by blur-fusion (Forte & Pitié, "Approximate fast foreground colour
    estimation", ICIP 2021): local alpha-weighted means of foreground and background,
    corrected by the compositing equation, once with a wide box filter
    (:data:`FOREGROUND_RADII`), then refined with a narrow one. Pixels with alpha 1 keep
    their colour.

    Parameters
    ----------
    image : PIL.Image.Image or (H, W, 3) uint8
    alpha : (H, W) float in [0, 1]

    Returns
    -------
    (H, W, 3) uint8
    """
    rgb, alpha = _image_and_alpha(image, alpha)
    rgb = rgb.astype(np.float32) / 255.0
    alpha = np.clip(alpha, 0.0, 1.0)
    fg, bg = rgb, rgb
    for radius in FOREGROUND_RADII:
        fg, bg = _blur_fusion(rgb, alpha, fg, bg, radius)
    return np.round(fg * 255.0).astype(np.uint8)


def cutout_rgba(image, alpha: np.ndarray, *, decontaminate: bool = True) -> np.ndarray:
    """RGBA cut-out (straight, not premultiplied) with ``alpha`` as opacity.

    Parameters
    ----------
    image : PIL.Image.Image or (H, W, 3) uint8
    alpha : (H, W) float in [0, 1]
    decontaminate : bool, default True
        Colours from :func:`estimate_foreground` (no halo of the old background at soft
        edges); False: the image's own colours.

    Returns
    -------
    (H, W, 4) uint8
    """
    rgb, alpha = _image_and_alpha(image, alpha)
    if decontaminate:
        rgb = estimate_foreground(rgb, alpha)
    a = np.round(np.clip(alpha, 0.0, 1.0) * 255.0).astype(np.uint8)
    return np.dstack([rgb, a])


def composite(image, alpha: np.ndarray, background, *, decontaminate: bool = True) -> np.ndarray:
    """Background replacement ``α · F + (1 - α) · background``.

    Parameters
    ----------
    image : PIL.Image.Image or (H, W, 3) uint8
        Foreground source.
    alpha : (H, W) float in [0, 1]
    background : (H, W, 3) uint8 array / PIL image of any size, or an ``(r, g, b)`` colour
        with values in 0..255. An image of another size is resized to *cover* the image
        (aspect ratio kept) and centre-cropped.
    decontaminate : bool, default True
        ``F`` from :func:`estimate_foreground`; False: ``F`` is the image itself.

    Returns
    -------
    (H, W, 3) uint8
    """
    rgb, alpha = _image_and_alpha(image, alpha)
    if isinstance(background, (tuple, list)) and len(background) == 3 and np.isscalar(background[0]):
        colour = np.asarray(background, dtype=np.float32)
        if np.any(colour < 0) or np.any(colour > 255):
            raise ValueError(f"background: expected an (r, g, b) colour in 0..255, got {background!r}")
        back = np.broadcast_to(colour, rgb.shape)
    else:
        try:
            back_rgb = as_rgb_array(background)
        except (TypeError, ValueError) as error:
            raise ValueError(f"background: expected an image or an (r, g, b) colour, got {type(background).__name__}") from error
        back = _cover(back_rgb, rgb.shape[:2]).astype(np.float32)
    if decontaminate:
        rgb = estimate_foreground(rgb, alpha)
    a = np.clip(alpha, 0.0, 1.0)[:, :, None]
    out = a * rgb.astype(np.float32) + (1.0 - a) * back
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


# ---------------------------------------------------------------------------------------
# The task
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Matte:
    """Result of :func:`matte` for one image.

    Attributes
    ----------
    alpha : (H, W) float32 in [0, 1]
        Opacity of the main object (:func:`foreground_side` of the Fiedler vector) at the original size.
    layers : (L, H, W) float32 or None
        Soft layers summing to 1 per pixel (with ``n_layers``), at the original size.
    mode : {"fast", "full"}
    work_size : (h, w)
        Pixels the matte was computed on (the cropped input image, or its downscale in
        ``"full"`` mode); results are resized from it to the original size.
    eigenvalues : (K,) float64
        Eigenvalues of the decomposition used (grid in ``"fast"``, pixels in ``"full"``).
    settings : dict
    """

    alpha: np.ndarray
    layers: np.ndarray | None
    mode: str
    work_size: tuple[int, int]
    eigenvalues: np.ndarray
    settings: dict = field(default_factory=dict)


def _to_original(maps: np.ndarray, crop_size, input_size, image_size) -> np.ndarray:
    """``(L, h, w)`` maps on the (possibly downscaled) crop → ``(L, H, W)`` on the original
    image: bilinear to the crop, right/bottom edges replicated to the input size, bilinear
    to the original size."""
    out = np.moveaxis(maps, 0, -1)
    out = resize_bilinear(out, tuple(crop_size))
    pad = ((0, input_size[0] - crop_size[0]), (0, input_size[1] - crop_size[1]), (0, 0))
    if any(p[1] for p in pad):
        out = np.pad(out, pad, mode="edge")
    out = resize_bilinear(out, tuple(image_size))
    return np.clip(np.moveaxis(out, -1, 0), 0.0, 1.0).astype(np.float32)


def _renormalise(layers: np.ndarray) -> np.ndarray:
    layers = np.clip(layers, 0.0, 1.0)
    total = layers.sum(axis=0, keepdims=True)
    uniform = np.full_like(layers, 1.0 / len(layers))
    return np.where(total > 1e-6, layers / np.maximum(total, 1e-6), uniform).astype(np.float32)


def _cover(background: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize ``background`` to cover ``size = (H, W)`` (aspect ratio kept), centre-cropped."""
    height, width = size
    bh, bw = background.shape[:2]
    scale = max(height / bh, width / bw)
    scaled = resize_image(background, (max(height, round(bh * scale)), max(width, round(bw * scale))))
    top = (scaled.shape[0] - height) // 2
    left = (scaled.shape[1] - width) // 2
    return scaled[top : top + height, left : left + width]


def _full_size(crop_size: tuple[int, int], max_pixels: int | None) -> tuple[int, int]:
    h, w = crop_size
    if max_pixels is None or h * w <= max_pixels:
        return (int(h), int(w))
    scale = (max_pixels / (h * w)) ** 0.5
    return (max(1, int(h * scale)), max(1, int(w * scale)))


def full_sample_rate(n_pixels: int, sample_rate: float = FEATURE_SAMPLE_RATE) -> float:
    """Share of the feature affinity kept for an image of ``n_pixels`` in ``"full"`` mode:
    ``sample_rate`` (the paper's 1/256) up to ``FULL_MAX_PARTNERS · 256`` pixels (about
    197k, a 500 × 375 photo fits), then ``FULL_MAX_PARTNERS / (n_pixels - 1)``: a fixed
    expected number of random feature partners per pixel, so memory and time grow
    linearly with the pixels instead of quadratically."""
    return float(min(sample_rate, FULL_MAX_PARTNERS / max(n_pixels - 1, 1)))


def matte(
    image,
    *,
    backbone=None,
    features: PatchFeatures | None = None,
    max_size: int | None = defaults.MAX_SIZE,
    mode: str = MATTING_MODE,
    n_layers: int | None = None,
    knn_lambda: float = defaults.KNN_LAMBDA,
    n_eigenvectors: int | None = None,
    knn_kernel: str = defaults.KNN_KERNEL,
    sample_rate: float = FEATURE_SAMPLE_RATE,
    max_pixels: int | None = None,
    solver: str = "lobpcg",
    radius: int = GUIDED_RADIUS,
    seed: int = 0,
    decomposition: Decomposition | None = None,
) -> Matte:
    """Alpha matte of the main object (and optionally soft layers) of one image (paper Sec. 4.4).

    Parameters
    ----------
    image : PIL.Image.Image or (H, W, 3) uint8
        The original image.
    backbone : deepspectral.Backbone or str, optional
        Feature extractor (a registry name loads it, downloading the weights); needed
        unless ``features`` is given.
    features : PatchFeatures, optional
        Precomputed features of ``image`` (e.g. oracle features); ``backbone`` and
        ``max_size`` are then unused.
    max_size : int or None, default 800
        Longest side the image is brought down to for the features *and* for the matte
        itself; the alpha and layers are resized back to the original size.
    mode : {"fast", "full"}, default "fast"
        See the module docstring.
    n_layers : int >= 2, optional
        Also return this many soft layers (spectral matting).
    knn_lambda : float, default 10
        Weight of the colour affinity in ``W``.
    n_eigenvectors : int, optional
        Eigenvectors used (constant included); default ``max(5, n_layers + 2)``.
    knn_kernel : {"binary", "soft"}
    sample_rate : float, default 1/256
        ``"full"`` mode: share of the feature affinity kept (capped per pixel, see
        :func:`full_sample_rate`).
    max_pixels : int or None, default None
        ``"full"`` mode: decompose at most this many pixels (the crop is downscaled).
    solver : {"lobpcg", "lanczos"}, default "lobpcg"
        ``"full"`` mode eigensolver: LOBPCG started from the 1/8-grid eigenvectors, or
        cold-start Lanczos (slower; the reference for checks).
    radius : int, default 8
        ``"fast"`` mode: radius of the guided filter, pixels of the input image (0: the
        coarse mask, blocky).
    seed : int, default 0
        Seeds the sampled pairs, the eigensolver start and k-means.
    decomposition : Decomposition, optional
        The 1/8-grid decomposition of the same image and features, if already computed.

    Returns
    -------
    Matte
    """
    if mode not in MATTING_MODES:
        raise ValueError(f"mode: expected one of {MATTING_MODES}, got {mode!r}")
    if solver not in FULL_SOLVERS:
        raise ValueError(f"solver: expected one of {FULL_SOLVERS}, got {solver!r}")
    if n_layers is not None and (not isinstance(n_layers, (int, np.integer)) or n_layers < 2):
        raise ValueError(f"n_layers: expected None or an integer >= 2, got {n_layers!r}")
    if n_eigenvectors is None:
        n_eigenvectors = max(defaults.N_EIGENVECTORS, (n_layers or 0) + 2)
    if not isinstance(n_eigenvectors, (int, np.integer)) or n_eigenvectors < 2:
        raise ValueError(f"n_eigenvectors: expected an integer >= 2, got {n_eigenvectors!r}")
    if max_pixels is not None and (not isinstance(max_pixels, (int, np.integer)) or max_pixels < 1):
        raise ValueError(f"max_pixels: expected None or an integer >= 1, got {max_pixels!r}")
    if not isinstance(radius, (int, np.integer)) or radius < 0:
        raise ValueError(f"radius: expected an integer >= 0, got {radius!r}")
    rgb = as_rgb_array(image)
    if features is None:
        if backbone is None:
            raise ValueError("backbone: expected a Backbone or a registry name when features is None, got None")
        if isinstance(backbone, str):
            from ..backbones import Backbone

            backbone = Backbone(backbone)
        features = backbone.extract(rgb, max_size=max_size)
    if not isinstance(features, PatchFeatures):
        raise ValueError(f"features: expected PatchFeatures or None, got {type(features).__name__}")
    if tuple(rgb.shape[:2]) != tuple(features.image_size):
        raise ValueError(
            f"image: size {rgb.shape[:2]} does not match the size {tuple(features.image_size)} the features were extracted from"
        )
    if decomposition is not None and not isinstance(decomposition, Decomposition):
        raise ValueError(f"decomposition: expected a Decomposition or None, got {type(decomposition).__name__}")
    input_size = tuple(int(v) for v in features.input_size)
    crop_size = tuple(int(v) for v in features.crop_size)
    image_size = tuple(int(v) for v in features.image_size)
    crop = resize_image(rgb, input_size)[: crop_size[0], : crop_size[1]]
    settings = {
        "mode": mode,
        "n_layers": None if n_layers is None else int(n_layers),
        "knn_lambda": float(knn_lambda),
        "knn_kernel": knn_kernel,
        "n_eigenvectors": int(n_eigenvectors),
        "seed": int(seed),
        "backbone": features.backbone,
    }
    if decomposition is None and not (mode == "full" and solver == "lanczos"):
        # in full mode, the grid eigenvectors are LOBPCG's start: guard vectors included
        grid_k = int(n_eigenvectors) + (LOBPCG_GUARD if mode == "full" else 0)
        decomposition = decompose(features, rgb, knn_lambda=knn_lambda, n_eigenvectors=grid_k, knn_kernel=knn_kernel)

    if mode == "full":
        work = _full_size(crop_size, max_pixels)
        image_full = resize_bilinear(resize_image(crop, work).astype(np.float32) / 255.0, work)
        rate = full_sample_rate(work[0] * work[1], sample_rate)
        affinity = full_resolution_affinity(
            features, image_full, knn_lambda=knn_lambda, sample_rate=rate, knn_kernel=knn_kernel, seed=seed
        )
        initial = None
        if solver == "lobpcg":
            grid_vectors = decomposition.eigenvectors
            initial = np.moveaxis(resize_bilinear(np.moveaxis(grid_vectors, 0, -1), work), -1, 0)
        eigenvalues, vectors = sparse_laplacian_eigenvectors(
            affinity, int(n_eigenvectors), initial=initial, seed=seed, tol=FULL_LOBPCG_TOL if initial is not None else None
        )
        vectors = orient_eigenvectors(vectors.reshape(-1, *work))
        # the sign, not the sweep cut of the fast mode: at full resolution the layer grown
        # from it below is what decides the edge, and the sweep measured no better there
        side = foreground_side(vectors[1] > 0) if len(vectors) > 1 else np.ones(work, bool)
        pair = matting_layers(vectors, 2, labels=side.astype(np.int64), seed=seed)
        maps = [pair[1:2]]
        if n_layers is not None:
            maps.append(matting_layers(vectors, int(n_layers), seed=seed))
        settings.update(sample_rate=rate, max_pixels=max_pixels, solver=solver, feature_entries=int(2 * affinity.data.size))
        out = _to_original(np.concatenate(maps), crop_size, input_size, image_size)
        layers = _renormalise(out[1:]) if n_layers is not None else None
        return Matte(alpha=out[0], layers=layers, mode=mode, work_size=work, eigenvalues=eigenvalues, settings=settings)

    # fast mode
    from .segment import upsample_grid_mask

    colours = crop.astype(np.float32) / 255.0
    vectors = decomposition.eigenvectors
    if len(vectors) > 1:
        split_graph = grid_affinity(features, rgb, knn_lambda=SPLIT_KNN_LAMBDA, knn_kernel=knn_kernel)
        side = foreground_side(ncut_sweep(vectors[1], split_graph))
    else:
        side = np.ones(decomposition.grid_size, bool)
    coarse = [upsample_grid_mask(side, crop_size).astype(np.float32)]
    if n_layers is not None:
        grid_layers = matting_layers(vectors, int(n_layers), seed=seed)
        coarse += list(np.moveaxis(resize_bilinear(np.moveaxis(grid_layers, 0, -1), crop_size), -1, 0))
    alphas = [np.clip(guided_filter(colours, m, radius=int(radius)), 0.0, 1.0) if radius > 0 else m for m in coarse]
    maps = np.stack(alphas).reshape(-1, *crop_size)
    out = _to_original(maps, crop_size, input_size, image_size)
    layers = _renormalise(out[1:]) if n_layers is not None else None
    settings.update(radius=int(radius))
    return Matte(
        alpha=out[0], layers=layers, mode=mode, work_size=crop_size, eigenvalues=decomposition.eigenvalues, settings=settings
    )
