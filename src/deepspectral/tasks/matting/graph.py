"""The full-resolution sparse affinity of ``"full"`` matting (paper Sec. 4.4).

``W = sample(W_feat) + λ_knn · W_knn`` on the pixels of the (cropped, possibly downscaled)
input image, stored without the dense ``N × N`` matrix: a seeded random share
(:func:`full_sample_rate`) of the feature affinities of the bilinearly upsampled patch
features, in cache-sized tiles (:class:`SparseAffinity`), plus the sparse KNN colour
affinity. Its eigenvectors come from :func:`deepspectral.eigen.laplacian_eigenvectors`
(:func:`sparse_laplacian_eigenvectors` is the sparse-only entry point).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.linalg.blas
import scipy.sparse

from ... import defaults
from ...affinity import knn_affinity
from ...eigen import LOBPCG_MAXITER, laplacian_eigenvectors
from ...features import PatchFeatures
from ...geometry import bilinear_taps, linear_taps

__all__ = [
    "FEATURE_SAMPLE_RATE",
    "FULL_MAX_PARTNERS",
    "SparseAffinity",
    "full_resolution_affinity",
    "full_sample_rate",
    "sparse_laplacian_eigenvectors",
]

#: Share of the full-resolution feature affinity kept in ``"full"`` mode (paper: 1/16²).
FEATURE_SAMPLE_RATE = 1.0 / 256.0
#: ``"full"`` mode: expected random feature partners per pixel are capped at this (the
#: paper's 1/256 of a 500 x 375 photo's 187,500 pixels is 732), so larger images keep
#: memory and time linear in the pixels (see :func:`full_sample_rate`).
FULL_MAX_PARTNERS = 768


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
        """``(N, N)``."""
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
        from ..._kernels import PAIR_TILE

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
        from ... import _kernels

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
    from ... import _kernels

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


def full_sample_rate(n_pixels: int, sample_rate: float = FEATURE_SAMPLE_RATE) -> float:
    """Share of the feature affinity kept for an image of ``n_pixels`` in ``"full"`` mode.

    ``sample_rate`` (the paper's 1/256) up to ``FULL_MAX_PARTNERS · 256`` pixels (about
    197k, a 500 × 375 photo fits), then ``FULL_MAX_PARTNERS / (n_pixels - 1)``: a fixed
    expected number of random feature partners per pixel, so memory and time grow
    linearly with the pixels instead of quadratically.

    Parameters
    ----------
    n_pixels : int
        N, the pixels (nodes) of the full-resolution graph.
    sample_rate : float, default 1/256
        The share asked for.

    Returns
    -------
    float in (0, sample_rate]
    """
    return float(min(sample_rate, FULL_MAX_PARTNERS / max(n_pixels - 1, 1)))


def sparse_laplacian_eigenvectors(
    affinity: SparseAffinity | scipy.sparse.spmatrix,
    n_eigenvectors: int,
    *,
    initial: np.ndarray | None = None,
    tol: float | None = None,
    maxiter: int = LOBPCG_MAXITER,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Smallest eigenpairs of ``(D - W) y = λ D y`` for a *sparse* symmetric affinity.

    :func:`deepspectral.eigen.laplacian_eigenvectors` restricted to sparse affinities:
    without ``initial`` Lanczos (ARPACK) from a seeded random start, with ``initial`` block
    LOBPCG started from that guess (e.g. the 1/8-grid eigenvectors upsampled), which needs
    far fewer passes over the matrix when the guess is close.

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
        Relative accuracy for ARPACK (default ``eigen.LANCZOS_TOL`` = 1e-5) / residual norm
        for LOBPCG (default ``eigen.LOBPCG_TOL`` = 1e-3).
    maxiter : int, default ``eigen.LOBPCG_MAXITER`` (200)
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
    if not (isinstance(affinity, SparseAffinity) or scipy.sparse.issparse(affinity)):
        raise ValueError(f"affinity: expected a SparseAffinity or a scipy sparse matrix, got {type(affinity).__name__}")
    return laplacian_eigenvectors(
        affinity,
        n_eigenvectors,
        solver="lanczos" if initial is None else "lobpcg",
        initial=initial,
        tol=tol,
        maxiter=maxiter,
        seed=seed,
    )
