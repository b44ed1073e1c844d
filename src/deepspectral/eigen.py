"""Smallest eigenpairs of the normalised graph Laplacian, from products with the affinity.

One solver for every graph of the package: the working-grid affinity of
:func:`deepspectral.spectral.decompose` (a dense matrix of which only the upper triangle is
read) and the full-resolution sparse affinity of ``"full"`` matting
(:class:`deepspectral.tasks.matting.SparseAffinity`, or any scipy sparse matrix). It solves
the generalised problem of Shi & Malik's normalised cut (and of the paper's Sec. 3.2)

    ``(D - W) y = λ D y``,  ``D = diag(W 1)``,

for the ``K`` smallest ``λ``, with ``W`` known only through products ``W @ x``:

1. **Degree and scaling** (:func:`laplacian_eigenvectors`): ``d = W 1`` (one product),
   ``D^-1/2``. The problem becomes the largest eigenpairs of the symmetric
   ``M = D^-1/2 W D^-1/2`` (``μ = 1 - λ``, ``v = D^1/2 y``).
2. **Deflation**: the top eigenpair is known exactly (``μ = 1``, ``v₀ ∝ D^1/2 1``); the
   solvers work on ``M - 2 v₀ v₀ᵀ``, which moves it to ``μ = -1``, and find the next
   ``K - 1``. This returns the same eigenpairs as the reference's shift-invert
   ``eigsh(D - W, K, sigma=0, M=D)`` without factorising anything.
3. **Solver** (``solver``):

   ``"lanczos"`` (default)
       ARPACK's implicitly restarted Lanczos (``eigsh``) from a seeded random start. If it
       does not converge (rare: clustered spectra), once more with a wider basis and more
       restarts, then dense ``eigh`` on graphs of up to :data:`DENSE_FALLBACK_MAX_NODES`.
   ``"lobpcg"``
       Block LOBPCG started from a guess of the eigenvectors (``initial``, e.g. the
       1/8-grid eigenvectors upsampled to the pixels), with :data:`LOBPCG_GUARD` extra
       vectors in the block; a few dozen products when the guess is close, against several
       hundred for Lanczos from a random start.

   Small problems (at most :data:`DENSE_SOLVER_MAX_NODES` nodes, or every eigenpair
   wanted) use dense ``eigh`` whatever the solver.
4. **Back to ``y``**: ``y = D^-1/2 v`` (``D``-orthonormal), ``λ = 1 - μ`` clipped to
   ``[0, 2]``, the first exactly 0.

The affinity is wrapped in one of two operator kinds (:func:`affinity_operator`), which
differ only in how the products are computed and in three details of arithmetic that
each kind has always used (so that results stay bit-identical to the earlier separate
solvers; mathematically both compute the same thing):

======================  =================================  ===============================
                        :class:`DenseAffinity` (grid)      :class:`ProductAffinity` (sparse)
======================  =================================  ===============================
``W @ x``               BLAS ``symv`` on the upper         the affinity's own ``matmat``
                        triangle, in the matrix's dtype    (float32)
solver's vectors        the matrix's dtype (float32:       float64 (LOBPCG's Rayleigh-Ritz
                        ARPACK's single-precision          steps and the deflation in
                        routines, half the traffic)        double precision)
``v₀``                  ``sqrt(d / Σd)``                   ``sqrt(d) / ‖sqrt(d)‖``
Lanczos basis ``ncv``   ARPACK's default                   ``max(2 K + 1, 24)``
======================  =================================  ===============================

This module is pure maths: numpy and scipy only, no file, image or model.
"""

from __future__ import annotations

from typing import Callable, Protocol

import numpy as np
import scipy.linalg
import scipy.sparse
import scipy.sparse.linalg

__all__ = [
    "SOLVERS",
    "DENSE_SOLVER_MAX_NODES",
    "DENSE_FALLBACK_MAX_NODES",
    "LANCZOS_TOL",
    "LOBPCG_TOL",
    "LOBPCG_MAXITER",
    "LOBPCG_GUARD",
    "DEGREE_FLOOR",
    "AffinityOperator",
    "DenseAffinity",
    "ProductAffinity",
    "affinity_operator",
    "symmetric_matvec",
    "laplacian_eigenvectors",
]

