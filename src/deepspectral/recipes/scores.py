"""A confidence for every box and mask, from the spectral solution alone.

``score = 1 − λ₁ / λ₂``: the **relative eigengap** of the generalised problem
``(D − W) y = λ D y``, clipped to ``[0, 1]``.

Why this quantity: λ₁ is the relaxed normalised-cut value of the best bipartition of the
graph (Shi & Malik 2000, Sec. 2.1) — the split the box and the mask are made from — and λ₂
that of the best split orthogonal to it. A distinct object makes one split far cheaper
than any other (λ₁ ≪ λ₂, score near 1: oracle features give 0.9–1.0). When nothing stands
out, every split costs about the same and the spectrum's bottom is flat (λ₁ ≈ λ₂, score near
0): a uniform image (with the random-weight ViT-S/16: λ₁ = λ₂ = 0.80 for the paper's graph,
1.0 for TokenCut's), or pure noise (0.01–0.03). A raw λ₁ does not separate these cases
across graphs (the paper's colour term makes a noise image's λ₁ as low as 0.19 with random
features), its ratio to λ₂ does, for both recipes, with no constant to tune. Limitation:
two equally distinct objects give two equally cheap splits (λ₁ ≈ λ₂ ≈ 0) and a low score —
then the eigenvector, and so the box, is ambiguous between them anyway.

The score needs the eigenvalues only, so it is computed from a cached decomposition or an
``.npz`` alike. With fewer than three eigenpairs (``--n-eigenvectors 2``) it falls back to
``1 − λ₁``. This module is maths: arrays in, numbers out.
"""

from __future__ import annotations

import numpy as np

__all__ = ["eigengap_score", "spectral_score", "check_min_score"]

#: Below this λ₂ the two splits are both free (three or more disconnected parts): score 0.
_ZERO_EIGENVALUE = 1e-9


def eigengap_score(eigenvalues: np.ndarray) -> float:
    """``1 − λ₁ / λ₂`` in ``[0, 1]`` from ascending generalised eigenvalues ``(K,)``
    (``λ₀ = 0`` first); ``1 − λ₁`` when ``K == 2``; 0 when ``K < 2``."""
    values = np.asarray(eigenvalues, dtype=np.float64).reshape(-1)
    if values.size < 2 or not np.all(np.isfinite(values[:3])):
        return 0.0
    lam1 = max(float(values[1]), 0.0)
    if values.size == 2:
        return float(np.clip(1.0 - lam1, 0.0, 1.0))
    lam2 = float(values[2])
    if lam2 <= _ZERO_EIGENVALUE:
        return 0.0
    return float(np.clip(1.0 - lam1 / lam2, 0.0, 1.0))


def spectral_score(decomposition) -> float:
    """:func:`eigengap_score` of a :class:`~deepspectral.spectral.Decomposition`."""
    return eigengap_score(decomposition.eigenvalues)


def check_min_score(min_score) -> float:
    """``min_score`` as a float in [0, 1]; ``ValueError`` naming it otherwise."""
    if isinstance(min_score, bool) or not isinstance(min_score, (int, float, np.integer, np.floating)) or not 0 <= min_score <= 1:
        raise ValueError(f"min_score: expected a number in [0, 1], got {min_score!r}")
    return float(min_score)
