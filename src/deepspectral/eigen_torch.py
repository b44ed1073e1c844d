"""The eigen-step in torch: affinity and eigensolver batched over images of one size, on any device.

The same computation as :func:`deepspectral.spectral.decompose` (numba / scipy on the CPU),
written with torch tensors so that it runs where the backbone runs (a GPU) and on several
images of one size bucket at once:

1. **Feature affinity** (:func:`feature_affinity`): patch features L2-normalised, resized to
   the working grid by the bilinear operator of :func:`deepspectral.geometry.linear_taps`
   (``align_corners=False``, the same weights as the numpy path) as two small dense
   matrices, then ``max(F Fᵀ, 0)``: the exact identity ``(U f)(U f)ᵀ = U (f fᵀ) Uᵀ`` makes
   this the numpy path's ``U G Uᵀ``, in another order of float32 rounding.
2. **KNN colour affinity** (:func:`knn_affinity`): brute-force neighbours over all pairs of
   the grid (a few thousand nodes), squared distances in float64 summed in the order of the
   compiled ring search (r, g, b, x, y), ties at the k-th distance broken as the ring search
   breaks them (nearer ring first, then the smaller index); binary or soft weights;
   ``A + Aᵀ`` per setting, as :func:`deepspectral.affinity.knn_affinity`.
3. **Eigensolver** (:func:`laplacian_eigenvectors`): the problem of
   :func:`deepspectral.eigen.laplacian_eigenvectors` — largest eigenpairs of
   ``M = D^-1/2 W D^-1/2`` with the top one (``v₀ ∝ D^1/2 1``) deflated to ``μ = -1`` —
   solved by a restarted block Krylov method (below) on the whole batch at once, or by
   dense ``eigh`` (float64) on grids of at most ``DENSE_SOLVER_MAX_NODES`` nodes, as the
   CPU path does. ``torch.lobpcg`` is not used: it solves a batch one matrix after the
   other (a Python loop in torch 2.14) and takes no constraint to keep ``v₀`` out.

   *Restarted block Krylov*: a block ``X`` of ``K - 1 +`` :data:`BLOCK_GUARD` vectors
   (a seeded random start, the same for every image, so an image's result does not depend
   on its batch) is grown into the basis ``[X, M'X, …, M'^s X]`` (``s`` =
   :data:`KRYLOV_STEPS`; each block orthogonalised twice against the basis, then made
   orthonormal by Cholesky QR), Rayleigh-Ritz on it (the small problems in float64 on the
   CPU, the basis's Gram matrix whitened so that a lost direction cannot spoil it), and
   the top Ritz vectors restart it. Every product is a batched ``(B, N, N) @ (B, N, b)``: on a GPU reading ``W`` once
   per block product is the cost, so the guard vectors are almost free and speed up
   convergence. It stops when every wanted Ritz pair of every image has a residual
   ``‖M'x - θx‖ ≤ tol``; an image that has not converged after :data:`MAX_RESTARTS`
   falls back to dense ``eigh`` (up to ``DENSE_FALLBACK_MAX_NODES`` nodes) or fails.

A recipe whose graph is built otherwise (e.g. TokenCut's dense patch-grid affinity) calls
:func:`laplacian_eigenvectors` on its own ``(B, N, N)`` affinity: it solves the same
generalised problem ``(D - W) y = λ D y``.

This module is maths on tensors: torch, numpy and the package's maths modules only.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Sequence

import numpy as np
import torch

from . import defaults
from .eigen import DEGREE_FLOOR, DENSE_FALLBACK_MAX_NODES, DENSE_SOLVER_MAX_NODES
from .features import PatchFeatures
from .geometry import linear_taps
from .spectral import Decomposition, check_decomposition_settings, check_grid_size, orient_eigenvectors

__all__ = [
    "BLOCK_GUARD",
    "KRYLOV_STEPS",
    "MAX_RESTARTS",
    "TOL",
    "BATCH_BYTES",
    "interpolation_matrix",
    "feature_affinity",
    "knn_affinity",
    "grid_affinity",
    "laplacian_eigenvectors",
    "decompose_batch",
]

#: Extra vectors in the Krylov block beyond the ``K - 1`` wanted: the convergence rate
#: depends on the gap to the first eigenvalue outside the block, and on a GPU a wider
#: block costs little (a product reads ``W`` once whatever its width).
BLOCK_GUARD = 12
#: Krylov steps per restart (basis ``[X, M'X, …, M'^s X]``, a polynomial of degree ``s``
#: per restart). With BLOCK_GUARD, measured (block products to converge, K = 5, one
#: 52x80-grid affinity of a COCO photo with random features, CPU) for (steps, guard):
#: (6, 4) 103, (12, 4) 73, (20, 4) 61, (8, 8) 57, (12, 8) 49, (16, 8) 49, (8, 12) 41,
#: (12, 12) 37; (8, 12) keeps the basis (144 vectors) small.
KRYLOV_STEPS = 8
#: Restarts before an image is declared not converged (dense fallback or error).
MAX_RESTARTS = 60
#: Residual ``‖M'x - θx‖`` (unit ``x``) at which a Ritz pair counts as converged: the
#: eigenvector error is about ``tol / eigengap``, so 1e-5 keeps |cos| ≥ 0.999 to the exact
#: eigenvector down to gaps of 1e-3, like the CPU path's ``LANCZOS_TOL``.
TOL = 1e-5
#: Rough largest memory (bytes) the tensors of one batch of :func:`decompose_batch` may
#: take (at the peak, in the KNN search, about ``32 N²`` bytes an image: the float32
#: affinity, float64 distances and a float64 temporary, float32 neighbour counts); bigger
#: buckets are split.
BATCH_BYTES = 4 << 30


def interpolation_matrix(n_in: int, n_out: int) -> np.ndarray:
    """:func:`deepspectral.geometry.linear_taps` (torch's bilinear, ``align_corners=False``)
    as a dense ``(n_out, n_in) float32`` matrix, rows summing to 1."""
    index, weight = linear_taps(n_in, n_out)
    matrix = np.zeros((n_out, n_in), np.float32)
    rows = np.arange(n_out)
    np.add.at(matrix, (rows, index[:, 0]), weight[:, 0])
    np.add.at(matrix, (rows, index[:, 1]), weight[:, 1])
    return matrix


def feature_affinity(features: torch.Tensor, grid_size: tuple[int, int]) -> torch.Tensor:
    """Deep-feature affinity ``max(f̂ f̂ᵀ, 0)`` on the working grid (Eq. 2), batched.

    Parameters
    ----------
    features : (B, h_p, w_p, C) float tensor
        Patch features (any float dtype; the product is computed in this dtype).
    grid_size : (h, w)
        Working grid (the patch grid or finer).

    Returns
    -------
    (B, h * w, h * w) tensor, symmetric, non-negative, same dtype and device.
    """
    if features.ndim != 4:
        raise ValueError(f"features: expected shape (B, h, w, C), got {tuple(features.shape)}")
    batch, hp, wp, channels = features.shape
    h, w = int(grid_size[0]), int(grid_size[1])
    f = features / features.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    if (hp, wp) != (h, w):
        uy = torch.from_numpy(interpolation_matrix(hp, h)).to(f)
        ux = torch.from_numpy(interpolation_matrix(wp, w)).to(f)
        f = torch.einsum("yi,bijc->byjc", uy, f)
        f = torch.einsum("xj,byjc->byxc", ux, f)
    f = f.reshape(batch, h * w, channels)
    return torch.bmm(f, f.transpose(1, 2)).clamp_min_(0.0)


def _squared_distances(points: torch.Tensor) -> torch.Tensor:
    """``(B, N, N) float64`` squared distances between the rows of ``points (B, N, 5)``,
    summed dimension by dimension in the order of the compiled ring search (so that equal
    distances there are equal here)."""
    points = points.to(torch.float64)
    total = None
    for dim in range(points.shape[-1]):
        column = points[..., dim]
        diff = column[:, :, None] - column[:, None, :]
        total = diff.square_() if total is None else total.add_(diff.square_())
    return total


def _nearest(squared: torch.Tensor, k: int, w: int) -> torch.Tensor:
    """Indices ``(B, N, k)`` of the ``k`` smallest of each row of ``squared (B, N, N)``,
    ties at the k-th value going to the nearer ring around the row's pixel (Chebyshev
    distance on a grid ``w`` wide), then to the smaller index: the order in which the
    compiled ring search offers candidates (first come, first kept)."""
    values, nearest = torch.topk(squared, k, dim=-1, largest=False)
    kth = values[..., -1:]
    tied = (squared == kth).sum(dim=-1) > 1  # the k-th value is shared: the set is ambiguous
    if bool(tied.any()):
        image, row = torch.nonzero(tied, as_tuple=True)
        n = squared.shape[-1]
        cells = torch.arange(n, device=squared.device)
        ring = torch.maximum(
            (cells[None, :] // w - row[:, None] // w).abs(), (cells[None, :] % w - row[:, None] % w).abs()
        )
        rank = (ring * n + cells[None, :]).to(torch.float64)
        rows, limit = squared[image, row], kth[image, row]
        key = torch.where(rows < limit, -1.0, torch.where(rows == limit, rank, torch.inf))
        nearest[image, row] = torch.topk(key, k, dim=-1, largest=False).indices
    return nearest


def knn_affinity(
    colours: torch.Tensor,
    *,
    settings: tuple[tuple[int, float], ...] = defaults.KNN_SETTINGS,
    kernel: str = defaults.KNN_KERNEL,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """KNN-matting colour affinity ``W_knn`` of a batch of small images, as dense matrices.

    The graph of :func:`deepspectral.affinity.knn_affinity`: every pixel is the point
    ``(r, g, b, s·x, s·y)`` (x, y in ``linspace(0, 1)``, float32 as there), joined to its
    ``k`` nearest neighbours (itself included) for each ``(k, s)`` in ``settings``, each
    pair weighted in both directions, repeated pairs adding up. Brute force over all
    pairs; ties at the k-th distance go to the nearer ring, then to the smaller index (the
    compiled ring search's order; where the CPU path uses a k-d tree, ``s = 0.1`` on grids
    wider than 33 cells, its order among exactly equal distances may differ).

    Parameters
    ----------
    colours : (B, h, w, 3) float tensor in [0, 1]
        The images on the working grid (:meth:`deepspectral.geometry.ImageGeometry.grid_colours`).
    settings : tuple of (k, spatial_weight)
    kernel : {"binary", "soft"}
    dtype : torch dtype of the result

    Returns
    -------
    (B, h * w, h * w) tensor of ``dtype``, symmetric.
    """
    if kernel not in defaults.KNN_KERNELS:
        raise ValueError(f"kernel: expected one of {defaults.KNN_KERNELS}, got {kernel!r}")
    if colours.ndim != 4 or colours.shape[-1] != 3:
        raise ValueError(f"colours: expected shape (B, h, w, 3), got {tuple(colours.shape)}")
    batch, h, w, _ = colours.shape
    n = h * w
    device = colours.device
    rgb = colours.to(torch.float32).reshape(batch, n, 3)
    affinity = torch.zeros((batch, n, n), dtype=dtype, device=device)
    for k, spatial_weight in settings:
        if k < 1:
            raise ValueError(f"settings: neighbour count must be >= 1, got {k}")
        k = min(int(k), n)
        # the float32 coordinates of affinity._colour_space_points / image_knn
        xs = torch.from_numpy(np.tile(spatial_weight * np.linspace(0.0, 1.0, w, dtype=np.float32), h))
        ys = torch.from_numpy(np.repeat(spatial_weight * np.linspace(0.0, 1.0, h, dtype=np.float32), w))
        space = torch.stack([xs, ys], dim=-1).to(device=device, dtype=torch.float32)
        points = torch.cat([rgb, space.expand(batch, n, 2)], dim=-1)
        squared = _squared_distances(points)
        neighbours = _nearest(squared, k, w)
        if kernel == "binary":
            weights = torch.ones(neighbours.shape, dtype=dtype, device=device)
        else:
            distance = torch.gather(squared, -1, neighbours).sqrt_().to(torch.float32)
            weights = (1.0 - distance).clamp_min_(0.0).to(dtype)
        del squared
        pairs = torch.zeros((batch, n, n), dtype=dtype, device=device)
        pairs.scatter_add_(-1, neighbours, weights)
        affinity += pairs
        affinity += pairs.transpose(1, 2)
    return affinity


def grid_affinity(
    features: torch.Tensor,
    colours: torch.Tensor,
    *,
    knn_lambda: float = defaults.KNN_LAMBDA,
    knn_kernel: str = defaults.KNN_KERNEL,
) -> torch.Tensor:
    """The fused affinity ``W = W_feat + λ_knn · W_knn`` (Eq. 3) of a batch of images of
    one size, on their working grid (:func:`deepspectral.spectral.grid_affinity`, batched).

    Parameters
    ----------
    features : (B, h_p, w_p, C) float tensor
        Patch features; their dtype is the affinity's.
    colours : (B, h, w, 3) float tensor in [0, 1]
        The images' colours on the working grid ``(h, w)``.
    knn_lambda : float, default 10
    knn_kernel : {"binary", "soft"}

    Returns
    -------
    (B, h * w, h * w) tensor, symmetric (both triangles filled).
    """
    if knn_lambda < 0:
        raise ValueError(f"knn_lambda: expected a value >= 0, got {knn_lambda}")
    grid = (int(colours.shape[1]), int(colours.shape[2]))
    check_grid_size(grid)
    affinity = feature_affinity(features, grid)
    if knn_lambda > 0:
        affinity.add_(knn_affinity(colours, kernel=knn_kernel, dtype=affinity.dtype), alpha=float(knn_lambda))
    return affinity


# ---------------------------------------------------------------------------------------
# Eigensolver
# ---------------------------------------------------------------------------------------


def _deflated_product(scaled: torch.Tensor, top: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``(M - 2 v₀ v₀ᵀ) x`` for ``M (B, N, N)``, ``v₀ (B, N)``, ``x (B, N, m)``."""
    return torch.baddbmm(torch.bmm(scaled, x), top[:, :, None], top[:, None, :] @ x, alpha=-2.0)


