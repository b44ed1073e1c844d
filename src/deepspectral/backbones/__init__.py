"""Self-supervised ViT backbones: registry, weights and dense feature extraction.

Step 2 of the pipeline (see ``docs/algorithm.md``). The package has three modules:

- :mod:`~deepspectral.backbones.registry` -- :class:`BackboneConfig` and the registered
  DINO / DINOv2 models (:data:`BACKBONES`, :func:`available_backbones`,
  :func:`get_backbone_config`); pure data.
- :mod:`~deepspectral.backbones.weights` -- the one checkpoint reader
  (:func:`read_state_dict`), the hub download with its offline handling
  (:class:`WeightsUnavailableError`) and model creation; :func:`save_random_weights`.
- :mod:`~deepspectral.backbones.extract` -- :class:`Backbone` (device, hooks,
  ``extract`` / ``extract_batch`` / ``cls_embeddings``), the preprocessing of an image and
  the ImageNet normaliser :func:`normalize_imagenet`.

::

    from deepspectral.backbones import Backbone
    bb = Backbone("dino_vits16", weights=None, device="auto")   # downloads through the HF hub
    feats = bb.extract(image)              # PatchFeatures, features (h, w, 384) float32

Importing the package does not import torch or timm.
"""

from __future__ import annotations

from .extract import Backbone, normalize_imagenet, resolve_device
from .registry import BACKBONES, BackboneConfig, available_backbones, get_backbone_config
from .weights import WeightsUnavailableError, read_state_dict, save_random_weights

__all__ = [
    "Backbone",
    "BackboneConfig",
    "BACKBONES",
    "available_backbones",
    "get_backbone_config",
    "save_random_weights",
    "WeightsUnavailableError",
    "read_state_dict",
    "normalize_imagenet",
    "resolve_device",
]
