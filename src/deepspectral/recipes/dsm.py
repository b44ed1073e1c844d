"""The paper's recipe (Deep Spectral Methods, Melas-Kyriazi et al., CVPR 2022).

The decomposition is :func:`deepspectral.spectral.decompose` (features + colour affinity on
the 1/8 working grid); boxes and masks are made by :mod:`deepspectral.tasks.localize` and
:mod:`deepspectral.tasks.segment`. This module only names it for the registry.
"""

from __future__ import annotations

from .. import defaults
from ..spectral import check_decomposition_settings, decompose

__all__ = ["NAME", "PARAMETERS", "check_parameters", "decompose"]

#: Name of the recipe in :data:`deepspectral.recipes.METHODS`.
NAME = "dsm"
#: Its parameters and their defaults (arguments of :func:`decompose`).
PARAMETERS = {
    "knn_lambda": defaults.KNN_LAMBDA,
    "n_eigenvectors": defaults.N_EIGENVECTORS,
    "knn_kernel": defaults.KNN_KERNEL,
}


def check_parameters(**params) -> None:
    """Raise ``ValueError`` naming the argument when a parameter is invalid."""
    check_decomposition_settings(**{**PARAMETERS, **params})
