"""Spectral decomposition: eigenvectors of the normalised Laplacian of the fused affinity.

``decompose`` is the paper's Sec. 3.2: ``W = W_feat + λ_knn · W_knn`` on the working grid
(1/8 of the cropped image), then the smallest eigenpairs of the generalised problem
``(D - W) y = λ D y``. The solver works on ``M = D^-1/2 W D^-1/2`` (largest eigenvalues
``μ = 1 - λ``) with the known top eigenvector deflated, which returns the same eigenpairs
as the reference's shift-invert ``eigsh(D - W, k, sigma=0, M=D)`` without a factorisation
(the solver is :func:`deepspectral.eigen.laplacian_eigenvectors`).
"""

from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass, field

import numpy as np

from . import defaults
from .affinity import add_symmetric_pairs, feature_affinity, knn_pairs
from .eigen import laplacian_eigenvectors
from .features import PatchFeatures
from .geometry import ImageGeometry

__all__ = [
    "Decomposition",
    "decompose",
    "affinity_matrix",
    "grid_affinity",
    "check_grid_size",
    "check_decomposition_settings",
    "resolve_eigen_backend",
    "orient_eigenvectors",
    "coarse_mask",
    "ncut_sweep",
]


@dataclass(frozen=True)
class Decomposition:
    """Eigenvectors of one image and what is needed to map them back to its pixels.

    Attributes
    ----------
    eigenvalues : (K,) float64
        Ascending generalised eigenvalues of ``(D - W) y = λ D y``; the first is 0.
    eigenvectors : (K, h, w) float32
        Eigenvectors on the working grid, ``D``-orthonormal, index 0 constant. Sign: the
        positive side of each is the minority of the grid (the reference's convention).
    image_size : (H, W)
        Original image size.
    input_size : (H_in, W_in)
        Image size after the ``max_size`` resize (pixels the decomposition saw).
    crop_size : (H_c, W_c)
        Input image cropped to a multiple of the patch size (bottom rows / right columns
        dropped); the grid covers exactly this area. Larger than ``input_size`` when the
        input was zero-padded instead (TokenCut's boxes, ``ImageGeometry.fit == "pad"``).
    patch_size : int
    settings : dict
        Backbone and decomposition settings that produced it.
    """

    eigenvalues: np.ndarray
    eigenvectors: np.ndarray
    image_size: tuple[int, int]
    input_size: tuple[int, int]
    crop_size: tuple[int, int]
    patch_size: int
    settings: dict = field(default_factory=dict)

    @property
    def grid_size(self) -> tuple[int, int]:
        """Working grid ``(h, w)``."""
        return (int(self.eigenvectors.shape[1]), int(self.eigenvectors.shape[2]))

    @property
    def geometry(self) -> ImageGeometry:
        """The sizes of the image and the maps between them (see :mod:`deepspectral.geometry`);
        a crop larger than the input means a zero-padded input (``fit="pad"``)."""
        padded = self.crop_size[0] > self.input_size[0] or self.crop_size[1] > self.input_size[1]
        return ImageGeometry(self.image_size, self.input_size, self.patch_size, "pad" if padded else "crop")


_WORKSPACE = threading.local()
#: Largest affinity buffer kept between calls (per thread): 7,500 nodes = 225 MB, the
#: default max_size's largest grid.
_WORKSPACE_MAX_NODES = 7_600


def _workspace(n: int) -> np.ndarray | None:
    """A per-thread ``(n, n)`` float32 buffer reused across images (a fresh 25-200 MB
    array costs thousands of page faults, a large share of the eigen-step); ``None``
    (allocate normally) above :data:`_WORKSPACE_MAX_NODES`."""
    if n > _WORKSPACE_MAX_NODES:
        return None
    buffer = getattr(_WORKSPACE, "buffer", None)
    if buffer is None or buffer.size < n * n:
        buffer = _WORKSPACE.buffer = np.empty(n * n, np.float32)
    return buffer[: n * n].reshape(n, n)


_BLAS_LOCK = threading.Lock()
_BLAS_STATE: dict = {"controller": None, "users": 0, "limiter": None}


