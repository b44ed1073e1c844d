"""Compiled (numba) kernels for the dense affinity; imported lazily by :mod:`affinity`."""

from __future__ import annotations

import numpy as np
from numba import njit, prange

__all__ = ["upsample_rows", "upper_combination_rows", "mirror_upper"]


@njit(parallel=True, cache=True, nogil=True, fastmath=True)
def upsample_rows(matrix, width, iy, wy, ix, wx, out):  # pragma: no cover - compiled
    """Each row of ``matrix``, an image of ``width`` columns, bilinearly resampled to the
    ``(len(iy), len(ix))`` grid given by the 1-D taps (separably: columns, then rows),
    into the matching row of ``out``; rows in parallel."""
    height = matrix.shape[1] // width
    out_w = ix.shape[0]
    for a in prange(matrix.shape[0]):
        source = matrix[a]
        across = np.empty((height, out_w), np.float32)
        for r in range(height):
            base = r * width
            for j in range(out_w):
                across[r, j] = wx[j, 0] * source[base + ix[j, 0]] + wx[j, 1] * source[base + ix[j, 1]]
        target = out[a]
        for i in range(iy.shape[0]):
            top, bottom = across[iy[i, 0]], across[iy[i, 1]]
            w0, w1 = wy[i, 0], wy[i, 1]
            offset = i * out_w
            for j in range(out_w):
                target[offset + j] = w0 * top[j] + w1 * bottom[j]


@njit(cache=True, nogil=True, fastmath=True, inline="always")
def _upper_row(i, rows, taps, weights, out):  # pragma: no cover - compiled
    r0, r1, r2, r3 = rows[taps[i, 0]], rows[taps[i, 1]], rows[taps[i, 2]], rows[taps[i, 3]]
    w0, w1, w2, w3 = weights[i, 0], weights[i, 1], weights[i, 2], weights[i, 3]
    target = out[i]
    for j in range(i, out.shape[1]):
        target[j] = max(w0 * r0[j] + w1 * r1[j] + w2 * r2[j] + w3 * r3[j], 0.0)


@njit(parallel=True, cache=True, nogil=True, fastmath=True)
def upper_combination_rows(rows, taps, weights, out):  # pragma: no cover - compiled
    """Upper triangle (``j >= i``) of ``max(Σ_t weights[i, t] · rows[taps[i, t]], 0)``;
    entries below the diagonal are left untouched. Rows ``i`` and ``n - 1 - i`` go
    together so that every parallel iteration does the same work."""
    n = taps.shape[0]
    for first in prange((n + 1) // 2):
        last = n - 1 - first
        _upper_row(first, rows, taps, weights, out)
        if last != first:
            _upper_row(last, rows, taps, weights, out)


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
    index, linear = np.zeros((2, 2), np.int64), np.full((2, 2), 0.5, np.float32)
    upsample_rows(np.ones((2, 4), np.float32), 2, index, linear, index, linear, np.zeros((2, 4), np.float32))
    upper_combination_rows(out, taps, weights, out)
    mirror_upper(out)
