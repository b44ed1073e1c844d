"""Fully connected CRF (Krähenbühl & Koltun, NeurIPS 2011) used to sharpen coarse masks.

The paper refines its coarse (1/8-resolution) single-object masks with a dense CRF at full
image resolution, "with all parameters on their default settings" (supplement). Its code
(``extract.py: _extract_crf_segmentations`` of lukemelas/deep-spectral-segmentation) calls
SimpleCRF's ``denseCRF.densecrf(image, one_hot, (10, 80, 13, 3, 3, 5))`` and SimpleCRF
(``densecrf_python/densecrf_core.cpp: computeUnary``) turns the per-label probabilities into
unary energies as ``-log(clip(p, 0.01, 0.99))``: a one-hot label map therefore becomes
energies ``-log 0.99 ≈ 0.01`` for the given label and ``-log 0.01 ≈ 4.61`` for every other
one. The pairwise terms are a bilateral (appearance) Potts kernel and a Gaussian
(smoothness) Potts kernel, both with diagonal kernels and symmetric normalisation (the
defaults of Krähenbühl's library). :func:`dense_crf` does the same with ``pydensecrf`` and
returns the posterior marginals after mean-field inference; their arg-max is SimpleCRF's
MAP labelling.

``pydensecrf`` is an optional dependency (``pip install "deepspectral[crf]"``); it is only
imported when :func:`dense_crf` is called.
"""

from __future__ import annotations

import numbers

import numpy as np

from . import defaults

__all__ = ["dense_crf", "unary_from_probabilities", "check_crf_available", "CRF_PROBABILITY_CLIP"]

#: Probabilities are clipped to [CLIP, 1 - CLIP] before ``-log`` (SimpleCRF's constant,
#: the one behind the paper's numbers).
CRF_PROBABILITY_CLIP = 0.01

_INSTALL_HINT = (
    'the dense CRF needs pydensecrf: pip install "deepspectral[crf]" '
    "(or pass crf=False in Python / --no-crf on the command line)"
)


def check_crf_available() -> None:
    """Raise ``ImportError`` (naming the pip extra) when pydensecrf is not installed,
    without importing it: lets a command refuse before it processes any image."""
    import importlib.util

    if importlib.util.find_spec("pydensecrf") is None:
        raise ImportError(_INSTALL_HINT)


def unary_from_probabilities(probabilities: np.ndarray, *, clip: float = CRF_PROBABILITY_CLIP) -> np.ndarray:
    """Unary energies ``-log(clip(p, clip, 1 - clip))`` of per-label probabilities.

    Parameters
    ----------
    probabilities : (L, H, W) float
        Probability of each label at each pixel (a one-hot map is fine: that is what the
        paper's code passes).
    clip : float, default 0.01
        Probabilities are clipped to ``[clip, 1 - clip]`` so that no energy is infinite.

    Returns
    -------
    (L, H * W) float32, C-contiguous
        The layout ``pydensecrf.densecrf.DenseCRF.setUnaryEnergy`` expects.
    """
    if not 0.0 < clip < 0.5:
        raise ValueError(f"clip: expected a value in (0, 0.5), got {clip!r}")
    probabilities = np.asarray(probabilities, dtype=np.float32)
    if probabilities.ndim != 3:
        raise ValueError(f"probabilities: expected shape (L, H, W), got {probabilities.shape}")
    clipped = np.clip(probabilities.reshape(probabilities.shape[0], -1), clip, 1.0 - clip)
    return np.ascontiguousarray(-np.log(clipped), dtype=np.float32)


def _check_positive(name: str, value, *, allow_zero: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not np.isfinite(value):
        raise ValueError(f"{name}: expected a finite number, got {value!r}")
    if value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name}: expected a value {bound}, got {value!r}")
    return float(value)


