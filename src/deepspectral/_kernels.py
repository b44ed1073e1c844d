"""Compiled (numba) kernels; imported lazily by :mod:`affinity` and :mod:`tasks.matting`.

Loop indices that are offsets into arrays are unsigned (``np.uint64``): with a signed
index numba emits a negative-index wraparound test on every access, which stops LLVM
from vectorising the loop (6x slower here).

Parallel kernels run on numba's ``workqueue`` threading layer unless
``NUMBA_THREADING_LAYER`` says otherwise: the OpenMP layer's idle threads spin after a
kernel and took the core the eigensolver's BLAS thread needed (the eigensolver ran 40 %
slower right after the affinity kernels; measured, see the README). The workqueue layer
does not accept launches from two threads at once, so every parallel kernel is launched
under :data:`LOCK` (they use every core anyway).
"""

from __future__ import annotations

import functools
import os
import threading

import numba
import numpy as np
from numba import njit, prange

if "NUMBA_THREADING_LAYER" not in os.environ:
    numba.config.THREADING_LAYER = "workqueue"

__all__ = [
    "LOCK",
    "upsample_rows",
    "upper_combination_rows",
    "mirror_upper",
    "add_pairs",
    "grid_knn",
    "count_pairs",
    "count_tile_pairs",
    "sample_feature_tiles",
    "self_affinity",
    "tiled_symmetric_spmm",
    "dense_cut_profile",
]

#: Held while a parallel kernel runs (one launch at a time, from any thread).
LOCK = threading.Lock()


def _parallel(function=None, *, fastmath: bool = True):
    """``njit(parallel=True)``, launched under :data:`LOCK`."""

    def wrap(function):
        compiled = njit(parallel=True, cache=True, nogil=True, fastmath=fastmath)(function)

        @functools.wraps(function)
        def launch(*args):
            with LOCK:
                return compiled(*args)

        return launch

    return wrap(function) if function is not None else wrap


@_parallel
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
            base = np.uint64(r * width)
            row = across[r]
            for j in range(out_w):
                jj = np.uint64(j)
                row[jj] = wx[jj, 0] * source[base + np.uint64(ix[jj, 0])] + wx[jj, 1] * source[base + np.uint64(ix[jj, 1])]
        target = out[a]
        for i in range(iy.shape[0]):
            top, bottom = across[iy[i, 0]], across[iy[i, 1]]
            w0, w1 = wy[i, 0], wy[i, 1]
            offset = np.uint64(i * out_w)
            for j in range(out_w):
                jj = np.uint64(j)
                target[offset + jj] = w0 * top[jj] + w1 * bottom[jj]


@njit(cache=True, nogil=True, fastmath=True, inline="always")
def _upper_row(i, rows, taps, weights, out):  # pragma: no cover - compiled
    r0, r1, r2, r3 = rows[taps[i, 0]], rows[taps[i, 1]], rows[taps[i, 2]], rows[taps[i, 3]]
    w0, w1, w2, w3 = weights[i, 0], weights[i, 1], weights[i, 2], weights[i, 3]
    target = out[i]
    zero = np.float32(0.0)
    start = np.uint64(i)
    for offset in range(out.shape[1] - i):
        j = start + np.uint64(offset)
        value = w0 * r0[j] + w1 * r1[j] + w2 * r2[j] + w3 * r3[j]
        target[j] = value if value > zero else zero


@_parallel
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


