"""The matting task: :func:`matte` with its ``"fast"`` and ``"full"`` modes (see the
package docstring, :mod:`deepspectral.tasks.matting`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from ... import defaults
from ...eigen import LOBPCG_GUARD, laplacian_eigenvectors
from ...features import PatchFeatures
from ...geometry import as_rgb_array, resize_bilinear, resize_image, resize_nearest
from ...spectral import Decomposition, decompose, grid_affinity, ncut_sweep, orient_eigenvectors
from .filters import GUIDED_RADIUS, guided_filter
from .graph import FEATURE_SAMPLE_RATE, full_resolution_affinity, full_sample_rate
from .layers import foreground_side, matting_layers, renormalise

if TYPE_CHECKING:  # pragma: no cover
    from PIL import Image

    from ...backbones import Backbone

__all__ = [
    "MATTING_MODES",
    "MATTING_MODE",
    "FULL_SOLVERS",
    "FULL_LOBPCG_TOL",
    "SPLIT_KNN_LAMBDA",
    "Matte",
    "matte",
]

#: Matting modes: ``"fast"`` (grid eigenvectors + guided feathering) and
#: ``"full"`` (the paper's full-resolution sparse decomposition).
MATTING_MODES = ("fast", "full")
#: Default mode (see the package docstring and ``benchmarks/bench_matting.py``).
MATTING_MODE = "fast"
#: ``"full"`` mode eigensolvers (see :func:`matte`): ``deepspectral.eigen.SOLVERS``, the
#: mode's default (LOBPCG from the grid eigenvectors) first.
FULL_SOLVERS = ("lobpcg", "lanczos")
#: ``"full"`` mode LOBPCG residual tolerance. Measured against Lanczos at 1e-5 on the test
#: scene (tests/test_matting.py), largest eigenvalue difference: 3e-3 gave 3e-5 from the
#: grid eigenvectors of the 2-tap colour image, but 1.8e-3 (the 4th eigenvalue, 0.0607 for
#: 0.0588, not converged) from those of the paper's antialiased colour image; 2e-3 gives
#: 2.4e-5 (alphas within 0.003 on average), 1e-3 5e-6. Against LOBPCG at 1e-3, 3e-3 changed
#: the alpha of 3 SOD photos (oracle features) by 0.0013 on average and not their IoU, with
#: 25-30 % fewer passes over the matrix.
FULL_LOBPCG_TOL = 2e-3
#: ``"fast"`` mode: weight of the colour affinity in the normalised cut that picks where
#: the Fiedler vector (of ``W_feat + λ_knn W_knn``, λ_knn = 10) is split. With 10 the
#: cheapest cut often separates a differently coloured part of the object; with 0 the
#: split follows the patch grid only. Measured (oracle features, IoU after the guided
#: filter): 8-px patches, 60 SOD + DAVIS photos: 0.906 (10), 0.932 (0…3); 16-px patches:
#: 0.800 (10), 0.808 (0), 0.794 (2); the synthetic scene of the tests: 0.979 (10), 0.971
#: (2), 0.879 (0).
SPLIT_KNN_LAMBDA = 2.0


@dataclass(frozen=True)
class Matte:
    """Result of :func:`matte` for one image.

    Attributes
    ----------
    alpha : (H, W) float32 in [0, 1]
        Opacity of the main object (:func:`foreground_side` of the Fiedler vector) at the original size.
    layers : (L, H, W) float32 or None
        Soft layers summing to 1 per pixel (with ``n_layers``), at the original size.
    mode : {"fast", "full"}
    work_size : (h, w)
        Pixels the matte was computed on (the cropped input image, or its downscale in
        ``"full"`` mode); results are resized from it to the original size.
    eigenvalues : (K,) float64
        Eigenvalues of the decomposition used (grid in ``"fast"``, pixels in ``"full"``).
    settings : dict
    """

    alpha: np.ndarray
    layers: np.ndarray | None
    mode: str
    work_size: tuple[int, int]
    eigenvalues: np.ndarray
    settings: dict = field(default_factory=dict)


def _full_size(crop_size: tuple[int, int], max_pixels: int | None) -> tuple[int, int]:
    """``(h, w)`` the ``"full"`` mode decomposes: the crop, scaled down (aspect ratio kept)
    to at most ``max_pixels`` pixels."""
    h, w = crop_size
    if max_pixels is None or h * w <= max_pixels:
        return (int(h), int(w))
    scale = (max_pixels / (h * w)) ** 0.5
    return (max(1, int(h * scale)), max(1, int(w * scale)))


def matte(
    image: Image.Image | np.ndarray,
    *,
    backbone: Backbone | str | None = None,
    features: PatchFeatures | None = None,
    max_size: int | None = defaults.MAX_SIZE,
    mode: str = MATTING_MODE,
    n_layers: int | None = None,
    knn_lambda: float = defaults.KNN_LAMBDA,
    n_eigenvectors: int | None = None,
    knn_kernel: str = defaults.KNN_KERNEL,
    sample_rate: float = FEATURE_SAMPLE_RATE,
    max_pixels: int | None = None,
    solver: str = "lobpcg",
    radius: int = GUIDED_RADIUS,
    seed: int = 0,
    decomposition: Decomposition | None = None,
) -> Matte:
    """Alpha matte of the main object (and optionally soft layers) of one image (paper Sec. 4.4).

    Parameters
    ----------
    image : PIL.Image.Image or (H, W, 3) uint8
        The original image.
    backbone : deepspectral.Backbone or str, optional
        Feature extractor (a registry name loads it, downloading the weights); needed
        unless ``features`` is given.
    features : PatchFeatures, optional
        Precomputed features of ``image`` (e.g. oracle features); ``backbone`` and
        ``max_size`` are then unused.
    max_size : int or None, default 800
        Longest side the image is brought down to for the features *and* for the matte
        itself; the alpha and layers are resized back to the original size.
    mode : {"fast", "full"}, default "fast"
        See the module docstring.
    n_layers : int >= 2, optional
        Also return this many soft layers (spectral matting).
    knn_lambda : float, default 10
        Weight of the colour affinity in ``W``.
    n_eigenvectors : int, optional
        Eigenvectors used (constant included); default ``max(5, n_layers + 2)``.
    knn_kernel : {"binary", "soft"}
    sample_rate : float, default 1/256
        ``"full"`` mode: share of the feature affinity kept (capped per pixel, see
        :func:`full_sample_rate`).
    max_pixels : int or None, default None
        ``"full"`` mode: decompose at most this many pixels (the crop is downscaled).
    solver : {"lobpcg", "lanczos"}, default "lobpcg"
        ``"full"`` mode eigensolver: LOBPCG started from the 1/8-grid eigenvectors, or
        cold-start Lanczos (slower; the reference for checks).
    radius : int, default 8
        ``"fast"`` mode: radius of the guided filter, pixels of the input image (0: the
        coarse mask, blocky).
    seed : int, default 0
        Seeds the sampled pairs, the eigensolver start and k-means.
    decomposition : Decomposition, optional
        The 1/8-grid decomposition of the same image and features, if already computed.

    Returns
    -------
    Matte
    """
    if mode not in MATTING_MODES:
        raise ValueError(f"mode: expected one of {MATTING_MODES}, got {mode!r}")
    if solver not in FULL_SOLVERS:
        raise ValueError(f"solver: expected one of {FULL_SOLVERS}, got {solver!r}")
    if n_layers is not None and (not isinstance(n_layers, (int, np.integer)) or n_layers < 2):
        raise ValueError(f"n_layers: expected None or an integer >= 2, got {n_layers!r}")
    if n_eigenvectors is None:
        n_eigenvectors = max(defaults.N_EIGENVECTORS, (n_layers or 0) + 2)
    if not isinstance(n_eigenvectors, (int, np.integer)) or n_eigenvectors < 2:
        raise ValueError(f"n_eigenvectors: expected an integer >= 2, got {n_eigenvectors!r}")
    if max_pixels is not None and (not isinstance(max_pixels, (int, np.integer)) or max_pixels < 1):
        raise ValueError(f"max_pixels: expected None or an integer >= 1, got {max_pixels!r}")
    if not isinstance(radius, (int, np.integer)) or radius < 0:
        raise ValueError(f"radius: expected an integer >= 0, got {radius!r}")
    rgb = as_rgb_array(image)
    if features is None:
        if backbone is None:
            raise ValueError("backbone: expected a Backbone or a registry name when features is None, got None")
        if isinstance(backbone, str):
            from ...backbones import Backbone

            backbone = Backbone(backbone)
        features = backbone.extract(rgb, max_size=max_size)
    if not isinstance(features, PatchFeatures):
        raise ValueError(f"features: expected PatchFeatures or None, got {type(features).__name__}")
    if decomposition is not None and not isinstance(decomposition, Decomposition):
        raise ValueError(f"decomposition: expected a Decomposition or None, got {type(decomposition).__name__}")
    geometry = features.geometry
    crop = geometry.crop(rgb)  # checks the image's size
    crop_size = geometry.crop_size
    settings = {
        "mode": mode,
        "n_layers": None if n_layers is None else int(n_layers),
        "knn_lambda": float(knn_lambda),
        "knn_kernel": knn_kernel,
        "n_eigenvectors": int(n_eigenvectors),
        "seed": int(seed),
        "backbone": features.backbone,
    }
    if decomposition is None and not (mode == "full" and solver == "lanczos"):
        # in full mode, the grid eigenvectors are LOBPCG's start: guard vectors included
        grid_k = int(n_eigenvectors) + (LOBPCG_GUARD if mode == "full" else 0)
        decomposition = decompose(features, rgb, knn_lambda=knn_lambda, n_eigenvectors=grid_k, knn_kernel=knn_kernel)

    if mode == "full":
        work = _full_size(crop_size, max_pixels)
        image_full = resize_bilinear(resize_image(crop, work).astype(np.float32) / 255.0, work)
        rate = full_sample_rate(work[0] * work[1], sample_rate)
        affinity = full_resolution_affinity(
            features, image_full, knn_lambda=knn_lambda, sample_rate=rate, knn_kernel=knn_kernel, seed=seed
        )
        initial = None
        if solver == "lobpcg":
            grid_vectors = decomposition.eigenvectors
            initial = np.moveaxis(resize_bilinear(np.moveaxis(grid_vectors, 0, -1), work), -1, 0)
        eigenvalues, vectors = laplacian_eigenvectors(
            affinity,
            int(n_eigenvectors),
            solver=solver,
            initial=initial,
            seed=seed,
            tol=FULL_LOBPCG_TOL if solver == "lobpcg" else None,
        )
        vectors = orient_eigenvectors(vectors.reshape(-1, *work))
        # the sign, not the sweep cut of the fast mode: at full resolution the layer grown
        # from it below is what decides the edge, and the sweep measured no better there
        side = foreground_side(vectors[1] > 0) if len(vectors) > 1 else np.ones(work, bool)
        pair = matting_layers(vectors, 2, labels=side.astype(np.int64), seed=seed)
        maps = [pair[1:2]]
        if n_layers is not None:
            maps.append(matting_layers(vectors, int(n_layers), seed=seed))
        settings.update(sample_rate=rate, max_pixels=max_pixels, solver=solver, feature_entries=int(2 * affinity.data.size))
        out = geometry.crop_maps_to_image(np.concatenate(maps))
        layers = renormalise(out[1:]) if n_layers is not None else None
        return Matte(alpha=out[0], layers=layers, mode=mode, work_size=work, eigenvalues=eigenvalues, settings=settings)

    # fast mode
    colours = crop.astype(np.float32) / 255.0
    vectors = decomposition.eigenvectors
    if len(vectors) > 1:
        split_graph = grid_affinity(
            features.features, geometry.crop_to_grid_colours(crop), knn_lambda=SPLIT_KNN_LAMBDA, knn_kernel=knn_kernel
        )
        side = foreground_side(ncut_sweep(vectors[1], split_graph))
    else:
        side = np.ones(decomposition.grid_size, bool)
    coarse = [resize_nearest(side, crop_size).astype(np.float32)]
    if n_layers is not None:
        grid_layers = matting_layers(vectors, int(n_layers), seed=seed)
        coarse += list(np.moveaxis(resize_bilinear(np.moveaxis(grid_layers, 0, -1), crop_size), -1, 0))
    alphas = [np.clip(guided_filter(colours, m, radius=int(radius)), 0.0, 1.0) if radius > 0 else m for m in coarse]
    maps = np.stack(alphas).reshape(-1, *crop_size)
    out = geometry.crop_maps_to_image(maps)
    layers = renormalise(out[1:]) if n_layers is not None else None
    settings.update(radius=int(radius))
    return Matte(
        alpha=out[0], layers=layers, mode=mode, work_size=crop_size, eigenvalues=decomposition.eigenvalues, settings=settings
    )