#: Eigensolvers of :func:`laplacian_eigenvectors` (see the module docstring).
SOLVERS = ("lanczos", "lobpcg")
#: Up to this many nodes dense ``eigh`` is used whatever the solver: exact, never short of
#: convergence, and a matter of milliseconds. It is not the fastest there: measured (one
#: BLAS thread, K = 5, working-grid affinities of 6 SOD photos with 8-px oracle features),
#: dense ``eigh`` / Lanczos took 1.5 / 1.6 ms at 160 nodes, 3.4 / 2.0 at 260, 8.6 / 2.9 at
#: 345 and 26 / 3.6 at 504; a threshold near 200 would save a few ms on small images but
#: change their eigenvectors in the last bits, so 400 is kept.
DENSE_SOLVER_MAX_NODES = 400
#: Largest graph on which dense ``eigh`` may serve as the last-resort fallback when Lanczos
#: does not converge (seconds, not minutes; above it the solver raises instead).
DENSE_FALLBACK_MAX_NODES = 4000
#: Lanczos (ARPACK) relative residual: eigenvector error ≈ tol / eigengap, so 1e-5 keeps
#: |cos| > 0.999 to the exact eigenvectors down to gaps of 1e-3 (checked against dense
#: ``eigh`` in the tests and against the paper's own code in ``benchmarks/bench_paper_parity.py``).
LANCZOS_TOL = 1e-5
#: LOBPCG residual-norm tolerance when none is given: started from the upsampled grid
#: eigenvectors it matches the eigenpairs of Lanczos at :data:`LANCZOS_TOL` to
#: ``|cos| > 0.9999`` (measured on the test scene of ``tests/test_matting.py``, K = 5:
#: ``|cos| >= 0.99998``, eigenvalues within 3e-6); ``"full"`` matting passes its own,
#: looser ``FULL_LOBPCG_TOL`` (there: ``|cos| >= 0.999``, eigenvalues within 6e-5).
LOBPCG_TOL = 1e-3
#: LOBPCG iterations when none is given (scipy's default is 20, too few from a rough
#: guess; started from the grid eigenvectors it stops after a few dozen).
LOBPCG_MAXITER = 200
#: Extra vectors in the LOBPCG block beyond the ``K - 1`` wanted: a block of exactly
#: ``K - 1`` can settle on a wrong set of eigenvectors when the guess is rough (seen on the
#: test scene of ``tests/test_matting.py``: ``test_full_and_fast_modes_agree``). Callers
#: that start from the grid eigenvectors compute that many more of them.
LOBPCG_GUARD = 3
#: Smallest degree: a node without edges (degree 0) would make ``D^-1/2`` infinite; with
#: the floor its row and column of ``M`` stay 0 (its eigenvalue λ = 1) and nothing
#: overflows (``D^-1/2`` = 1e6). Far below the degree of any node with an edge here: the
#: package's graphs include the feature self-affinity, ~1 for a non-zero feature.
DEGREE_FLOOR = 1e-12
#: LOBPCG guess columns shorter than this share of the longest, once the top eigenvector
#: is projected out, are dropped: a guess that includes the constant eigenvector ``y₀`` (the
#: upsampled grid eigenvectors do) leaves only rounding in that column (below 1e-9 of the
#: longest on the test scene of ``tests/test_matting.py``; the other columns are ~1).
_GUESS_DROP_TOL = 1e-8
#: Lanczos retry after non-convergence: a basis of ``max(6 k + 1, 64)`` vectors (about three
#: times ARPACK's default ``max(2 k + 1, 20)``) and ``50 N`` restarts (five times scipy's
#: default ``10 N``).
_RETRY_NCV_PER_PAIR, _RETRY_NCV_MIN, _RETRY_MAXITER_PER_NODE = 6, 64, 50
#: Lanczos basis of :class:`ProductAffinity`: ``max(2 K + 1, 24)``. ``2 K + 1`` is ARPACK's
#: rule (``ncv > 2 nev``); alone it is too small for the clustered top of these spectra.
#: Measured on the full-resolution affinities of 3 SOD photos (16-px oracle features,
#: 38,400 pixels, K = 5, tol 1e-5), matrix products summed over the photos for
#: ncv = 11 (= 2 K + 1) / 16 / 20 / 24 / 32 / 48: 665 / 489 / 469 / 463 / 442 / 440. The
#: floor 24 lies in the flat part (scipy's default floor, 20, within 2 %); the product
#: count is what matters at this size (the basis upkeep costs far less than a product).
_PRODUCT_NCV_MIN = 24


