"""Dense feature extraction with a registered ViT backbone (step 1 of the pipeline).

An image is prepared by its :class:`~deepspectral.geometry.ImageGeometry` (resized so its
longest side is at most ``max_size``, cropped to a multiple of the patch size ``P`` by
dropping the bottom rows / right columns), normalised by :func:`normalize_imagenet` and run through the timm Vision
Transformer (``dynamic_img_size=True``). The features are the attention keys of the last
block by default (a forward hook on ``blocks[block].attn.qkv``, heads concatenated), with
the class and register tokens dropped::

    from deepspectral.backbones import Backbone
    bb = Backbone("dino_vits16", weights=None, device="auto")   # downloads through the HF hub
    bb = Backbone("dino_vits16", weights="dino_deitsmall16_pretrain.pth")   # offline
    feats = bb.extract(image)              # PatchFeatures, features (h, w, 384) float32
    cls = bb.cls_embedding(image)          # (384,) float32

torch is imported inside the functions that need it.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .. import defaults
from ..features import PatchFeatures
from ..geometry import ImageGeometry, as_rgb_array
from .registry import BackboneConfig, get_backbone_config
from .weights import check_weights_path, create_vit

__all__ = [
    "Backbone",
    "normalize_imagenet",
    "resolve_device",
]


# ---------------------------------------------------------------------------------------
# Argument checks
# ---------------------------------------------------------------------------------------

_DEVICE_PATTERN = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")
_QKV_INDEX = {"q": 0, "k": 1, "v": 2}
#: Default number of images per forward pass of the batched methods.
_BATCH_SIZE = 8


def resolve_device(device: Any) -> str:
    """Validate a device argument and turn ``"auto"`` into ``"cuda"`` or ``"cpu"``.

    Parameters
    ----------
    device : {"auto", "cpu", "cuda", "cuda:N", "mps"} or torch.device

    Returns
    -------
    str
        A device torch can use here.

    Raises
    ------
    ValueError
        An unknown device, or one that is not available on this machine.
    """
    import torch

    if isinstance(device, torch.device):
        device = str(device)
    if not isinstance(device, str) or not _DEVICE_PATTERN.match(device):
        raise ValueError(
            f"device: expected 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps', got {device!r}"
        )
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(
                f"device: {device!r} was requested but CUDA is not available here; "
                "use device='cpu' or device='auto'"
            )
        if ":" in device and int(device.split(":")[1]) >= torch.cuda.device_count():
            raise ValueError(
                f"device: {device!r} does not exist; {torch.cuda.device_count()} CUDA device(s) visible"
            )
    if device == "mps" and not (
        getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    ):
        raise ValueError("device: 'mps' was requested but MPS is not available here; use 'cpu' or 'auto'")
    return device


def _check_feature(feature: Any) -> str:
    """Validate ``feature`` (one of ``defaults.FEATURE_KINDS``) and return it."""
    if feature not in defaults.FEATURE_KINDS:
        raise ValueError(
            f"feature: expected one of {', '.join(map(repr, defaults.FEATURE_KINDS))}, got {feature!r}"
        )
    return feature


def _check_block(block: Any, depth: int) -> int:
    """Validate ``block`` (negative indexing allowed) and return it as given."""
    if isinstance(block, (bool, np.bool_)) or not isinstance(block, (int, np.integer)):
        raise ValueError(f"block: expected an integer in [{-depth}, {depth - 1}], got {block!r}")
    if not -depth <= int(block) < depth:
        raise ValueError(
            f"block: {int(block)} is out of range for a backbone with {depth} blocks; "
            f"valid values are {-depth}..{depth - 1}"
        )
    return int(block)


def _check_batch_size(batch_size: Any) -> int:
    """Validate ``batch_size`` (a positive integer) and return it as ``int``."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size: expected a positive integer, got {batch_size!r}")
    return int(batch_size)



# ---------------------------------------------------------------------------------------
# Normalisation
# ---------------------------------------------------------------------------------------


