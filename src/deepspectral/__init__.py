"""deepspectral: Deep Spectral Methods for unsupervised localization, segmentation and matting.

The public API (numpy / PIL in, numpy and small dataclasses out)::

    from deepspectral import Backbone, decompose, localize, segment_object
    bb = Backbone("dino_vits16", weights=None, device="cpu")
    feats = bb.extract(image)
    dec = decompose(feats, image, knn_lambda=10.0, n_eigenvectors=5)
    box_xyxy = localize(dec)
    mask = segment_object(dec, image, crf=True)

    # TokenCut (boxes: zero-padded input; masks: input resized to a multiple of 16)
    dec = decompose(bb.extract(image, fit="pad"), image, method="tokencut", tau=0.2)
    found = detect(dec, min_score=0.5)    # Detection(box or None, score in [0, 1])
    dec = decompose(bb.extract(image, fit="resize"), image, method="tokencut")
    mask = segment_object(dec, image, refine="bilateral")

    # several objects (MaskCut): masks at the original size, each with box, area, score
    instances = discover(bb.extract(image, fit="resize", max_size=480), image, max_objects=3)

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
    "detect",
    "Detection",
    "spectral_score",
    "METHODS",
    "segment_object",
    "discover",
    "Instance",
    "bilateral_solve",
    "matte",
    "composite",
    "load_image",
]

_LAZY = {
    "Backbone": "deepspectral.backbones",
    "PatchFeatures": "deepspectral.features",
    "Decomposition": "deepspectral.spectral",
    "decompose": "deepspectral.recipes",
    "localize": "deepspectral.tasks.localize",
    "detect": "deepspectral.tasks.localize",
    "Detection": "deepspectral.tasks.localize",
    "spectral_score": "deepspectral.recipes.scores",
    "METHODS": "deepspectral.recipes",
    "bilateral_solve": "deepspectral.bilateral",
    "segment_object": "deepspectral.tasks.segment",
    "discover": "deepspectral.tasks.discover",
    "Instance": "deepspectral.tasks.discover",
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