class AffinityOperator(Protocol):
    """What :func:`laplacian_eigenvectors` needs of an affinity ``W`` (symmetric, non-negative).

    Attributes
    ----------
    shape : (N, N)
    dtype : numpy dtype
        dtype of the products ``W @ x``.
    vector_dtype : numpy dtype
        dtype of the solver's vectors (Lanczos / LOBPCG).
    """

    shape: tuple[int, int]
    dtype: np.dtype
    vector_dtype: np.dtype

    def matmat(self, x: np.ndarray) -> np.ndarray:
        """``W @ x`` for ``x`` of shape ``(N,)`` or ``(N, m)`` in :attr:`dtype`."""

    def to_dense(self) -> np.ndarray:
        """``W`` as a symmetric ``(N, N)`` float64 array (for dense ``eigh``)."""

    def top_vector(self, degree: np.ndarray) -> np.ndarray:
        """Unit eigenvector ``v₀ ∝ D^1/2 1`` of ``M`` for ``μ = 1``, (N,) float64."""

    def lanczos_ncv(self, k: int, n: int) -> int | None:
        """Lanczos basis size for ``k`` deflated eigenpairs (``None``: ARPACK's default)."""


def symmetric_matvec(matrix: np.ndarray, x: np.ndarray) -> np.ndarray:
    """``matrix @ x`` for a symmetric C-ordered matrix, reading its upper triangle only.

    BLAS ``symv`` on the copy-free Fortran-ordered transpose: about 3x faster than ``gemv``
    here, and only one triangle needs to be filled.

    Parameters
    ----------
    matrix : (N, N) float32 or float64, C-ordered
    x : (N,) float

    Returns
    -------
    (N,) in the matrix's dtype (float32 for float32, float64 otherwise)
    """
    from scipy.linalg import blas

    if matrix.dtype == np.float32:
        return blas.ssymv(1.0, matrix.T, x.astype(np.float32, copy=False), lower=1)
    return blas.dsymv(1.0, matrix.T.astype(np.float64, copy=False), x.astype(np.float64, copy=False), lower=1)


class DenseAffinity:
    """A dense symmetric affinity, read through its upper triangle (the working grid's).

    Parameters
    ----------
    matrix : (N, N) float32 or float64
        Symmetric, non-negative; made C-contiguous (not copied when it already is), other
        dtypes converted to float64. Not modified.
    upper_only : bool, default False
        Only the upper triangle (``j >= i``) is valid (the lower one may hold anything).
    """

    def __init__(self, matrix: np.ndarray, *, upper_only: bool = False) -> None:
        matrix = np.ascontiguousarray(matrix)
        if matrix.dtype not in (np.float32, np.float64):  # e.g. integer weights
            matrix = matrix.astype(np.float64)
        if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
            raise ValueError(f"affinity: expected a square (N, N) array, got shape {matrix.shape}")
        self.matrix = matrix
        self.upper_only = bool(upper_only)
        self.shape = (int(matrix.shape[0]), int(matrix.shape[1]))
        self.dtype = matrix.dtype
        # float32 grids: ARPACK's single-precision routines, half the memory traffic of symv
        self.vector_dtype = matrix.dtype

    def matmat(self, x: np.ndarray) -> np.ndarray:
        """``W @ x`` for ``x`` of shape ``(N,)`` or ``(N, m)`` (one ``symv`` per column)."""
        if x.ndim == 1:
            return symmetric_matvec(self.matrix, x)
        if x.shape[1] == 1:
            return symmetric_matvec(self.matrix, x[:, 0])[:, None]
        return np.stack([symmetric_matvec(self.matrix, column) for column in x.T], axis=1)

    def to_dense(self) -> np.ndarray:
        """``W``, (N, N) float64, the lower triangle rebuilt from the upper one if needed."""
        matrix = (np.triu(self.matrix) if self.upper_only else self.matrix).astype(np.float64)
        if self.upper_only:
            matrix += np.triu(matrix, 1).T
        return matrix

    def top_vector(self, degree: np.ndarray) -> np.ndarray:
        """``sqrt(d / Σd)``, (N,) float64."""
        return np.sqrt(degree / degree.sum())

    def lanczos_ncv(self, k: int, n: int) -> int | None:
        """ARPACK's default basis (``min(N, max(2 k + 1, 20))``)."""
        return None


