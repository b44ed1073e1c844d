"""The fast bilateral solver (Barron & Poole, ECCV 2016), as TokenCut refines its masks.

Given a reference image, a target ``t`` (e.g. a coarse 0/1 mask) and a per-pixel
confidence ``c``, the solver finds the ``x`` minimising

    ``λ/2 · Σ_ij Ŵ_ij (x_i − x_j)² + Σ_i c_i (x_i − t_i)²``,

where ``Ŵ`` is a bistochastised bilateral affinity of the pixels: close in position, luma
and chroma. The problem is solved in a *bilateral grid* (Barron & Poole, Sec. 3–4), with
``x = Sᵀ y``:

1. **Grid** (:class:`BilateralGrid`): every pixel gets the integer coordinates
   ``(⌊x/σ_s⌋, ⌊y/σ_s⌋, ⌊Y/σ_l⌋, ⌊U/σ_c⌋, ⌊V/σ_c⌋)`` (YUV of the JPEG / BT.601 matrix,
   chroma offset by 128); the distinct coordinates are the vertices. ``S`` (vertices ×
   pixels) *splats* each pixel onto its vertex, ``Sᵀ`` *slices* back. The *blur* ``B̄`` is,
   in each of the 5 dimensions, a ``[1 2 1]`` kernel over the occupied vertices
   (``B̄ = 2·5·I + Σ_d (neighbour at −1 + neighbour at +1 in dimension d)``).
2. **Bistochastisation** (:func:`bistochastize`, Sec. 4 and its supplement): diagonal
   ``n`` with ``n ⊙ (B̄ n) ≈ m = S 1`` (10 fixed-point steps ``n ← sqrt(n m / B̄ n)``),
   then ``m ← n ⊙ B̄ n`` exactly, so that ``Ŵ = Sᵀ D_n B̄ D_n S`` has rows summing to 1.
3. **System** (:func:`grid_system`): ``A y = b`` with
   ``A = λ (D_m − D_n B̄ D_n) + diag(S c)`` and ``b = S (c ⊙ t)``; solved by
   Jacobi-preconditioned conjugate gradients (:func:`conjugate_gradient`, diagonal floored
   at ``diag_min``) from the start ``y₀ = S(c t) / S c``, to a relative residual
   ``cg_tol`` or ``cg_maxiter`` iterations (TokenCut's settings: 1e-5 and 25).
4. The result is sliced back: ``x = Sᵀ y``.

The settings TokenCut uses for its saliency results are ``defaults.BILATERAL_PARAMS``.
This module is maths: numpy and scipy only, arrays in and arrays out; written from the
paper (no code of the authors or of TokenCut).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse

from . import defaults

__all__ = [
    "RGB_TO_YUV",
    "BilateralGrid",
    "bistochastize",
    "grid_system",
    "conjugate_gradient",
    "bilateral_solve",
    "refine_mask",
]

#: RGB → YUV (JPEG / ITU-R BT.601 full range): rows Y, U (Cb), V (Cr); U and V are offset by
#: 128 after the product so that every coordinate is non-negative for 8-bit input.
RGB_TO_YUV = np.array(
    [
        [0.299, 0.587, 0.114],
        [-0.168736, -0.331264, 0.5],
        [0.5, -0.418688, -0.081312],
    ]
)
_CHROMA_OFFSET = 128.0
#: Dimensions of the grid: x, y, luma, two chroma channels.
_DIMS = 5
#: Fixed-point steps of the bistochastisation (Barron & Poole's supplement uses 10).
BISTOCHASTIC_STEPS = 10


def _check_positive(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) or not np.isfinite(value) or value <= 0:
        raise ValueError(f"{name}: expected a finite number > 0, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class BilateralGrid:
    """The bilateral grid of one reference image (see the module docstring, step 1).

    Attributes
    ----------
    splat : (V, N) float64 scipy CSR
        ``S``: 1 where pixel ``p`` (row-major) falls on vertex ``v``.
    blur : (V, V) float64 scipy CSR
        ``B̄``: ``2·5`` on the diagonal, 1 between vertices one step apart in one dimension.
    coordinates : (V, 5) int64
        Grid coordinates of the vertices.
    shape : (H, W)
        Size of the reference image.
    """

    splat: scipy.sparse.csr_matrix
    blur: scipy.sparse.csr_matrix
    coordinates: np.ndarray
    shape: tuple[int, int]

    @property
    def n_vertices(self) -> int:
        return int(self.splat.shape[0])

    @classmethod
    def from_image(
        cls,
        reference: np.ndarray,
        *,
        sigma_spatial: float = defaults.BILATERAL_PARAMS["sigma_spatial"],
        sigma_luma: float = defaults.BILATERAL_PARAMS["sigma_luma"],
        sigma_chroma: float = defaults.BILATERAL_PARAMS["sigma_chroma"],
    ) -> "BilateralGrid":
        """Grid of an ``(H, W, 3)`` RGB image (uint8, or float on the same 0–255 scale).

        Parameters
        ----------
        reference : (H, W, 3) array
        sigma_spatial : float
            Cell size in pixels along x and y.
        sigma_luma, sigma_chroma : float
            Cell size along Y and along U, V (0–255 scale).
        """
        reference = np.asarray(reference)
        if reference.ndim != 3 or reference.shape[2] != 3 or min(reference.shape[:2]) < 1:
            raise ValueError(f"reference: expected an (H, W, 3) image, got shape {reference.shape}")
        sigma_spatial = _check_positive("sigma_spatial", sigma_spatial)
        sigma_luma = _check_positive("sigma_luma", sigma_luma)
        sigma_chroma = _check_positive("sigma_chroma", sigma_chroma)
        height, width = reference.shape[:2]
        yuv = np.tensordot(reference.astype(np.float64), RGB_TO_YUV, ([2], [1]))
        yuv[..., 1:] += _CHROMA_OFFSET
        rows, cols = np.mgrid[:height, :width]
        coords = np.stack(
            [
                np.floor(cols / sigma_spatial),
                np.floor(rows / sigma_spatial),
                np.floor(yuv[..., 0] / sigma_luma),
                np.floor(yuv[..., 1] / sigma_chroma),
                np.floor(yuv[..., 2] / sigma_chroma),
            ],
            axis=-1,
        ).astype(np.int64).reshape(-1, _DIMS)
        coords -= coords.min(axis=0)
        # exact mixed-radix key; each coordinate shifted by 1 inside a radix of (extent + 2),
        # so a step of ±1 in one dimension never carries into another
        radix = coords.max(axis=0) + 3
        strides = np.ones(_DIMS, dtype=np.int64)
        for d in range(_DIMS - 2, -1, -1):
            strides[d] = strides[d + 1] * radix[d + 1]
        if float(np.prod(radix.astype(np.float64))) >= 2.0**62:
            raise ValueError("reference: the bilateral grid is too large for 64-bit keys; use larger sigmas")
        keys = (coords + 1) @ strides
        unique_keys, first, vertex_of_pixel = np.unique(keys, return_index=True, return_inverse=True)
        vertex_of_pixel = vertex_of_pixel.reshape(-1)
        n_pixels, n_vertices = keys.size, unique_keys.size
        splat = scipy.sparse.csr_matrix(
            (np.ones(n_pixels), (vertex_of_pixel, np.arange(n_pixels))), shape=(n_vertices, n_pixels)
        )
        rows_b, cols_b = [np.arange(n_vertices)], [np.arange(n_vertices)]
        values_b = [np.full(n_vertices, 2.0 * _DIMS)]
        for d in range(_DIMS):
            for step in (-1, 1):
                neighbour = unique_keys + step * strides[d]
                at = np.minimum(np.searchsorted(unique_keys, neighbour), n_vertices - 1)
                found = np.flatnonzero(unique_keys[at] == neighbour)
                rows_b.append(found)
                cols_b.append(at[found])
                values_b.append(np.ones(found.size))
        blur = scipy.sparse.csr_matrix(
            (np.concatenate(values_b), (np.concatenate(rows_b), np.concatenate(cols_b))), shape=(n_vertices, n_vertices)
        )
        return cls(splat=splat, blur=blur, coordinates=coords[first], shape=(int(height), int(width)))


def bistochastize(grid: BilateralGrid, steps: int = BISTOCHASTIC_STEPS) -> tuple[np.ndarray, np.ndarray]:
    """Diagonals ``(n, m)`` ``(V,) float64`` making ``Sᵀ D_n B̄ D_n S`` bistochastic
    (module docstring, step 2); ``m = n ⊙ B̄ n`` exactly."""
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 0:
        raise ValueError(f"steps: expected an integer >= 0, got {steps!r}")
    m = np.asarray(grid.splat.sum(axis=1)).reshape(-1)
    n = np.ones(grid.n_vertices)
    for _ in range(int(steps)):
        n = np.sqrt(n * m / (grid.blur @ n))
    m = n * (grid.blur @ n)
    return n, m


def grid_system(
    grid: BilateralGrid,
    target: np.ndarray,
    confidence: np.ndarray,
    *,
    lam: float = defaults.BILATERAL_PARAMS["lam"],
    bistochastic: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[scipy.sparse.csr_matrix, np.ndarray, np.ndarray]:
    """The solver's linear system in the grid (module docstring, step 3).

    Parameters
    ----------
    grid : BilateralGrid
    target, confidence : (H, W) or (N,) float
        ``t`` and ``c`` per pixel (``c >= 0``).
    lam : float
        Smoothness weight λ.
    bistochastic : (n, m), optional
        From :func:`bistochastize` (computed when absent).

    Returns
    -------
    A : (V, V) float64 CSR, symmetric positive (semi-)definite
    b : (V,) float64
    start : (V,) float64
        ``S(c t) / S c`` (0 on vertices without confidence).
    """
    lam = _check_positive("lam", lam)
    n_pixels = grid.splat.shape[1]
    t = np.asarray(target, dtype=np.float64).reshape(-1)
    c = np.asarray(confidence, dtype=np.float64).reshape(-1)
    if t.size != n_pixels or c.size != n_pixels:
        raise ValueError(f"target, confidence: expected {n_pixels} values each (the grid's image), got {t.size} and {c.size}")
    if not (np.all(np.isfinite(t)) and np.all(np.isfinite(c)) and np.all(c >= 0)):
        raise ValueError("target, confidence: expected finite values, confidence >= 0")
    n, m = bistochastize(grid) if bistochastic is None else bistochastic
    dn = scipy.sparse.diags(n)
    splat_c = grid.splat @ c
    smooth = scipy.sparse.diags(m) - dn @ grid.blur @ dn
    matrix = (lam * smooth + scipy.sparse.diags(splat_c)).tocsr()
    b = grid.splat @ (c * t)
    with np.errstate(divide="ignore", invalid="ignore"):
        start = np.where(splat_c > 0, b / splat_c, 0.0)
    return matrix, b, start


def conjugate_gradient(
    matrix,
    b: np.ndarray,
    start: np.ndarray,
    *,
    preconditioner: np.ndarray,
    tol: float,
    maxiter: int,
) -> tuple[np.ndarray, int]:
    """Preconditioned conjugate gradients for a symmetric positive definite ``matrix``.

    Stops when ``‖b − A x‖ ≤ tol · ‖b‖`` or after ``maxiter`` iterations.

    Parameters
    ----------
    matrix : (V, V) sparse or dense
    b, start : (V,) float64
    preconditioner : (V,) float64
        The inverse of a diagonal preconditioner (Jacobi: ``1 / diag(A)``).
    tol : float
    maxiter : int

    Returns
    -------
    x : (V,) float64
    iterations : int
    """
    x = np.array(start, dtype=np.float64)
    r = b - matrix @ x
    threshold = tol * float(np.linalg.norm(b))
    if float(np.linalg.norm(r)) <= threshold:
        return x, 0
    z = preconditioner * r
    p = z.copy()
    rz = float(r @ z)
    for iteration in range(1, int(maxiter) + 1):
        q = matrix @ p
        pq = float(p @ q)
        if pq <= 0:  # direction of no curvature: nothing more to gain
            return x, iteration - 1
        alpha = rz / pq
        x += alpha * p
        r -= alpha * q
        if float(np.linalg.norm(r)) <= threshold:
            return x, iteration
        z = preconditioner * r
        rz_next = float(r @ z)
        p = z + (rz_next / rz) * p
        rz = rz_next
    return x, int(maxiter)


def bilateral_solve(
    reference: np.ndarray,
    target: np.ndarray,
    confidence: np.ndarray | float = defaults.BILATERAL_PARAMS["confidence"],
    *,
    sigma_spatial: float = defaults.BILATERAL_PARAMS["sigma_spatial"],
    sigma_luma: float = defaults.BILATERAL_PARAMS["sigma_luma"],
    sigma_chroma: float = defaults.BILATERAL_PARAMS["sigma_chroma"],
    lam: float = defaults.BILATERAL_PARAMS["lam"],
    diag_min: float = defaults.BILATERAL_PARAMS["diag_min"],
    cg_tol: float = defaults.BILATERAL_PARAMS["cg_tol"],
    cg_maxiter: int = defaults.BILATERAL_PARAMS["cg_maxiter"],
) -> np.ndarray:
    """Edge-aware smoothing of ``target`` guided by ``reference`` (the whole solver).

    Parameters
    ----------
    reference : (H, W, 3) uint8
        The guide image (RGB).
    target : (H, W) float
        Values to smooth (a 0/1 mask for TokenCut).
    confidence : (H, W) float >= 0 or float
        Per-pixel confidence of ``target`` (TokenCut: 0.999 everywhere).
    sigma_spatial, sigma_luma, sigma_chroma, lam, diag_min, cg_tol, cg_maxiter
        See the module docstring; defaults are TokenCut's (``defaults.BILATERAL_PARAMS``).

    Returns
    -------
    (H, W) float64
        The solution ``x`` (not clipped; a 0/1 target gives values near [0, 1]).
    """
    reference = np.asarray(reference)
    target = np.asarray(target, dtype=np.float64)
    if target.shape != reference.shape[:2]:
        raise ValueError(f"target: expected shape {reference.shape[:2]} (the reference's), got {target.shape}")
    confidence = np.broadcast_to(np.asarray(confidence, dtype=np.float64), target.shape)
    diag_min = _check_positive("diag_min", diag_min)
    cg_tol = _check_positive("cg_tol", cg_tol)
    if isinstance(cg_maxiter, bool) or not isinstance(cg_maxiter, (int, np.integer)) or cg_maxiter < 1:
        raise ValueError(f"cg_maxiter: expected an integer >= 1, got {cg_maxiter!r}")
    grid = BilateralGrid.from_image(reference, sigma_spatial=sigma_spatial, sigma_luma=sigma_luma, sigma_chroma=sigma_chroma)
    matrix, b, start = grid_system(grid, target, confidence, lam=lam)
    preconditioner = 1.0 / np.maximum(matrix.diagonal(), diag_min)
    y, _ = conjugate_gradient(matrix, b, start, preconditioner=preconditioner, tol=cg_tol, maxiter=cg_maxiter)
    return (grid.splat.T @ y).reshape(target.shape)


def refine_mask(reference: np.ndarray, mask: np.ndarray, **params) -> np.ndarray:
    """TokenCut's refinement of a mask: :func:`bilateral_solve` of the 0/1 mask with a
    constant confidence (``defaults.BILATERAL_PARAMS["confidence"]``), clipped to [0, 1].

    Threshold the result at 0.5 for a mask: TokenCut's published "TokenCut + bilateral
    solver" numbers score the solver's output that way (their ``get_saliency.py`` keeps
    ``output_solver``; the hole-filled largest component it also computes is only drawn).

    Returns
    -------
    (H, W) float32 in [0, 1]
    """
    settings = {**defaults.BILATERAL_PARAMS, **params}
    confidence = settings.pop("confidence")
    out = bilateral_solve(reference, np.asarray(mask, dtype=np.float64), confidence, **settings)
    return np.clip(out, 0.0, 1.0).astype(np.float32)