def _orthonormal(block: torch.Tensor) -> torch.Tensor:
    """``block (B, N, b)`` with orthonormal columns spanning (about) the same space.

    Cholesky QR on the ``(b, b)`` Gram matrix (float64); when a column has (nearly)
    vanished, e.g. a direction that has converged, the Gram matrix is singular and the
    columns are instead taken one by one (Gram-Schmidt, each normalised, so a vanished
    column becomes a unit vector of rounding noise, a fresh direction once the caller
    projects it again)."""
    gram = (block.transpose(1, 2) @ block).to(torch.float64)
    factor, info = torch.linalg.cholesky_ex(gram)
    if not bool((info != 0).any()):
        eye = torch.eye(gram.shape[-1], dtype=torch.float64, device=gram.device).expand_as(gram)
        inverse = torch.linalg.solve_triangular(factor, eye, upper=False).transpose(1, 2)
        return block @ inverse.to(block.dtype)
    columns: list[torch.Tensor] = []
    for j in range(block.shape[-1]):
        column = block[:, :, j : j + 1]
        for previous in columns:
            column = column - previous * (previous.transpose(1, 2) @ column)
        columns.append(column / column.norm(dim=1, keepdim=True).clamp_min(1e-30))
    return torch.cat(columns, dim=-1)