def dense_crf(
    image: np.ndarray,
    probabilities: np.ndarray,
    *,
    bilateral_weight: float = defaults.CRF_PARAMS["bilateral_weight"],
    bilateral_xy_std: float = defaults.CRF_PARAMS["bilateral_xy_std"],
    bilateral_rgb_std: float = defaults.CRF_PARAMS["bilateral_rgb_std"],
    gaussian_weight: float = defaults.CRF_PARAMS["gaussian_weight"],
    gaussian_xy_std: float = defaults.CRF_PARAMS["gaussian_xy_std"],
    iterations: int = defaults.CRF_PARAMS["iterations"],
) -> np.ndarray:
    """Posterior marginals of a fully connected CRF over the pixels of ``image``.

    Energy: unary ``-log(clip(p, 0.01, 0.99))`` (see :func:`unary_from_probabilities`),
    plus Potts pairwise terms
    ``w_bil · exp(-|Δxy|² / 2θα² - |ΔRGB|² / 2θβ²) + w_gauss · exp(-|Δxy|² / 2θγ²)``,
    minimised approximately by ``iterations`` steps of mean-field inference (the
    permutohedral-lattice implementation of ``pydensecrf``). The defaults are the paper's
    code's (``defaults.CRF_PARAMS``: 10, 80, 13, 3, 3, 5 iterations).

    Parameters
    ----------
    image : (H, W, 3) uint8
        RGB image; its colours drive the bilateral term.
    probabilities : (L, H, W) float
        Per-label probabilities in [0, 1] (L >= 2), e.g. a one-hot coarse mask upsampled
        to the image size.
    bilateral_weight : float >= 0
        Weight of the appearance kernel (w₁).
    bilateral_xy_std : float > 0
        Spatial standard deviation θα of the appearance kernel, in pixels.
    bilateral_rgb_std : float > 0
        Colour standard deviation θβ of the appearance kernel, in 0-255 RGB units.
    gaussian_weight : float >= 0
        Weight of the smoothness kernel (w₂).
    gaussian_xy_std : float > 0
        Spatial standard deviation θγ of the smoothness kernel, in pixels.
    iterations : int >= 0
        Mean-field iterations (0 returns the normalised unary).

    Returns
    -------
    (L, H, W) float32
        Posterior marginals; they sum to 1 over the labels at every pixel.

    Raises
    ------
    ImportError
        When ``pydensecrf`` is not installed (``pip install "deepspectral[crf]"``).
    ValueError
        On a bad argument (the message names it, its value and what is accepted).
    """
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image: expected an (H, W, 3) uint8 array, got shape {image.shape}")
    if image.dtype != np.uint8:
        raise ValueError(f"image: expected dtype uint8, got {image.dtype}")
    probabilities = np.asarray(probabilities)
    if probabilities.ndim != 3:
        raise ValueError(f"probabilities: expected shape (L, H, W), got {probabilities.shape}")
    n_labels, height, width = probabilities.shape
    if n_labels < 2:
        raise ValueError(f"probabilities: expected at least 2 labels (L >= 2), got L = {n_labels}")
    if (height, width) != tuple(image.shape[:2]):
        raise ValueError(
            f"probabilities: spatial size {(height, width)} does not match the image size {tuple(image.shape[:2])}"
        )
    if not np.issubdtype(probabilities.dtype, np.number) or np.issubdtype(probabilities.dtype, np.complexfloating):
        raise ValueError(f"probabilities: expected a real dtype, got {probabilities.dtype}")
    if height == 0 or width == 0:
        raise ValueError(f"image: expected a non-empty image, got shape {image.shape}")
    probabilities = probabilities.astype(np.float32, copy=False)
    if not np.all(np.isfinite(probabilities)):
        raise ValueError("probabilities: expected finite values, got NaN or infinity")
    low, high = float(probabilities.min()), float(probabilities.max())
    if low < -1e-6 or high > 1.0 + 1e-6:
        raise ValueError(f"probabilities: expected values in [0, 1], got values in [{low:g}, {high:g}]")
    bilateral_weight = _check_positive("bilateral_weight", bilateral_weight, allow_zero=True)
    bilateral_xy_std = _check_positive("bilateral_xy_std", bilateral_xy_std, allow_zero=False)
    bilateral_rgb_std = _check_positive("bilateral_rgb_std", bilateral_rgb_std, allow_zero=False)
    gaussian_weight = _check_positive("gaussian_weight", gaussian_weight, allow_zero=True)
    gaussian_xy_std = _check_positive("gaussian_xy_std", gaussian_xy_std, allow_zero=False)
    if isinstance(iterations, bool) or not isinstance(iterations, numbers.Integral) or iterations < 0:
        raise ValueError(f"iterations: expected an integer >= 0, got {iterations!r}")

    try:
        import pydensecrf.densecrf as dcrf
    except ImportError as error:  # optional dependency
        raise ImportError(_INSTALL_HINT) from error

    crf = dcrf.DenseCRF2D(int(width), int(height), int(n_labels))
    crf.setUnaryEnergy(unary_from_probabilities(probabilities))
    if gaussian_weight > 0:
        crf.addPairwiseGaussian(sxy=gaussian_xy_std, compat=gaussian_weight)
    if bilateral_weight > 0:
        crf.addPairwiseBilateral(
            sxy=bilateral_xy_std,
            srgb=bilateral_rgb_std,
            rgbim=np.require(image, dtype=np.uint8, requirements=["C", "W"]),  # pydensecrf needs a writable buffer
            compat=bilateral_weight,
        )
    marginals = np.asarray(crf.inference(int(iterations)), dtype=np.float32)
    return np.ascontiguousarray(marginals.reshape(n_labels, height, width))
