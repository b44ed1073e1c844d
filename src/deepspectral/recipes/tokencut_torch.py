"""TokenCut's eigen-step in torch: the binary graph and its second-smallest generalised
eigenvector for a batch of images of one patch grid, on any device (the backbone's).

The same computation as :func:`deepspectral.recipes.tokencut.decompose` (numpy / scipy on
the CPU), steps 1-2 of that module's recipe:

1. **Graph** (:func:`tokencut_affinity`): patch features L2-normalised (norm floored at
   1e-12, as ``torch.nn.functional.normalize``), the batched Gram matrix ``F Fᵀ``
   thresholded: ``1`` where the cosine exceeds ``tau``, else ``eps``.
2. **Eigenvectors** (:func:`second_eigenvector`): the smallest eigenpairs of
   ``(D - A) y = λ D y`` by :func:`deepspectral.eigen_torch.laplacian_eigenvectors`
   (dense ``eigh`` in float64 up to 400 nodes, as the CPU path; else the batched
   restarted block Krylov method on ``D^-1/2 A D^-1/2`` with the constant vector deflated,
   whose products run on the device in the affinity's dtype).

Steps 3-4 (the bipartition, the seed's component, the box or mask) are the CPU path's own
functions, on the returned eigenvectors: they are cheap and run once per image.

Reusable pieces: :func:`tokencut_affinity` and :func:`second_eigenvector` take and return
batched tensors, so a recipe that cuts the same graph again (MaskCut's repeated cuts) can
call them on its own ``(B, n, C)`` features or ``(B, n, n)`` affinities.

This module is maths on tensors: torch, numpy and the package's maths modules only.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Sequence

import numpy as np
import torch

from .. import defaults
from ..eigen_torch import BATCH_BYTES, laplacian_eigenvectors
from ..features import PatchFeatures
from ..spectral import Decomposition
from .tokencut import N_EIGENVECTORS, _NORM_FLOOR, check_parameters, decomposition_from_eigenpairs

__all__ = ["tokencut_affinity", "second_eigenvector", "decompose_batch"]


def tokencut_affinity(
    features: torch.Tensor, *, tau: float = defaults.TOKENCUT_TAU, eps: float = defaults.TOKENCUT_EPS
) -> torch.Tensor:
    """TokenCut's binary affinity of the patches of a batch of images.

    Parameters
    ----------
    features : (B, n, C) float tensor
        Patch features (not normalised), on any device; float32 or float64.
    tau, eps : float
        As in :func:`deepspectral.recipes.tokencut.tokencut_affinity`.

    Returns
    -------
    (B, n, n) tensor, the dtype and device of ``features``
        Symmetric, entries in ``{eps, 1}``.
    """
    check_parameters(tau=tau, eps=eps)
    if not isinstance(features, torch.Tensor) or features.ndim != 3 or not features.is_floating_point():
        raise ValueError(f"features: expected a (B, n, C) float tensor, got {getattr(features, 'shape', type(features))}")
    f = features / features.norm(dim=-1, keepdim=True).clamp_min(_NORM_FLOOR)
    gram = torch.bmm(f, f.transpose(1, 2))
    one = torch.ones((), dtype=features.dtype, device=features.device)
    return torch.where(gram > tau, one, one * eps)


def second_eigenvector(affinity: torch.Tensor, n_eigenvectors: int = N_EIGENVECTORS) -> tuple[np.ndarray, np.ndarray]:
    """Smallest eigenpairs of ``(D - A) y = λ D y`` for a batch of affinities (the constant
    one first); the batched torch counterpart of
    :func:`deepspectral.recipes.tokencut.second_eigenvector`.

    Parameters
    ----------
    affinity : (B, n, n) float tensor
        Symmetric, non-negative (e.g. :func:`tokencut_affinity`), on any device.
    n_eigenvectors : int, default 3
        Eigenpairs returned (capped at ``n``).

    Returns
    -------
    eigenvalues : (B, K) float64
        Ascending, the first 0.
    eigenvectors : (B, K, n) float32
        ``D``-orthonormal; row 1 is TokenCut's vector (sign not fixed: see
        :func:`deepspectral.recipes.tokencut.bipartition`).
    """
    return laplacian_eigenvectors(affinity, n_eigenvectors)


def decompose_batch(
    features: Sequence[PatchFeatures],
    *,
    tau: float = defaults.TOKENCUT_TAU,
    eps: float = defaults.TOKENCUT_EPS,
    device="cpu",
    dtype: torch.dtype = torch.float32,
) -> list[Decomposition]:
    """:func:`deepspectral.recipes.tokencut.decompose` of several images at once, on ``device``.

    Images are grouped by patch grid; each group runs as one batch (split when it would
    take more than about :data:`deepspectral.eigen_torch.BATCH_BYTES`).

    Parameters
    ----------
    features : sequence of PatchFeatures
        As for :func:`deepspectral.recipes.tokencut.decompose`.
    tau, eps : float
        See :func:`tokencut_affinity`.
    device : str or torch.device, default "cpu"
        Where the graph and the eigensolver run.
    dtype : torch.float32 or torch.float64
        Arithmetic of the Gram matrix and of the solver's products.

    Returns
    -------
    list of Decomposition
        In the order of ``features``, as the CPU path's (``(3, h, w) float32``
        eigenvectors, the second oriented), ``settings`` with ``eigen_backend: "torch"``.
    """
    check_parameters(tau=tau, eps=eps)
    for feats in features:
        if not isinstance(feats, PatchFeatures):
            raise ValueError(f"features: expected PatchFeatures, got {type(feats).__name__}")
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"dtype: expected torch.float32 or torch.float64, got {dtype!r}")
    device = torch.device(device)
    groups: dict[tuple, list[int]] = defaultdict(list)
    for index, feats in enumerate(features):
        groups[tuple(feats.features.shape)].append(index)
    out: list[Decomposition | None] = [None] * len(features)
    for shape, indices in groups.items():
        n = int(np.prod(shape[:-1]))
        per_batch = max(1, BATCH_BYTES // (32 * n * n))
        for start in range(0, len(indices), per_batch):
            chunk = indices[start : start + per_batch]
            for index, decomposition in zip(chunk, _decompose_group([features[i] for i in chunk], tau, eps, device, dtype)):
                out[index] = decomposition
    return out  # type: ignore[return-value]


def _decompose_group(features: list, tau: float, eps: float, device, dtype) -> list[Decomposition]:
    """Decompositions of images of one patch grid, as one batch."""
    stacked = np.stack([np.asarray(feats.features, dtype=np.float32).reshape(-1, feats.features.shape[-1]) for feats in features])
    with torch.no_grad():
        affinity = tokencut_affinity(torch.from_numpy(stacked).to(device=device, dtype=dtype), tau=tau, eps=eps)
        eigenvalues, eigenvectors = second_eigenvector(affinity)
    return [
        decomposition_from_eigenpairs(
            feats, values, np.ascontiguousarray(vectors, dtype=np.float32), tau=tau, eps=eps, eigen_backend="torch"
        )
        for feats, values, vectors in zip(features, eigenvalues, eigenvectors)
    ]