def normalize_imagenet(
    images: np.ndarray,
    device: str = "cpu",
    *,
    mean: Sequence[float] = defaults.IMAGENET_MEAN,
    std: Sequence[float] = defaults.IMAGENET_STD,
):
    """Stack of RGB images -> normalised network input (the one ImageNet normaliser).

    ``(pixels / 255 - mean) / std`` per channel, computed in float32 on ``device``; used
    by :class:`Backbone` and by the self-training (:mod:`deepspectral.tasks.selftrain`).

    Parameters
    ----------
    images : (B, H, W, 3) uint8 array
        RGB images of one size.
    device : str
        torch device the tensor is made on (the arithmetic runs there).
    mean, std : (3,) sequence of float
        Per-channel statistics of RGB values in [0, 1] (ImageNet's by default).

    Returns
    -------
    torch.Tensor
        ``(B, 3, H, W)`` float32 on ``device``.

    Raises
    ------
    ValueError
        ``images`` is not a ``(B, H, W, 3)`` uint8 array.
    """
    import torch

    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise ValueError(
            f"images: expected a (B, H, W, 3) uint8 array, got shape {images.shape} dtype {images.dtype}"
        )
    batch = torch.from_numpy(np.require(images, requirements=["C", "W"])).to(device)
    batch = batch.permute(0, 3, 1, 2).to(torch.float32).div_(255.0)
    mean_t = torch.tensor(tuple(mean), dtype=torch.float32, device=device)
    std_t = torch.tensor(tuple(std), dtype=torch.float32, device=device)
    return (batch - mean_t[:, None, None]) / std_t[:, None, None]


# ---------------------------------------------------------------------------------------
# Preprocessing (image geometry): the one place that resizes and crops the input.
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Prepared:
    """An image ready for the network: its geometry and the cropped pixels
    (``(H_c, W_c, 3) uint8``, C-contiguous, see :meth:`ImageGeometry.crop`)."""

    geometry: ImageGeometry
    pixels: np.ndarray


def _prepare(image: Any, patch_size: int, max_size: int | None, fit: str = "crop") -> _Prepared:
    """Image -> its geometry (resize to ``max_size``, crop to a multiple of ``patch_size``,
    or the other ``fit`` of :meth:`ImageGeometry.for_image`) and the pixels the network
    sees (with ``fit="pad"`` unpadded: :meth:`Backbone._run` pads after normalising); a bad
    ``max_size`` or ``fit`` or an image smaller than one patch raises ``ValueError``."""
    rgb = as_rgb_array(image)
    geometry = ImageGeometry.for_image(rgb.shape[:2], patch_size, max_size, fit=fit)
    return _Prepared(geometry, geometry.crop(rgb))


# ---------------------------------------------------------------------------------------
# Backbone
# ---------------------------------------------------------------------------------------