@_parallel(fastmath=False)
def mirror_upper(matrix):  # pragma: no cover - compiled
    """Copy the upper triangle onto the lower one, in place."""
    n = matrix.shape[0]
    block = 64
    for start in prange((n + block - 1) // block):
        i0 = start * block
        for j in range(i0, n):
            for i in range(i0, min(i0 + block, j)):
                matrix[j, i] = matrix[i, j]


@njit(cache=True, nogil=True)
def add_pairs(matrix, rows, cols, weights, upper_only):  # pragma: no cover - compiled
    """``matrix[r, c] += w`` and ``matrix[c, r] += w`` for every pair, repeats adding up;
    with ``upper_only`` both land on ``(min, max)`` (twice on the diagonal)."""
    for t in range(rows.shape[0]):
        r, c, w = rows[t], cols[t], weights[t]
        if upper_only:
            if r > c:
                r, c = c, r
            matrix[r, c] += 2.0 * w if r == c else w
        else:
            matrix[r, c] += w
            matrix[c, r] += w


@njit(cache=True, nogil=True, inline="always")
def _offer(distance, index, best_d, best_i, count):  # pragma: no cover - compiled
    """Insert a candidate into the ascending ``best_d`` / ``best_i`` lists (first come
    first kept among equal distances); returns the new count."""
    k = best_d.shape[0]
    if count == k and distance >= best_d[k - 1]:
        return count
    slot = count if count < k else k - 1
    while slot > 0 and best_d[slot - 1] > distance:
        best_d[slot] = best_d[slot - 1]
        best_i[slot] = best_i[slot - 1]
        slot -= 1
    best_d[slot] = distance
    best_i[slot] = index
    return count + 1 if count < k else count


@njit(cache=True, nogil=True, inline="always")
def _offer_pixel(colours, xs, ys, y, x, q, best_d, best_i, count):  # pragma: no cover - compiled
    qy, qx = q // colours.shape[1], q % colours.shape[1]
    d0 = np.float64(colours[y, x, 0]) - np.float64(colours[qy, qx, 0])
    d1 = np.float64(colours[y, x, 1]) - np.float64(colours[qy, qx, 1])
    d2 = np.float64(colours[y, x, 2]) - np.float64(colours[qy, qx, 2])
    dx = np.float64(xs[x]) - np.float64(xs[qx])
    dy = np.float64(ys[y]) - np.float64(ys[qy])
    distance = d0 * d0 + d1 * d1 + d2 * d2 + dx * dx + dy * dy
    return _offer(distance, y * colours.shape[1] + x, best_d, best_i, count)


@_parallel(fastmath=False)
def grid_knn(colours, xs, ys, min_step, k, out_d2, out_i):  # pragma: no cover - compiled
    """Exact k nearest neighbours of every pixel of an ``(h, w, 3)`` image in the space
    ``(r, g, b, xs[x], ys[y])``, searched in square rings around the pixel: every pixel
    of ring ``r`` is at least ``r · min_step`` away in space, so the search stops once
    that bound exceeds the k-th distance found. Squared distances (float64) and indices,
    ascending, go to ``out_d2`` / ``out_i`` ``(h * w, k)``."""
    h, w = colours.shape[0], colours.shape[1]
    for q in prange(h * w):
        qy, qx = q // w, q % w
        best_d, best_i = out_d2[q], out_i[q]
        count = 0
        for radius in range(max(h, w)):
            bound = radius * min_step
            if count == k and bound * bound > best_d[k - 1]:
                break
            for y in range(max(qy - radius, 0), min(qy + radius, h - 1) + 1):
                if y == qy - radius or y == qy + radius:  # top and bottom rows of the ring
                    for x in range(max(qx - radius, 0), min(qx + radius, w - 1) + 1):
                        count = _offer_pixel(colours, xs, ys, y, x, q, best_d, best_i, count)
                else:  # the two side cells
                    if qx - radius >= 0:
                        count = _offer_pixel(colours, xs, ys, y, qx - radius, q, best_d, best_i, count)
                    if qx + radius < w:
                        count = _offer_pixel(colours, xs, ys, y, qx + radius, q, best_d, best_i, count)


# ---------------------------------------------------------------------------------------
# Full-resolution matting: sampled feature affinity and its products
# ---------------------------------------------------------------------------------------

#: Side of the square tiles the sampled feature pairs are grouped in: the slices of the
#: vectors one tile touches (2 x 8192 rows) stay in the core's L2 cache during a product.
#: Also the rows per independently seeded sampling block (the sampled pairs do not
#: depend on the number of threads). At most 65536 (offsets are uint16).
PAIR_TILE = 8192
#: Partial outputs of :func:`tiled_symmetric_spmm`, summed in a fixed order (results do
#: not depend on the number of threads).
SPMM_PARTS = 4


@njit(cache=True, nogil=True)
def count_pairs(n, rate, seed):  # pragma: no cover - compiled
    """``Binomial(n - 1 - i, rate)`` partners above the diagonal for every row ``i``."""
    np.random.seed(seed)
    counts = np.empty(n, np.int64)
    for i in range(n):
        remaining = n - 1 - i
        counts[i] = np.random.binomial(remaining, rate) if remaining > 0 else 0
    return counts


@_parallel(fastmath=False)
def count_tile_pairs(row_counts, seed, tile_counts):  # pragma: no cover - compiled
    """Draw the partners of every row as :func:`sample_feature_tiles` will (same seeds,
    same order) and count them per tile: ``tile_counts (n_tiles, n_tiles)``."""
    n = row_counts.shape[0]
    for row_tile in prange(tile_counts.shape[0]):
        np.random.seed(seed + 1 + row_tile)
        for i in range(row_tile * PAIR_TILE, min(n, (row_tile + 1) * PAIR_TILE)):
            for _ in range(row_counts[i]):
                j = i + 1 + np.random.randint(0, n - 1 - i)
                tile_counts[row_tile, j // PAIR_TILE] += 1


@_parallel
def sample_feature_tiles(row_counts, tile_ptr, gram, patch_width, width, iy, wy, ix, wx, seed, rows, cols, data):  # pragma: no cover - compiled
    """For every row ``i`` draw ``row_counts[i]`` partners ``j > i`` (uniformly, with
    replacement) and store ``max(f̂_i · f̂_j, 0)``, where ``f̂`` are the patch features
    (``gram``: their Gram matrix, patches row-major, ``patch_width`` a row) bilinearly
    upsampled to an image ``width`` pixels wide (1-D taps ``iy, wy`` of its rows, ``ix,
    wx`` of its columns, as :func:`deepspectral.geometry.linear_taps`). Per row,
    ``r = Σ_a w_ia G[p_ia]`` is formed once, then each pair costs 4 reads of it (the taps
    of ``j`` are computed, not loaded: no cache miss). Entries go to their tile
    (``tile_ptr``, row-major over tiles; in a tile, by row) as offsets ``rows`` / ``cols``
    within it. Row tiles run in parallel, each with its own seed, so the pairs depend
    on ``seed`` only."""
    n = row_counts.shape[0]
    n_tiles = (n + PAIR_TILE - 1) // PAIR_TILE
    for row_tile in prange(n_tiles):
        np.random.seed(seed + 1 + row_tile)
        cursor = tile_ptr[row_tile * n_tiles : (row_tile + 1) * n_tiles].copy()
        row_sum = np.empty(gram.shape[1], np.float64)
        first = row_tile * PAIR_TILE
        for i in range(first, min(n, first + PAIR_TILE)):
            if row_counts[i] == 0:
                continue
            y, x = i // width, i % width
            row_sum[:] = 0.0
            for a in range(2):
                for b in range(2):
                    weight = np.float64(wy[y, a]) * np.float64(wx[x, b])
                    if weight != 0.0:
                        row = gram[iy[y, a] * patch_width + ix[x, b]]
                        for p in range(row_sum.shape[0]):
                            row_sum[p] += weight * row[p]
            for _ in range(row_counts[i]):
                j = i + 1 + np.random.randint(0, n - 1 - i)
                yj, xj = j // width, j % width
                value = 0.0
                for a in range(2):
                    base = iy[yj, a] * patch_width
                    value += wy[yj, a] * (wx[xj, 0] * row_sum[base + ix[xj, 0]] + wx[xj, 1] * row_sum[base + ix[xj, 1]])
                column_tile = j // PAIR_TILE
                position = cursor[column_tile]
                cursor[column_tile] += 1
                rows[position] = i - first
                cols[position] = j - column_tile * PAIR_TILE
                data[position] = value if value > 0.0 else 0.0


@njit(cache=True, nogil=True)
def self_affinity(gram, taps, weights):  # pragma: no cover - compiled
    """``max(f̂_i · f̂_i, 0)`` for every pixel (see :func:`sample_feature_tiles`)."""
    n = taps.shape[0]
    out = np.empty(n, np.float32)
    for i in range(n):
        value = 0.0
        for a in range(4):
            for b in range(4):
                value += weights[i, a] * weights[i, b] * gram[taps[i, a], taps[i, b]]
        out[i] = value if value > 0.0 else 0.0
    return out


@_parallel
def tiled_symmetric_spmm(tile_ptr, rows, cols, data, part_bounds, x, parts):  # pragma: no cover - compiled
    """``(S + Sᵀ) x`` for ``x (n, m)`` and the strictly upper ``S`` stored in tiles (see
    :func:`sample_feature_tiles`), reading ``S`` once: the row tiles
    ``part_bounds[t]:part_bounds[t + 1]`` write ``parts[t]``; the caller sums the parts.
    Within a tile the entries come row by row, so each row's sum is kept in registers."""
    m = x.shape[1]
    n_tiles = part_bounds[-1]
    for t in prange(part_bounds.shape[0] - 1):
        out = parts[t]
        out[:] = 0.0
        row_sum = np.zeros(m, np.float32)
        for row_tile in range(part_bounds[t], part_bounds[t + 1]):
            first_row = np.uint64(row_tile * PAIR_TILE)
            for column_tile in range(row_tile, n_tiles):
                first_column = np.uint64(column_tile * PAIR_TILE)
                start, end = tile_ptr[row_tile * n_tiles + column_tile], tile_ptr[row_tile * n_tiles + column_tile + 1]
                if start == end:
                    continue
                current = np.uint64(rows[start])
                for s in range(start, end):
                    offset = np.uint64(rows[s])
                    if offset != current:  # a new row: flush the previous one's sum
                        for c in range(m):
                            out[first_row + current, c] += row_sum[c]
                            row_sum[c] = 0.0
                        current = offset
                    i = first_row + offset
                    j = first_column + np.uint64(cols[s])
                    v = data[s]
                    for c in range(m):
                        row_sum[c] += v * x[j, c]
                        out[j, c] += v * x[i, c]
                for c in range(m):
                    out[first_row + current, c] += row_sum[c]
                    row_sum[c] = 0.0


# Sweep cut (Shi & Malik's splitting point): for nodes ranked by an eigenvector, an edge
# (i, j) of weight w is cut by every split "the first s + 1 ranks against the rest" with
# min(rank) <= s < max(rank): +w at the lower rank, -w at the higher one of a difference
# array whose running sum is the cut of each split. One pass over the edges, sequential
# (scattered adds into one small array).


@njit(cache=True, nogil=True)
def dense_cut_profile(upper, rank, diff, degree):  # pragma: no cover - compiled
    """Difference array of the cuts, and the degrees, of a dense matrix given by its upper
    triangle (the lower one is not read)."""
    n = np.uint64(upper.shape[0])
    for i in range(n):
        ri = rank[i]
        degree[i] += upper[i, i]
        for j in range(i + np.uint64(1), n):
            w = upper[i, j]
            if w != 0.0:
                degree[i] += w
                degree[j] += w
                rj = rank[j]
                if ri < rj:
                    diff[ri] += w
                    diff[rj] -= w
                else:
                    diff[rj] += w
                    diff[ri] -= w
