"""Compiled (numba) kernels for the dense affinity; imported lazily by :mod:`affinity`."""

from __future__ import annotations

import numpy as np
from numba import njit, prange

__all__ = ["upsample_rows", "upper_combination_rows", "mirror_upper"]


@njit(parallel=True, cache=True, nogil=True)
def upsample_rows(matrix, taps, weights, out):  # pragma: no cover - compiled
    """``out[a, j] = Σ_t weights[j, t] · matrix[a, taps[j, t]]`` (each row of ``matrix``
    resampled by the 4-tap bilinear operator), rows in parallel."""
    for a in prange(matrix.shape[0]):
        row = matrix[a]
        for j in range(taps.shape[0]):
            out[a, j] = (
                weights[j, 0] * row[taps[j, 0]]
                + weights[j, 1] * row[taps[j, 1]]
                + weights[j, 2] * row[taps[j, 2]]
                + weights[j, 3] * row[taps[j, 3]]
            )


@njit(parallel=True, cache=True, nogil=True, fastmath=True)
def upper_combination_rows(rows, taps, weights, out):  # pragma: no cover - compiled
    """Upper triangle (``j >= i``) of ``max(Σ_t weights[i, t] · rows[taps[i, t]], 0)``;
    entries below the diagonal are left untouched."""
    for i in prange(taps.shape[0]):
        r0, r1, r2, r3 = rows[taps[i, 0]], rows[taps[i, 1]], rows[taps[i, 2]], rows[taps[i, 3]]
        w0, w1, w2, w3 = weights[i, 0], weights[i, 1], weights[i, 2], weights[i, 3]
        target = out[i]
        for j in range(i, out.shape[1]):
            target[j] = max(w0 * r0[j] + w1 * r1[j] + w2 * r2[j] + w3 * r3[j], 0.0)


@njit(parallel=True, cache=True, nogil=True)
def mirror_upper(matrix):  # pragma: no cover - compiled
    """Copy the upper triangle onto the lower one, in place."""
    n = matrix.shape[0]
    block = 64
    for start in prange((n + block - 1) // block):
        i0 = start * block
        for j in range(i0, n):
            for i in range(i0, min(i0 + block, j)):
                matrix[j, i] = matrix[i, j]


def warm_up() -> None:
    """Compile the kernels (cached on disk by numba after the first run)."""
    taps = np.zeros((2, 4), np.int64)
    weights = np.ones((2, 4), np.float32)
    out = np.zeros((2, 2), np.float32)
    upsample_rows(np.ones((2, 2), np.float32), taps, weights, out)
    upper_combination_rows(out, taps, weights, out)
    mirror_upper(out)
