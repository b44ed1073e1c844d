"""The spectral recipes behind ``--method``: one graph machinery, several published choices.

A recipe says how an image meets the patch grid (``fit``), how to decompose its features
(returning the one :class:`~deepspectral.spectral.Decomposition` type, with
``settings["method"]`` naming the recipe, so caches, ``.npz`` files and ``eigs`` work
alike) and which parameters it takes. Boxes and masks are made from a decomposition by
:func:`deepspectral.tasks.localize.localize` and
:func:`deepspectral.tasks.segment.segment_object`, which read the recipe from the
decomposition (:func:`method_of`).

============  ===============================================  =====================
name          recipe                                           parameters
============  ===============================================  =====================
``dsm``       the paper's (:mod:`deepspectral.spectral`)       knn_lambda,
                                                               n_eigenvectors,
                                                               knn_kernel
``tokencut``  TokenCut (:mod:`deepspectral.recipes.tokencut`)  tau, eps
============  ===============================================  =====================

Every box and mask also gets a confidence, :func:`deepspectral.recipes.scores.spectral_score`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from .. import defaults
from ..features import PatchFeatures
from . import dsm, tokencut

__all__ = ["Recipe", "METHODS", "get_recipe", "method_of", "decompose"]


@dataclass(frozen=True)
class Recipe:
    """One decomposition recipe.

    Attributes
    ----------
    name : str
    decompose : callable
        ``decompose(features, image, **parameters) -> Decomposition``.
    parameters : dict
        Parameter names and their defaults.
    fits : dict
        How the image meets the patch grid per use (``"boxes"``, ``"masks"``): one of
        :data:`deepspectral.geometry.FITS`, the value of ``fit`` for
        :meth:`deepspectral.Backbone.extract`.
    check : callable
        ``check(**parameters)`` raises ``ValueError`` naming a bad argument.
    """

    name: str
    decompose: Callable
    parameters: dict = field(default_factory=dict)
    fits: dict = field(default_factory=dict)
    check: Callable = lambda **params: None

    def fit_for(self, use: str) -> str:
        """``fit`` of the features for ``use`` (``"boxes"`` — also eigenvectors — or ``"masks"``)."""
        if use not in ("boxes", "masks"):
            raise ValueError(f"use: expected 'boxes' or 'masks', got {use!r}")
        return self.fits.get(use, "crop")

    def resolve(self, params: dict | None) -> dict:
        """``params`` completed with the defaults and checked; an unknown name raises
        ``ValueError`` listing the valid ones."""
        params = dict(params or {})
        unknown = sorted(set(params) - set(self.parameters))
        if unknown:
            raise ValueError(
                f"{unknown[0]}: not a parameter of method {self.name!r} (its parameters: {', '.join(self.parameters)})"
            )
        full = {**self.parameters, **params}
        self.check(**full)
        return full


#: The recipes by name; ``defaults.METHOD`` is the default.
METHODS: dict[str, Recipe] = {
    dsm.NAME: Recipe(dsm.NAME, dsm.decompose, dict(dsm.PARAMETERS), {"boxes": "crop", "masks": "crop"}, dsm.check_parameters),
    tokencut.NAME: Recipe(
        tokencut.NAME,
        tokencut.decompose,
        {"tau": defaults.TOKENCUT_TAU, "eps": defaults.TOKENCUT_EPS},
        # boxes: main_tokencut.py zero-pads; saliency: get_saliency.py resizes (utils.resize_pil)
        {"boxes": "pad", "masks": "resize"},
        tokencut.check_parameters,
    ),
}


def get_recipe(method: str) -> Recipe:
    """The recipe called ``method``; ``ValueError`` listing the valid names otherwise."""
    if not isinstance(method, str) or method not in METHODS:
        raise ValueError(f"method: expected one of {', '.join(map(repr, METHODS))}, got {method!r}")
    return METHODS[method]


def method_of(decomposition) -> str:
    """The recipe that made ``decomposition`` (``settings["method"]``; ``"dsm"`` for
    decompositions written before the field existed)."""
    return str(decomposition.settings.get("method", dsm.NAME))


def decompose(
    features, image=None, *, method: str = defaults.METHOD, eigen_backend: str = defaults.EIGEN_BACKEND, device=None,
    **params,
):
    """Decompose one image with the recipe ``method`` (``deepspectral.decompose``).

    Parameters
    ----------
    features : PatchFeatures
        From :meth:`deepspectral.Backbone.extract` on ``image``, with the recipe's ``fit``
        (``get_recipe(method).fit_for("boxes" or "masks")``: TokenCut's boxes need
        ``fit="pad"``, its masks ``fit="resize"``), or oracle features.
    image : PIL.Image.Image or (H, W, 3) uint8
        The original image (the paper's recipe needs it for its colour affinity).
    method : str, default "dsm"
        A name of :data:`METHODS`.
    eigen_backend : {"auto", "cpu", "torch"}, default "auto"
        Where the graph and the eigensolver run: the CPU path (numpy / numba / scipy) or
        torch on ``device`` (:mod:`deepspectral.eigen_torch`,
        :mod:`deepspectral.recipes.tokencut_torch`); ``"auto"``: torch when ``device`` is
        a CUDA device.
    device : str or torch.device, optional
        Where the torch backend runs (the backbone's device; default the CPU).
    **params
        The recipe's parameters (dsm: ``knn_lambda``, ``n_eigenvectors``, ``knn_kernel``;
        tokencut: ``tau``, ``eps``); an unknown one raises ``ValueError``.

    Returns
    -------
    Decomposition
    """
    from ..spectral import resolve_eigen_backend

    recipe = get_recipe(method)
    params = recipe.resolve(params)
    backend = resolve_eigen_backend(eigen_backend, device)
    if recipe.name == dsm.NAME:
        return dsm.decompose(features, image, eigen_backend=backend, device=device, **params)
    if backend == "torch":
        from .tokencut_torch import decompose_batch

        if not isinstance(features, PatchFeatures):
            raise ValueError(f"features: expected PatchFeatures, got {type(features).__name__}")
        return decompose_batch([features], device=device or "cpu", **params)[0]
    return recipe.decompose(features, image, **params)
