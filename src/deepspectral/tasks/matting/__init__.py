"""Image matting (paper Sec. 4.4): soft alpha mattes and soft layers from the eigenvectors.

Two modes compute the same kind of result, an alpha matte of the main object at the
original image size (and, with ``n_layers``, soft layers that sum to 1). Both work on the
input image the features saw (the original brought down to ``max_size``, cropped to a
multiple of the patch size) and resize the results back to the original pixels, the
cropped right/bottom strips taking the values of the last row / column:

``"full"`` — the paper's recipe
    The decomposition of Sec. 3.2 at *full* resolution of the (cropped) input image:
    features bilinearly upsampled from the patch grid to every pixel, ``W_feat`` sparsified
    by keeping a seeded random ``sample_rate`` (default 1/256 = 1/16²) of its entries, plus
    ``λ_knn · W_knn`` (the KNN colour affinity of the full-resolution image). The dense
    ``N × N`` matrix is never formed: pairs ``(i, j)``, ``i < j``, are drawn row by row
    (``Binomial(N - 1 - i, rate)`` partners ``j > i`` for row ``i``, drawn uniformly with
    replacement: a pair drawn twice counts twice, which at rate 1/256 concerns about 0.2 %
    of the entries) and only their affinities
    ``max(f_i · f_j, 0)`` are computed, through the exact identity
    ``f_i · f_j = Σ_a Σ_b u_ia u_jb G[p_ia, p_jb]`` (``u``/``p``: the 4 bilinear taps of a
    pixel, ``G``: the Gram matrix of the L2-normalised patch features). The sampled
    entries are *not* rescaled (as in the paper). The eigenvectors of the normalised
    Laplacian (``D^-1/2 W D^-1/2`` with the constant eigenvector deflated) come from block
    LOBPCG started from the 1/8-grid eigenvectors upsampled (``solver="lobpcg"``, default;
    a few dozen passes over the matrix) or from cold-start Lanczos (``"lanczos"``, several
    hundred passes). They give soft layers by *spectral matting* (below); the alpha matte
    is the layer grown from the object side (:func:`foreground_side`) of the Fiedler
    vector's sign.
    **Scaling**: 1/256 of ``N²`` grows quadratically (a 500 × 375 photo: 1.4e8 entries; a
    megapixel: 4e9). Above ``FULL_MAX_PARTNERS · 256 ≈ 197k`` pixels the expected number of
    random feature partners per pixel is fixed at ``FULL_MAX_PARTNERS`` = 768 instead
    (:func:`full_sample_rate`): memory and time then grow linearly, about 3 KB per pixel.
    ``max_pixels`` additionally downscales the crop before the decomposition. The paper
    itself notes that its full-resolution eigenproblem takes "around 1 min on 100 CPUs".

``"fast"`` — eigenvectors on the 1/8 grid, then guided feathering (the default)
    :func:`deepspectral.decompose` on the working grid (as for segmentation); the cells,
    ordered by the Fiedler vector, are split where the normalised cut of
    ``W_feat + SPLIT_KNN_LAMBDA · W_knn`` is smallest (Shi & Malik's splitting point,
    :func:`deepspectral.spectral.ncut_sweep`, not at 0: for a small object the zero
    threshold takes in its colour neighbours as well; with the full colour weight in the
    cut the cheapest split often separates a differently coloured part of the object),
    the object side of the split (:func:`foreground_side`) is upsampled to the input
    image and refined by a colour guided filter (:func:`guided_filter`, radius one grid
    cell): the edges move onto the colour edges and stay soft where colours mix. With
    ``n_layers`` the layers are computed on the grid by spectral matting, upsampled
    bilinearly, refined the same way and renormalised to sum to 1. (On 60 photos with
    8-px oracle features and the same coarse masks: guided filter 0.905 mean IoU, a
    trimap (8-px band) with a KNN-matting solve 0.865, PyMatting's
    closed-form matting on trimaps with a 4-px / 8-px band 0.903 / 0.880.)

**Spectral matting layers** (:func:`matting_layers`, after Levin, Rav-Acha & Lischinski
2008, simplified): alternating projections between the span of the eigenvectors and the
probability simplex per pixel, from a hard partition; non-negative, summing to 1, soft
only where the eigenvectors are (details in :mod:`.layers`).

Cut-outs (:func:`cutout_rgba`) and composites (:func:`composite`) use foreground colours
decontaminated by :func:`estimate_foreground` (blur-fusion), so soft edges carry no halo
of the old background.

Modules: :mod:`.graph` (the full-resolution sparse affinity), :mod:`.layers` (spectral
matting layers, the object side of a split), :mod:`.filters` (box means, guided filter),
:mod:`.compositing` (foreground colours, cut-outs, composites), :mod:`.modes` (``matte``
and its modes). The eigensolver is :mod:`deepspectral.eigen`.
"""

from __future__ import annotations

from ...eigen import LOBPCG_GUARD
from .compositing import FOREGROUND_RADII, composite, cutout_rgba, estimate_foreground
from .filters import GUIDED_EPS, GUIDED_RADIUS, box_mean, guided_filter
from .graph import (
    FEATURE_SAMPLE_RATE,
    FULL_MAX_PARTNERS,
    SparseAffinity,
    full_resolution_affinity,
    full_sample_rate,
    sparse_laplacian_eigenvectors,
)
from .layers import LAYER_ITERATIONS, foreground_side, matting_layers, renormalise
from .modes import FULL_LOBPCG_TOL, FULL_SOLVERS, MATTING_MODE, MATTING_MODES, SPLIT_KNN_LAMBDA, Matte, matte

__all__ = [
    "MATTING_MODES",
    "MATTING_MODE",
    "FEATURE_SAMPLE_RATE",
    "FULL_MAX_PARTNERS",
    "FULL_SOLVERS",
    "FULL_LOBPCG_TOL",
    "full_sample_rate",
    "SPLIT_KNN_LAMBDA",
    "GUIDED_RADIUS",
    "GUIDED_EPS",
    "LAYER_ITERATIONS",
    "LOBPCG_GUARD",
    "FOREGROUND_RADII",
    "Matte",
    "matte",
    "SparseAffinity",
    "full_resolution_affinity",
    "sparse_laplacian_eigenvectors",
    "matting_layers",
    "renormalise",
    "guided_filter",
    "box_mean",
    "foreground_side",
    "estimate_foreground",
    "cutout_rgba",
    "composite",
]