@contextlib.contextmanager
def single_threaded_blas():
    """Context limiting BLAS (OpenBLAS / MKL) to one thread while any thread is inside it.

    For runs where several eigen-steps run at once (:class:`deepspectral.engine.Engine`
    with ``workers > 1`` holds it for the whole run): each eigensolver's BLAS calls are
    memory-bound matrix-vector products, and a second BLAS thread per image, spinning
    between calls, takes the core that another image's eigen-step or the backbone needs.
    For the paper's recipe hold it over a whole run rather than per image: its eigen-step
    is slower with one thread. The binary-graph recipes take it around each small
    eigensolve (:func:`deepspectral.recipes.tokencut.one_blas_thread_for`), where numpy's
    and scipy's BLAS pools would otherwise spin against each other. The limit is
    reference-counted, so concurrent users never see it lifted midway, and the caller's
    setting is restored when the last one leaves.
    """
    from threadpoolctl import ThreadpoolController

    with _BLAS_LOCK:
        if _BLAS_STATE["controller"] is None:
            _BLAS_STATE["controller"] = ThreadpoolController()
        if _BLAS_STATE["users"] == 0:
            _BLAS_STATE["limiter"] = _BLAS_STATE["controller"].limit(limits=1, user_api="blas")
        _BLAS_STATE["users"] += 1
    try:
        yield
    finally:
        with _BLAS_LOCK:
            _BLAS_STATE["users"] -= 1
            if _BLAS_STATE["users"] == 0:
                _BLAS_STATE["limiter"].restore_original_limits()
                _BLAS_STATE["limiter"] = None