class Backbone:
    """A loaded self-supervised ViT that turns images into patch features.

    Parameters
    ----------
    name : str
        Registered backbone name (see :func:`available_backbones`); default ``dino_vits16``.
    weights : str, os.PathLike or None
        ``None`` downloads the pretrained weights through timm / the Hugging Face hub (cached
        there). A path loads a local checkpoint: ``.safetensors`` or a ``torch.save`` file;
        the original DINO / DINOv2 ``.pth`` (also a full DINO checkpoint's ``teacher``) and
        timm state dicts are both understood.
    device : {"auto", "cpu", "cuda", "cuda:N", "mps"}
        ``"auto"`` picks CUDA when available, else the CPU.
    block : int
        Transformer block the features come from (negative values count from the end).
    feature : {"k", "q", "v", "tokens"}
        Attention keys / queries / values of ``block`` (the output of its ``attn.qkv``
        projection, heads concatenated) or its output tokens (before the final norm).
    precision : {"fp32", "fp16", "bf16"}
        Arithmetic of the forward pass (autocast); ``"fp16"`` needs CUDA. The features are
        returned as float32 in every case.

    Raises
    ------
    ValueError
        Unknown name, bad device / block / feature, or a weights file that does not fit.
    FileNotFoundError
        ``weights`` names a file that does not exist.
    WeightsUnavailableError
        ``weights=None`` and the download failed.

    Attributes
    ----------
    name, config, patch_size, device, block, feature, weights
        What was loaded and how features are taken.
    model : torch.nn.Module
        The timm ``VisionTransformer`` (eval mode).
    """

    def __init__(
        self,
        name: str = defaults.BACKBONE,
        weights: str | os.PathLike | None = None,
        *,
        device: str = "auto",
        block: int = defaults.BLOCK,
        feature: str = defaults.FEATURE,
        precision: str = defaults.PRECISION,
    ) -> None:
        config = get_backbone_config(name)
        if precision not in defaults.PRECISIONS:
            raise ValueError(f"precision: expected one of {defaults.PRECISIONS}, got {precision!r}")
        self.precision: str = precision
        self.feature: str = _check_feature(feature)
        self.block: int = _check_block(block, config.depth)
        if weights is not None:
            weights = check_weights_path(weights)
        self.device: str = resolve_device(device)
        if precision == "fp16" and not self.device.startswith("cuda"):
            raise ValueError(f"precision: 'fp16' needs a CUDA device, got device {self.device!r} (use 'bf16' or 'fp32')")
        self.config: BackboneConfig = config
        self.weights: Path | None = weights
        self.model = create_vit(config, weights, self.device)

    # -- simple properties ------------------------------------------------------------
    @property
    def name(self) -> str:
        """Registry name of the backbone."""
        return self.config.name

    @property
    def patch_size(self) -> int:
        """Patch size ``P`` in pixels."""
        return self.config.patch_size

    @property
    def num_blocks(self) -> int:
        """Number of transformer blocks."""
        return len(self.model.blocks)

    @property
    def embed_dim(self) -> int:
        """Width ``C`` of the features and of the class embedding."""
        return self.config.embed_dim

    def __repr__(self) -> str:
        source = "pretrained" if self.weights is None else f"weights='{self.weights}'"
        return (
            f"Backbone({self.name!r}, {source}, device={self.device!r}, "
            f"block={self.block}, feature={self.feature!r})"
        )

    # -- public API -----------------------------------------------------------------
    def extract(
        self,
        image,
        *,
        max_size: int | None = defaults.MAX_SIZE,
        block: int | None = None,
        feature: str | None = None,
        with_cls: bool = False,
        fit: str = "crop",
    ) -> PatchFeatures:
        """Patch features of one image.

        Parameters
        ----------
        image : PIL.Image.Image or (H, W, 3) uint8 array
            Any input :func:`deepspectral.data.images.as_rgb_array` accepts.
        max_size : int or None
            The image is resized (aspect kept) so its longest side is at most this; ``None``
            keeps the size.
        block, feature : int, str or None
            Override the backbone's ``block`` / ``feature`` for this call.
        with_cls : bool
            Also fill ``PatchFeatures.cls`` with the class embedding (final norm applied).
        fit : {"crop", "pad", "resize"}, default "crop"
            How the input meets the patch grid (:meth:`ImageGeometry.for_image`): cropped
            to a multiple of ``P`` (the paper's), zero-padded after normalisation at the
            bottom / right (TokenCut's boxes; the grid is rounded up), or resized to the
            nearest multiple (TokenCut's saliency masks).

        Returns
        -------
        PatchFeatures
            ``features`` of shape ``(h, w, C)`` float32 with ``h = H_in // P`` and
            ``w = W_in // P`` for the resized input size ``(H_in, W_in)``.
        """
        return self.extract_batch(
            [image], max_size=max_size, batch_size=1, block=block, feature=feature,
            with_cls=with_cls, fit=fit,
        )[0]

    def extract_batch(
        self,
        images: Sequence,
        *,
        max_size: int | None = defaults.MAX_SIZE,
        batch_size: int = _BATCH_SIZE,
        block: int | None = None,
        feature: str | None = None,
        with_cls: bool = False,
        fit: str = "crop",
    ) -> list[PatchFeatures]:
        """Patch features of several images, batched where their cropped sizes agree.

        Images are grouped by the size of their cropped input, so no padding is ever used
        and each result equals :meth:`extract` on that image (up to float rounding).

        Parameters
        ----------
        images : sequence of PIL.Image.Image or (H, W, 3) uint8 arrays
        max_size, block, feature, with_cls, fit
            As in :meth:`extract`.
        batch_size : int
            Most images run through the model at once.

        Returns
        -------
        list of PatchFeatures
            In the order of ``images``.
        """
        block = self.block if block is None else _check_block(block, self.num_blocks)
        feature = self.feature if feature is None else _check_feature(feature)
        batch_size = _check_batch_size(batch_size)
        if (isinstance(images, np.ndarray) and images.ndim in (2, 3)) or hasattr(images, "convert"):
            raise ValueError(
                "images: expected a sequence of images, got a single image; use extract()"
            )
        prepared = [_prepare(image, self.patch_size, max_size, fit) for image in images]
        results: list[PatchFeatures | None] = [None] * len(prepared)
        for indices in self._buckets(prepared, batch_size):
            feats, cls = self._run(
                [prepared[i].pixels for i in indices], block=block, feature=feature,
                want_features=True, want_cls=with_cls,
            )
            for j, i in enumerate(indices):
                results[i] = PatchFeatures(
                    features=feats[j].copy(),
                    patch_size=self.patch_size,
                    image_size=prepared[i].geometry.image_size,
                    input_size=prepared[i].geometry.input_size,
                    backbone=self.name,
                    block=block,
                    feature=feature,
                    cls=None if cls is None else cls[j].copy(),
                )
        return results  # type: ignore[return-value]

    def cls_embedding(self, image, *, max_size: int | None = defaults.MAX_SIZE) -> np.ndarray:
        """Class-token output of the backbone for one image.

        The image is prepared as in :meth:`extract` (resize to ``max_size``, crop to a
        multiple of ``P``, normalisation).

        Returns
        -------
        (C,) float32
            The class token after the last block and the final norm.
        """
        return self.cls_embeddings([image], max_size=max_size, batch_size=1)[0]

    def cls_embeddings(
        self, images: Sequence, *, max_size: int | None = defaults.MAX_SIZE, batch_size: int = _BATCH_SIZE
    ) -> np.ndarray:
        """Class embeddings of several images (batched by cropped size).

        Returns
        -------
        (N, C) float32
            Row ``i`` is :meth:`cls_embedding` of ``images[i]``.
        """
        batch_size = _check_batch_size(batch_size)
        prepared = [_prepare(image, self.patch_size, max_size) for image in images]
        out = np.zeros((len(prepared), self.embed_dim), dtype=np.float32)
        for indices in self._buckets(prepared, batch_size):
            _, cls = self._run(
                [prepared[i].pixels for i in indices], block=self.block, feature=self.feature,
                want_features=False, want_cls=True,
            )
            out[indices] = cls
        return out

    # -- internals ------------------------------------------------------------------
    @staticmethod
    def _buckets(prepared: Sequence[_Prepared], batch_size: int) -> list[list[int]]:
        """Indices grouped by cropped size (first-seen order), in chunks of ``batch_size``."""
        groups: dict[tuple[int, int], list[int]] = {}
        for i, item in enumerate(prepared):
            groups.setdefault(item.pixels.shape[:2], []).append(i)
        return [
            members[start:start + batch_size]
            for members in groups.values()
            for start in range(0, len(members), batch_size)
        ]

    def _to_tensor(self, pixels: list[np.ndarray]):
        """Stack same-size ``(H, W, 3)`` uint8 images into a normalised ``(B, 3, H, W)``
        float32 tensor (:func:`normalize_imagenet` with the backbone's mean and std)."""
        return normalize_imagenet(
            np.stack(pixels), self.device, mean=self.config.mean, std=self.config.std
        )

    def _autocast(self):
        """Mixed precision for the forward pass (``precision`` other than fp32)."""
        import contextlib

        import torch

        if self.precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.float16 if self.precision == "fp16" else torch.bfloat16
        return torch.autocast(device_type=self.device.split(":")[0], dtype=dtype)

    def _run(
        self,
        pixels: list[np.ndarray],
        *,
        block: int,
        feature: str,
        want_features: bool,
        want_cls: bool,
    ) -> tuple[np.ndarray | None, np.ndarray | None]:
        """Forward a same-size batch; return features ``(B, h, w, C)`` and/or cls ``(B, C)``.
        Pixels that are not a multiple of the patch size (``fit="pad"``) are zero-padded at
        the bottom / right after normalisation, as TokenCut does."""
        import torch

        model = self.model
        index = block % self.num_blocks
        h = -(-pixels[0].shape[0] // self.patch_size)
        w = -(-pixels[0].shape[1] // self.patch_size)
        pad_h = h * self.patch_size - pixels[0].shape[0]
        pad_w = w * self.patch_size - pixels[0].shape[1]
        captured: dict[str, Any] = {}

        def hook(module, inputs, output) -> None:
            captured["out"] = output

        target = model.blocks[index] if feature == "tokens" else model.blocks[index].attn.qkv
        handle = target.register_forward_hook(hook) if want_features else None
        try:
            with torch.inference_mode(), self._autocast():
                x = self._to_tensor(pixels)
                if pad_h or pad_w:
                    x = torch.nn.functional.pad(x, (0, pad_w, 0, pad_h))
                cls = None
                if want_cls:
                    cls = model.forward_features(x)[:, 0]
                else:
                    model.forward_intermediates(
                        x, indices=[index], stop_early=True, intermediates_only=True,
                        output_fmt="NLC",
                    )
                feats = None
                if want_features:
                    out = captured["out"]
                    if feature != "tokens":
                        out = out.reshape(out.shape[0], out.shape[1], 3, -1)[:, :, _QKV_INDEX[feature]]
                    out = out[:, model.num_prefix_tokens:]
                    if out.shape[1] != h * w:
                        raise RuntimeError(
                            f"backbone {self.name!r}: expected {h * w} patch tokens for a "
                            f"{h}x{w} grid, got {out.shape[1]}"
                        )
                    feats = out.reshape(out.shape[0], h, w, -1).float().cpu().numpy()
                if cls is not None:
                    cls = cls.float().cpu().numpy()
        finally:
            if handle is not None:
                handle.remove()
        return feats, cls