class ProductAffinity:
    """An affinity known through its product (the full-resolution sparse affinity of matting).

    Parameters
    ----------
    matmat : callable
        ``x ↦ W @ x`` for ``x`` of shape ``(N,)`` or ``(N, m)`` float32, returning float32
        of the same shape.
    n : int
        N, the number of nodes.
    """

    def __init__(self, matmat: Callable[[np.ndarray], np.ndarray], n: int) -> None:
        self._matmat = matmat
        self.shape = (int(n), int(n))
        self.dtype = np.dtype(np.float32)
        self.vector_dtype = np.dtype(np.float64)

    def matmat(self, x: np.ndarray) -> np.ndarray:
        """``W @ x`` (float32)."""
        return self._matmat(x)

    def to_dense(self) -> np.ndarray:
        """``W`` from ``N`` products with the identity, symmetrised, (N, N) float64."""
        n = self.shape[0]
        matrix = np.asarray(self._matmat(np.eye(n, dtype=np.float32)), dtype=np.float64)
        return 0.5 * (matrix + matrix.T)

    def top_vector(self, degree: np.ndarray) -> np.ndarray:
        """``sqrt(d) / ‖sqrt(d)‖``, (N,) float64."""
        return np.sqrt(degree) / np.linalg.norm(np.sqrt(degree))

    def lanczos_ncv(self, k: int, n: int) -> int | None:
        """``min(N - 1, max(2 K + 1, 24))`` with ``K = k + 1`` (the deflated pair counted)."""
        return min(n - 1, max(2 * (k + 1) + 1, _PRODUCT_NCV_MIN))


def affinity_operator(affinity, *, upper_only: bool = False) -> AffinityOperator:
    """Wrap an affinity for :func:`laplacian_eigenvectors`.

    Parameters
    ----------
    affinity : (N, N) array, scipy sparse matrix, AffinityOperator, or an object with
        ``shape`` and ``matmat`` (e.g. :class:`deepspectral.tasks.matting.SparseAffinity`)
        A dense array becomes a :class:`DenseAffinity`; a sparse matrix (cast to float32)
        or a ``matmat`` a :class:`ProductAffinity`.
    upper_only : bool, default False
        Dense arrays only: just the upper triangle is valid.

    Returns
    -------
    AffinityOperator
    """
    if isinstance(affinity, (DenseAffinity, ProductAffinity)):
        return affinity
    if isinstance(affinity, np.ndarray):
        return DenseAffinity(affinity, upper_only=upper_only)
    if scipy.sparse.issparse(affinity):
        matrix = affinity.tocsr().astype(np.float32)
        return ProductAffinity(lambda x: matrix @ np.asarray(x, dtype=np.float32), matrix.shape[0])
    if hasattr(affinity, "matmat") and hasattr(affinity, "shape"):
        return ProductAffinity(affinity.matmat, affinity.shape[0])
    raise ValueError(
        "affinity: expected an (N, N) array, a scipy sparse matrix or an object with shape and matmat, "
        f"got {type(affinity).__name__}"
    )


