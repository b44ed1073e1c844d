"""deepspectral: Deep Spectral Methods for unsupervised localization, segmentation and matting.

The public API (numpy / PIL in, numpy and small dataclasses out)::

    from deepspectral import Backbone, decompose, localize, segment_object
    bb = Backbone("dino_vits16", weights=None, device="cpu")
    feats = bb.extract(image)
    dec = decompose(feats, image, knn_lambda=10.0, n_eigenvectors=5)
    box_xyxy = localize(dec)
    mask = segment_object(dec, image, crf=True)

Names are imported lazily so that ``import deepspectral`` (and ``deepspectral --version``)
does not import torch.
"""

from __future__ import annotations

import importlib

from ._version import __version__

__all__ = [
    "__version__",
    "Backbone",
    "PatchFeatures",
    "Decomposition",
    "decompose",
    "localize",
    "segment_object",
    "matte",
    "composite",
    "load_image",
]

_LAZY = {
    "Backbone": "deepspectral.backbones",
    "PatchFeatures": "deepspectral.features",
    "Decomposition": "deepspectral.spectral",
    "decompose": "deepspectral.spectral",
    "localize": "deepspectral.tasks.localize",
    "segment_object": "deepspectral.tasks.segment",
    "matte": "deepspectral.tasks.matting",
    "composite": "deepspectral.tasks.matting",
    "load_image": "deepspectral.data.images",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'deepspectral' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