def affinity_matrix(
    features: np.ndarray,
    image_small: np.ndarray,
    *,
    knn_lambda: float = defaults.KNN_LAMBDA,
    knn_kernel: str = defaults.KNN_KERNEL,
    upper_only: bool = False,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Fused affinity ``W = W_feat + λ_knn · W_knn`` (Eq. 3) as a dense matrix.

    Parameters
    ----------
    features : (h_p, w_p, C) float
        Patch features (normalised and resized to the grid here).
    image_small : (h, w, 3) float in [0, 1]
        The cropped image resized to the working grid ``(h, w)``.
    upper_only : bool, default False
        Fill only the upper triangle (``j >= i``); what :func:`laplacian_eigenvectors`
        needs with ``upper_only=True``.
    out : (h * w, h * w) float32, optional
        Buffer to write into (see :func:`deepspectral.affinity.feature_affinity`).

    Returns
    -------
    (h * w, h * w) float32
    """
    if knn_lambda < 0:
        raise ValueError(f"knn_lambda: expected a value >= 0, got {knn_lambda}")
    grid = image_small.shape[:2]
    if knn_lambda == 0:
        return feature_affinity(features, grid, upper_only=upper_only, out=out)
    # one after the other, each on every core: run side by side, the neighbour searches,
    # the BLAS product and the numba kernels oversubscribe the cores (measured slower).
    # The colour search first, so that the feature product's BLAS call comes last,
    # right before the eigensolver's (an idle BLAS thread spins for a while after a call).
    colour_pairs = list(knn_pairs(image_small, kernel=knn_kernel))
    affinity = feature_affinity(features, grid, upper_only=upper_only, out=out)
    for rows, cols, weights in colour_pairs:
        add_symmetric_pairs(affinity, rows, cols, knn_lambda * weights, upper_only=upper_only)
    return affinity


def orient_eigenvectors(eigenvectors: np.ndarray) -> np.ndarray:
    """Fix the sign of each eigenvector: first deterministically (largest-magnitude entry
    positive), then the reference's rule: flip when the positive part covers more than
    half, and less than all, of the grid. Works on ``(K, ...)`` arrays, in place."""
    flat = eigenvectors.reshape(len(eigenvectors), -1)
    for vector in flat:
        if vector[np.argmax(np.abs(vector))] < 0:
            vector *= -1
        positive = float(np.mean(vector > 0))
        if 0.5 < positive < 1.0:
            vector *= -1
    return eigenvectors


def coarse_mask(decomposition: Decomposition, index: int = 1) -> np.ndarray:
    """``y_index > 0`` on the working grid, ``(h, w) bool``: the minority side of the
    eigenvector by the sign convention (the Fiedler vector's by default). A grid with no
    more than ``index`` cells has no such eigenvector: the whole grid is returned.

    Raises
    ------
    ValueError
        When the decomposition was computed with too few eigenvectors for ``index``
        (e.g. ``n_eigenvectors=1``: the constant one only).
    """
    count = decomposition.eigenvectors.shape[0]
    if count <= index:
        grid_nodes = int(np.prod(decomposition.grid_size))
        if grid_nodes > count:
            raise ValueError(
                f"decomposition: has {count} eigenvector(s) but this needs eigenvector {index}; "
                f"decompose with n_eigenvectors >= {index + 1}"
            )
        return np.ones(decomposition.grid_size, dtype=bool)
    return decomposition.eigenvectors[index] > 0


def ncut_sweep(vector: np.ndarray, affinity) -> np.ndarray:
    """Split an eigenvector where the normalised cut is smallest (Shi & Malik's splitting point).

    The nodes are ranked by ``vector`` (descending); of the ``N - 1`` splits "the first
    ``s + 1`` against the rest" the one with the smallest
    ``Ncut(A, B) = cut(A, B) / vol(A) + cut(A, B) / vol(B)`` is returned. Thresholding the
    Fiedler vector at 0 instead (the localization's rule) puts a small object's colour
    neighbours on its side as well: the vector's values outside a small object are
    close to 0 and the colour edges lift them above it.

    Parameters
    ----------
    vector : (...) float
        One value per node (e.g. the Fiedler vector ``y₁`` on the grid).
    affinity : (N, N) float32 array
        The affinity the vector comes from, read in its upper triangle only (as filled by
        :func:`grid_affinity` or ``affinity_matrix(..., upper_only=True)``).

    Returns
    -------
    (...) bool
        The side of the best split that holds the largest values of ``vector``
        (all True when there are fewer than 2 nodes).
    """
    values = np.asarray(vector, dtype=np.float64)
    flat = values.reshape(-1)
    n = flat.size
    if n < 2:
        return np.ones(values.shape, bool)
    if not np.all(np.isfinite(flat)):
        raise ValueError("vector: expected finite values")
    order = np.argsort(-flat, kind="stable")
    rank = np.empty(n, np.int64)
    rank[order] = np.arange(n)
    matrix = np.asarray(affinity, dtype=np.float32)
    if matrix.shape != (n, n):
        raise ValueError(f"affinity: expected shape {(n, n)}, got {matrix.shape}")
    from . import _kernels

    diff, degree = np.zeros(n + 1, np.float64), np.zeros(n, np.float64)
    _kernels.dense_cut_profile(matrix, rank, diff, degree)
    cut = np.cumsum(diff[: n - 1])
    volume = np.cumsum(degree[order])[: n - 1]
    rest = float(degree.sum()) - volume
    with np.errstate(divide="ignore", invalid="ignore"):
        ncut = cut / volume + cut / rest
    ncut[~np.isfinite(ncut)] = np.inf
    if not np.isfinite(ncut).any():  # no edges at all: the sign decides
        return values > 0
    split = int(np.argmin(ncut))
    return (rank <= split).reshape(values.shape)


def check_decomposition_settings(*, knn_lambda: float, n_eigenvectors: int, knn_kernel: str) -> None:
    """Raise ``ValueError`` naming the argument when a setting of :func:`decompose` is invalid."""
    if isinstance(n_eigenvectors, bool) or not isinstance(n_eigenvectors, (int, np.integer)) or n_eigenvectors < 1:
        raise ValueError(f"n_eigenvectors: expected an integer >= 1, got {n_eigenvectors!r}")
    if knn_kernel not in defaults.KNN_KERNELS:
        raise ValueError(f"knn_kernel: expected one of {defaults.KNN_KERNELS}, got {knn_kernel!r}")
    if not np.isfinite(knn_lambda) or knn_lambda < 0:
        raise ValueError(f"knn_lambda: expected a finite value >= 0, got {knn_lambda!r}")


def resolve_eigen_backend(eigen_backend: str, device=None) -> str:
    """``"cpu"`` or ``"torch"``: the eigen-step backend ``eigen_backend`` (one of
    ``defaults.EIGEN_BACKENDS``) means for a backbone on ``device`` (``"auto"``: torch on a
    CUDA device, cpu otherwise, including ``device=None``)."""
    if eigen_backend not in defaults.EIGEN_BACKENDS:
        raise ValueError(f"eigen_backend: expected one of {defaults.EIGEN_BACKENDS}, got {eigen_backend!r}")
    if eigen_backend == "auto":
        return "torch" if str(device or "cpu").startswith("cuda") else "cpu"
    return eigen_backend


def check_grid_size(grid_size: tuple[int, int]) -> None:
    """Raise ``ValueError`` when a working grid has more than ``defaults.MAX_GRID_NODES``
    nodes (its dense affinity takes ``4 · nodes²`` bytes); the engine calls it before the
    backbone runs, so an oversize image is refused at once."""
    n = int(grid_size[0]) * int(grid_size[1])
    if n > defaults.MAX_GRID_NODES:
        raise ValueError(
            f"image: the working grid {grid_size[0]}x{grid_size[1]} has more than {defaults.MAX_GRID_NODES} nodes "
            f"(the dense affinity would need {4 * n ** 2 / 1e9:.1f} GB); "
            f"use a smaller max_size (--max-size, default {defaults.MAX_SIZE})"
        )


def grid_affinity(
    features: np.ndarray,
    grid_colours: np.ndarray,
    *,
    knn_lambda: float = defaults.KNN_LAMBDA,
    knn_kernel: str = defaults.KNN_KERNEL,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """The fused affinity of one image on its working grid, upper triangle filled.

    Parameters
    ----------
    features : (h_p, w_p, C) float
        Patch features of the image (:attr:`PatchFeatures.features`).
    grid_colours : (h, w, 3) float32 in [0, 1]
        The image's colours on the working grid
        (:meth:`deepspectral.geometry.ImageGeometry.grid_colours`).
    knn_lambda : float, default 10
    knn_kernel : {"binary", "soft"}
    out : (h * w, h * w) float32, optional
        Buffer to write into (default: a new array).

    Returns
    -------
    (n, n) float32, ``n = h * w``; only ``j >= i`` is meaningful.
    """
    check_grid_size(grid_colours.shape[:2])
    return affinity_matrix(
        features, grid_colours, knn_lambda=knn_lambda, knn_kernel=knn_kernel, upper_only=True, out=out
    )


def decompose(
    features: PatchFeatures,
    image,
    *,
    knn_lambda: float = defaults.KNN_LAMBDA,
    n_eigenvectors: int = defaults.N_EIGENVECTORS,
    knn_kernel: str = defaults.KNN_KERNEL,
    eigen_backend: str = defaults.EIGEN_BACKEND,
    device=None,
) -> Decomposition:
    """Eigenvectors of one image (paper Sec. 3.2).

    Parameters
    ----------
    features : PatchFeatures
        From :meth:`deepspectral.Backbone.extract` on the same image (or oracle features).
    image : PIL.Image.Image or (H, W, 3) uint8
        The original image given to the backbone.
    knn_lambda : float, default 10
        Weight λ_knn of the colour affinity (0 disables it).
    n_eigenvectors : int, default 5
        K, eigenvectors returned, the constant one included (capped at the grid size).
    knn_kernel : {"binary", "soft"}
        Edge weights of the colour affinity, see :func:`deepspectral.affinity.knn_affinity`.
    eigen_backend : {"auto", "cpu", "torch"}, default "auto"
        ``"cpu"``: numba / scipy; ``"torch"``: :func:`deepspectral.eigen_torch.decompose_batch`
        on ``device``; ``"auto"``: torch when ``device`` is a CUDA device, else cpu.
    device : str or torch.device, optional
        Where the torch backend runs (the backbone's device; default the CPU).

    Returns
    -------
    Decomposition
    """
    if not isinstance(features, PatchFeatures):
        raise ValueError(f"features: expected PatchFeatures, got {type(features).__name__}")
    check_decomposition_settings(knn_lambda=knn_lambda, n_eigenvectors=n_eigenvectors, knn_kernel=knn_kernel)
    if resolve_eigen_backend(eigen_backend, device) == "torch":
        from .eigen_torch import decompose_batch

        return decompose_batch(
            [features], [image], knn_lambda=knn_lambda, n_eigenvectors=n_eigenvectors, knn_kernel=knn_kernel,
            device=device or "cpu",
        )[0]  # fmt: skip
    geometry = features.geometry
    grid = geometry.grid_size
    affinity = grid_affinity(
        features.features,
        geometry.grid_colours(image),
        knn_lambda=knn_lambda,
        knn_kernel=knn_kernel,
        out=_workspace(grid[0] * grid[1]),  # reused: the affinity never leaves this function
    )
    eigenvalues, eigenvectors = laplacian_eigenvectors(affinity, n_eigenvectors, upper_only=True)
    eigenvectors = orient_eigenvectors(eigenvectors.reshape(-1, *grid))
    settings = {
        "backbone": features.backbone,
        "block": features.block,
        "feature": features.feature,
        "knn_lambda": float(knn_lambda),
        "knn_kernel": knn_kernel,
        "n_eigenvectors": int(n_eigenvectors),
    }
    return Decomposition(
        eigenvalues=eigenvalues,
        eigenvectors=eigenvectors,
        image_size=tuple(features.image_size),
        input_size=tuple(features.input_size),
        crop_size=tuple(features.crop_size),
        patch_size=features.patch_size,
        settings=settings,
    )