def laplacian_eigenvectors(
    affinity,
    n_eigenvectors: int,
    *,
    upper_only: bool = False,
    solver: str = "lanczos",
    initial: np.ndarray | None = None,
    tol: float | None = None,
    maxiter: int = LOBPCG_MAXITER,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Smallest eigenpairs of ``(D - W) y = λ D y`` for a symmetric non-negative affinity ``W``.

    See the module docstring for the method.

    Parameters
    ----------
    affinity : (N, N) float32 / float64 array, scipy sparse matrix or AffinityOperator
        ``W``; see :func:`affinity_operator`. Not modified.
    n_eigenvectors : int >= 1
        K, the number of eigenpairs (the constant one included); capped at N.
    upper_only : bool, default False
        Dense arrays: only the upper triangle (``j >= i``) is valid.
    solver : {"lanczos", "lobpcg"}, default "lanczos"
        ``"lobpcg"`` needs ``initial``.
    initial : (K', N) float, optional
        LOBPCG's start: a guess of the eigenvectors ``y`` (any scale; the constant one may
        be included: it is projected out). ``K - 1 + LOBPCG_GUARD`` vectors are used
        (padded with seeded noise; at most ``N // 3``).
    tol : float > 0, optional
        Lanczos relative accuracy (default :data:`LANCZOS_TOL`) / LOBPCG residual norm
        (default :data:`LOBPCG_TOL`).
    maxiter : int >= 1, default 200
        LOBPCG iterations (Lanczos uses ARPACK's default restarts).
    seed : int, default 0
        Seeds the Lanczos start vector / the padding of ``initial``.

    Returns
    -------
    eigenvalues : (K,) float64
        Ascending, in ``[0, 2]``, the first 0.
    eigenvectors : (K, N) float32
        ``D``-orthonormal (``yᵀ D y = 1``), signs not yet fixed.
    """
    if not isinstance(n_eigenvectors, (int, np.integer)) or n_eigenvectors < 1:
        raise ValueError(f"n_eigenvectors: expected an integer >= 1, got {n_eigenvectors!r}")
    if solver not in SOLVERS:
        raise ValueError(f"solver: expected one of {SOLVERS}, got {solver!r}")
    if solver == "lobpcg" and initial is None:
        raise ValueError("initial: expected a guess of the eigenvectors with solver='lobpcg', got None")
    if solver == "lanczos" and initial is not None:
        raise ValueError("initial: expected None with solver='lanczos' (it starts from a seeded random vector)")
    if tol is not None and not (np.isfinite(tol) and tol > 0):
        raise ValueError(f"tol: expected None or a finite value > 0, got {tol!r}")
    if not isinstance(maxiter, (int, np.integer)) or maxiter < 1:
        raise ValueError(f"maxiter: expected an integer >= 1, got {maxiter!r}")
    operator = affinity_operator(affinity, upper_only=upper_only)
    n = operator.shape[0]
    k = min(int(n_eigenvectors), n)
    degree = np.maximum(operator.matmat(np.ones(n, operator.dtype)).astype(np.float64), DEGREE_FLOOR)
    inv_sqrt = 1.0 / np.sqrt(degree)
    top = operator.top_vector(degree)  # eigenvector of M for μ = 1, unit norm
    values = np.ones(k, dtype=np.float64)
    vectors = np.empty((k, n), dtype=np.float64)
    vectors[0] = top
    if k > 1:
        if n <= DENSE_SOLVER_MAX_NODES or k - 1 >= n - 1:
            mu, v = _dense_eigenpairs(operator, inv_sqrt, top, k - 1)
        elif solver == "lobpcg":
            mu, v = _lobpcg(operator, degree, inv_sqrt, top, k - 1, initial, tol, maxiter, seed)
        else:
            mu, v = _lanczos(operator, inv_sqrt, top, k - 1, tol, seed)
        order = np.argsort(-mu)
        values[1:] = mu[order]
        vectors[1:] = v[:, order].T
    eigenvalues = np.clip(1.0 - values, 0.0, 2.0)
    eigenvalues[0] = 0.0
    eigenvectors = (vectors * inv_sqrt[None, :]).astype(np.float32)
    return eigenvalues, eigenvectors


def _deflated_operator(
    operator: AffinityOperator, inv_sqrt: np.ndarray, top: np.ndarray
) -> scipy.sparse.linalg.LinearOperator:
    """``x ↦ (D^-1/2 W D^-1/2 - 2 v₀ v₀ᵀ) x`` in the operator's vector dtype, for ``x`` of
    shape ``(N,)`` or ``(N, m)``: the scaling in the product's dtype, the deflation in the
    vectors' dtype (with the BLAS dot of ``symv`` and ARPACK for single vectors)."""
    from scipy.linalg import blas

    n = operator.shape[0]
    scale = inv_sqrt.astype(operator.dtype)[:, None]
    vector_dtype = operator.vector_dtype
    top_ = top.astype(vector_dtype)
    dot = blas.sdot if vector_dtype == np.float32 else blas.ddot

    def matmat(x: np.ndarray) -> np.ndarray:
        x = np.asarray(x)
        single = x.ndim == 1  # ARPACK's calls: one contiguous vector
        x = x.reshape(n, -1)
        out = scale * operator.matmat(scale * x.astype(operator.dtype, copy=False))
        out = out.astype(vector_dtype, copy=False)
        if single:
            overlap = np.array([dot(top_, x[:, 0])], dtype=vector_dtype)
        else:  # LOBPCG's blocks
            overlap = top_ @ x
        out -= 2.0 * top_[:, None] * overlap[None, :]
        return out

    return scipy.sparse.linalg.LinearOperator((n, n), matvec=matmat, matmat=matmat, dtype=vector_dtype)


def _dense_eigenpairs(
    operator: AffinityOperator, inv_sqrt: np.ndarray, top: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Largest ``k`` eigenpairs ``(μ (k,), v (N, k))`` of ``M - 2 v₀ v₀ᵀ`` by dense ``eigh``
    (float64)."""
    n = operator.shape[0]
    matrix = operator.to_dense()
    matrix *= inv_sqrt[:, None] * inv_sqrt[None, :]
    matrix -= 2.0 * np.outer(top, top)
    return scipy.linalg.eigh(matrix, subset_by_index=[n - k, n - 1])


def _lanczos(
    operator: AffinityOperator, inv_sqrt: np.ndarray, top: np.ndarray, k: int, tol: float | None, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Largest ``k`` eigenpairs ``(μ (k,), v (N, k))`` of ``M - 2 v₀ v₀ᵀ`` by ARPACK, with
    the fallbacks of the module docstring."""
    n = operator.shape[0]
    deflated = _deflated_operator(operator, inv_sqrt, top)
    tol = LANCZOS_TOL if tol is None else tol
    start = np.random.default_rng(seed).standard_normal(n).astype(operator.vector_dtype)
    eigsh = scipy.sparse.linalg.eigsh
    try:
        return eigsh(deflated, k=k, which="LA", v0=start, tol=tol, ncv=operator.lanczos_ncv(k, n))
    except scipy.sparse.linalg.ArpackNoConvergence:
        try:
            ncv = min(n - 1, max(_RETRY_NCV_PER_PAIR * k + 1, _RETRY_NCV_MIN))
            return eigsh(deflated, k=k, which="LA", v0=start, tol=tol, ncv=ncv, maxiter=_RETRY_MAXITER_PER_NODE * n)
        except scipy.sparse.linalg.ArpackNoConvergence as error:
            if n > DENSE_FALLBACK_MAX_NODES:
                raise RuntimeError(f"the eigensolver did not converge on a {n}-node graph") from error
            return _dense_eigenpairs(operator, inv_sqrt, top, k)


def _lobpcg(
    operator: AffinityOperator,
    degree: np.ndarray,
    inv_sqrt: np.ndarray,
    top: np.ndarray,
    k: int,
    initial: np.ndarray,
    tol: float | None,
    maxiter: int,
    seed: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Largest ``k`` eigenpairs ``(μ (k,), v (N, k))`` of ``M - 2 v₀ v₀ᵀ`` by block LOBPCG
    started from ``initial`` (eigenvectors ``y``, converted to ``v = D^1/2 y``), constrained
    to the complement of ``v₀``."""
    n = operator.shape[0]
    guess = np.asarray(initial, dtype=np.float64).reshape(-1, n).T * np.sqrt(degree)[:, None]  # y -> v
    guess -= top[:, None] * (top @ guess)[None, :]
    norms = np.linalg.norm(guess, axis=0)
    guess = guess[:, norms > _GUESS_DROP_TOL * max(1.0, float(norms.max(initial=0.0)))]
    # n // 3: each LOBPCG step runs Rayleigh-Ritz on [X, R, P], 3 x block columns that must
    # fit in R^N (scipy itself falls back to dense eigh when N < 5 x block); above
    # DENSE_SOLVER_MAX_NODES it binds only for K > 130 eigenvectors
    block = min(k + LOBPCG_GUARD, n // 3)
    guess = guess[:, :block]
    if guess.shape[1] < block:
        noise = np.random.default_rng(seed).standard_normal((n, block - guess.shape[1]))
        guess = np.column_stack([guess, noise])
    deflated = _deflated_operator(operator, inv_sqrt, top)
    mu, v = scipy.sparse.linalg.lobpcg(
        deflated, guess, Y=top[:, None], tol=LOBPCG_TOL if tol is None else tol, maxiter=maxiter, largest=True
    )
    order = np.argsort(-mu)[:k]
    return mu[order], v[:, order]