def _orthogonalise(block: torch.Tensor, basis: torch.Tensor | None) -> torch.Tensor:
    """``block (B, N, b)`` made orthonormal and orthogonal to the orthonormal columns of
    ``basis (B, N, m)`` (block classical Gram-Schmidt and :func:`_orthonormal`, twice)."""
    for _ in range(2):
        if basis is not None:
            block = block - basis @ (basis.transpose(1, 2) @ block)
        block = _orthonormal(block)
    return block


def _rayleigh_ritz(basis: torch.Tensor, products: torch.Tensor, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``width`` largest Ritz pairs of the operator on the span of ``basis (B, N, m)``
    (``products``: the operator applied to it), as ``(θ (B, width) float64 on the CPU,
    coefficients (B, m, width))``. The small problems are solved in float64 on the CPU;
    the basis need not be exactly orthonormal: its Gram matrix is whitened, directions it
    has lost (Gram eigenvalue below 1e-7 of the largest) dropped."""
    gram = (basis.transpose(1, 2) @ basis).to(device="cpu", dtype=torch.float64)
    small = (basis.transpose(1, 2) @ products).to(device="cpu", dtype=torch.float64)
    g, u = torch.linalg.eigh(0.5 * (gram + gram.transpose(1, 2)))
    kept = g > 1e-7 * g[:, -1:]
    whiten = u * torch.where(kept, g.clamp_min(1e-300).rsqrt(), 0.0)[:, None, :]
    projected = whiten.transpose(1, 2) @ (0.5 * (small + small.transpose(1, 2))) @ whiten
    projected = projected - torch.diag_embed(torch.where(kept, 0.0, 4.0))  # lost directions: below [-1, 1]
    theta, vectors = torch.linalg.eigh(projected)
    coefficients = whiten @ vectors[:, :, -width:].flip(-1)
    return theta[:, -width:].flip(-1), coefficients.to(device=basis.device, dtype=basis.dtype)


def _krylov(
    scaled: torch.Tensor, top: torch.Tensor, k: int, tol: float, seed: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Largest ``k`` eigenpairs of ``M' = M - 2 v₀ v₀ᵀ`` for each matrix of the batch by the
    restarted block Krylov method of the module docstring.

    Returns
    -------
    mu : (B, k) float64, descending
    v : (B, N, k) in the matrices' dtype
    converged : (B,) bool
    """
    batch, n, _ = scaled.shape
    dtype, device = scaled.dtype, scaled.device
    steps = KRYLOV_STEPS
    width = min(k + BLOCK_GUARD, n // (steps + 1))
    generator = torch.Generator().manual_seed(seed)
    start = torch.randn((n, width), generator=generator, dtype=torch.float64)
    block = start.to(device=device, dtype=dtype).expand(batch, n, width)
    block = block - top[:, :, None] * (top[:, None, :] @ block)
    block = _orthogonalise(block, None)
    product = _deflated_product(scaled, top, block)
    converged = torch.zeros(batch, dtype=torch.bool)
    mu = torch.zeros((batch, k), dtype=torch.float64)
    for _ in range(MAX_RESTARTS):
        v_all, p_all = block, product
        for _ in range(steps):
            following = _orthogonalise(p_all[:, :, -width:], v_all)
            v_all = torch.cat([v_all, following], dim=-1)
            p_all = torch.cat([p_all, _deflated_product(scaled, top, following)], dim=-1)
        theta, keep = _rayleigh_ritz(v_all, p_all, width)
        block, product = v_all @ keep, p_all @ keep
        residual = product[:, :, :k] - block[:, :, :k] * theta[:, None, :k].to(device=device, dtype=dtype)
        norms = residual.norm(dim=1).to(device="cpu", dtype=torch.float64)
        mu = theta[:, :k]
        converged = (norms <= tol).all(dim=1)
        if bool(converged.all()):
            break
    return mu, block[:, :, :k], converged


def _dense_eigenpairs(scaled: torch.Tensor, top: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Largest ``k`` eigenpairs of ``M - 2 v₀ v₀ᵀ`` by dense ``eigh`` in float64:
    ``(μ (B, k) descending, v (B, N, k))``."""
    matrix = scaled.to(torch.float64)
    top64 = top.to(torch.float64)
    matrix = matrix - 2.0 * top64[:, :, None] * top64[:, None, :]
    matrix = 0.5 * (matrix + matrix.transpose(1, 2))
    values, vectors = torch.linalg.eigh(matrix)
    return values[:, -k:].flip(-1).cpu(), vectors[:, :, -k:].flip(-1)


def laplacian_eigenvectors(
    affinity: torch.Tensor,
    n_eigenvectors: int,
    *,
    tol: float = TOL,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Smallest eigenpairs of ``(D - W) y = λ D y`` for a batch of dense affinities.

    The batched torch counterpart of :func:`deepspectral.eigen.laplacian_eigenvectors`
    (see the module docstring for the method); also the entry point for recipes with their
    own dense affinity (e.g. TokenCut's patch-grid graph).

    Parameters
    ----------
    affinity : (B, N, N) float tensor
        ``W``: symmetric, non-negative, both triangles filled; float32 or float64, on any
        device (the products run there, in this dtype). Not modified.
    n_eigenvectors : int >= 1
        K, the number of eigenpairs (the constant one included); capped at N.
    tol : float > 0, default :data:`TOL`
        Residual norm of a converged Ritz pair.
    seed : int, default 0
        Seeds the start block.

    Returns
    -------
    eigenvalues : (B, K) float64
        Ascending, in ``[0, 2]``, the first 0.
    eigenvectors : (B, K, N) float32
        ``D``-orthonormal, signs not yet fixed.

    Raises
    ------
    RuntimeError
        An image's solver did not converge and its graph is too large for the dense fallback.
    """
    if isinstance(n_eigenvectors, bool) or not isinstance(n_eigenvectors, (int, np.integer)) or n_eigenvectors < 1:
        raise ValueError(f"n_eigenvectors: expected an integer >= 1, got {n_eigenvectors!r}")
    if not isinstance(affinity, torch.Tensor) or affinity.ndim != 3 or affinity.shape[1] != affinity.shape[2]:
        raise ValueError(f"affinity: expected a (B, N, N) tensor, got {getattr(affinity, 'shape', type(affinity))}")
    if not affinity.is_floating_point():
        affinity = affinity.to(torch.float64)
    if not (np.isfinite(tol) and tol > 0):
        raise ValueError(f"tol: expected a finite value > 0, got {tol!r}")
    batch, n, _ = affinity.shape
    k = min(int(n_eigenvectors), n)
    degree = affinity.sum(dim=-1, dtype=torch.float64).clamp_min(DEGREE_FLOOR)
    inv_sqrt = degree.rsqrt()
    top = (degree / degree.sum(dim=-1, keepdim=True)).sqrt()  # v₀ of M, unit norm
    values = torch.ones((batch, k), dtype=torch.float64)
    vectors = torch.empty((batch, n, k), dtype=torch.float64, device=affinity.device)
    vectors[:, :, 0] = top
    if k > 1:
        scale = inv_sqrt.to(affinity.dtype)
        scaled = affinity * scale[:, :, None] * scale[:, None, :]
        if n <= DENSE_SOLVER_MAX_NODES or k - 1 >= n - 1:
            mu, v = _dense_eigenpairs(scaled, top, k - 1)
        else:
            mu, v, converged = _krylov(scaled, top.to(affinity.dtype), k - 1, tol, seed)
            mu, v = mu.clone(), v.to(torch.float64)
            for index in torch.nonzero(~converged).flatten().tolist():
                if n > DENSE_FALLBACK_MAX_NODES:
                    raise RuntimeError(f"the eigensolver did not converge on a {n}-node graph")
                mu[index : index + 1], v[index : index + 1] = _dense_eigenpairs(
                    scaled[index : index + 1], top[index : index + 1].to(affinity.dtype), k - 1
                )
        values[:, 1:] = mu
        vectors[:, :, 1:] = v
    eigenvalues = (1.0 - values).clamp(0.0, 2.0)
    eigenvalues[:, 0] = 0.0
    eigenvectors = (vectors * inv_sqrt[:, :, None]).transpose(1, 2).to(torch.float32)
    return eigenvalues.numpy(), eigenvectors.cpu().numpy()


# ---------------------------------------------------------------------------------------
# Decompositions of a batch of images
# ---------------------------------------------------------------------------------------


def decompose_batch(
    features: Sequence[PatchFeatures],
    images: Sequence,
    *,
    knn_lambda: float = defaults.KNN_LAMBDA,
    n_eigenvectors: int = defaults.N_EIGENVECTORS,
    knn_kernel: str = defaults.KNN_KERNEL,
    device="cpu",
    dtype: torch.dtype = torch.float32,
) -> list[Decomposition]:
    """:func:`deepspectral.spectral.decompose` of several images at once, on ``device``.

    Images are grouped by size (patch grid and working grid); each group runs as one batch
    (split when it would take more than about :data:`BATCH_BYTES`).

    Parameters
    ----------
    features : sequence of PatchFeatures
    images : sequence of PIL.Image.Image or (H, W, 3) uint8
        The original images, one per entry of ``features``.
    knn_lambda, n_eigenvectors, knn_kernel
        As in :func:`deepspectral.spectral.decompose`.
    device : str or torch.device, default "cpu"
        Where the affinity and the eigensolver run (the backbone's device).
    dtype : torch.float32 or torch.float64
        Arithmetic of the affinity and the solver's products (the small Rayleigh-Ritz
        problems and the dense solver are float64 whatever it is).

    Returns
    -------
    list of Decomposition
        In the order of ``features``; ``settings`` records ``eigen_backend: "torch"``.
    """
    if len(features) != len(images):
        raise ValueError(f"images: expected one image per entry of features ({len(features)}), got {len(images)}")
    for feats in features:
        if not isinstance(feats, PatchFeatures):
            raise ValueError(f"features: expected PatchFeatures, got {type(feats).__name__}")
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"dtype: expected torch.float32 or torch.float64, got {dtype!r}")
    check_decomposition_settings(knn_lambda=knn_lambda, n_eigenvectors=n_eigenvectors, knn_kernel=knn_kernel)
    device = torch.device(device)
    groups: dict[tuple, list[int]] = defaultdict(list)
    for index, feats in enumerate(features):
        groups[(feats.features.shape, feats.geometry.grid_size)].append(index)
    out: list[Decomposition | None] = [None] * len(features)
    for (_, grid), indices in groups.items():
        n = grid[0] * grid[1]
        check_grid_size(grid)
        per_batch = max(1, BATCH_BYTES // (32 * n * n))
        for start in range(0, len(indices), per_batch):
            chunk = indices[start : start + per_batch]
            for index, decomposition in zip(
                chunk,
                _decompose_group([features[i] for i in chunk], [images[i] for i in chunk],
                                 knn_lambda, n_eigenvectors, knn_kernel, device, dtype),
            ):  # fmt: skip
                out[index] = decomposition
    return out  # type: ignore[return-value]


def _decompose_group(features, images, knn_lambda, n_eigenvectors, knn_kernel, device, dtype) -> list[Decomposition]:
    """Decompositions of images of one size, as one batch."""
    geometry = features[0].geometry
    grid = geometry.grid_size
    colours = np.stack([feats.geometry.grid_colours(image) for feats, image in zip(features, images)])
    stacked = np.stack([np.asarray(feats.features, dtype=np.float32) for feats in features])
    with torch.no_grad():
        affinity = grid_affinity(
            torch.from_numpy(stacked).to(device=device, dtype=dtype),
            torch.from_numpy(colours).to(device=device),
            knn_lambda=knn_lambda,
            knn_kernel=knn_kernel,
        )
        eigenvalues, eigenvectors = laplacian_eigenvectors(affinity, n_eigenvectors)
    decompositions = []
    for feats, values, vectors in zip(features, eigenvalues, eigenvectors):
        settings = {
            "backbone": feats.backbone,
            "block": feats.block,
            "feature": feats.feature,
            "knn_lambda": float(knn_lambda),
            "knn_kernel": knn_kernel,
            "n_eigenvectors": int(n_eigenvectors),
            "eigen_backend": "torch",
        }
        decompositions.append(
            Decomposition(
                eigenvalues=np.ascontiguousarray(values),
                eigenvectors=orient_eigenvectors(np.ascontiguousarray(vectors).reshape(-1, *grid)),
                image_size=tuple(feats.image_size),
                input_size=tuple(feats.input_size),
                crop_size=tuple(feats.crop_size),
                patch_size=feats.patch_size,
                settings=settings,
            )
        )
    return decompositions
