"""Self-supervised ViT backbones (registry + dense feature extraction).

Step 1 of the pipeline (see ``DESIGN.md``): an image is resized so its longest side is at
most ``max_size``, cropped to a multiple of the patch size ``P`` by dropping the bottom
rows / right columns, ImageNet-normalised and run through a timm Vision Transformer
(``dynamic_img_size=True``). The features are the attention keys of the last block by
default (a forward hook on ``blocks[block].attn.qkv``, heads concatenated), with the class
and register tokens dropped::

    from deepspectral.backbones import Backbone
    bb = Backbone("dino_vits16", weights=None, device="auto")   # downloads through the HF hub
    bb = Backbone("dino_vits16", weights="dino_deitsmall16_pretrain.pth")   # offline
    feats = bb.extract(image)              # PatchFeatures, features (h, w, 384) float32
    cls = bb.cls_embedding(image)          # (384,) float32

torch and timm are imported inside the functions that need them, so that importing this
module (and ``deepspectral``) stays light.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from . import defaults
from .errors import SetupError
from .data.images import as_rgb_array, input_size_for, resize_image
from .features import PatchFeatures

__all__ = [
    "Backbone",
    "BackboneConfig",
    "BACKBONES",
    "available_backbones",
    "get_backbone_config",
    "save_random_weights",
    "WeightsUnavailableError",
]


class WeightsUnavailableError(SetupError):
    """The pretrained weights of a backbone could not be downloaded (e.g. no network)."""


@dataclass(frozen=True)
class BackboneConfig:
    """Description of one registered backbone.

    Attributes
    ----------
    name : str
        Registry name (``dino_vits16``, ...).
    timm_name : str
        ``timm.create_model`` name with its pretrained tag (``vit_small_patch16_224.dino``).
    patch_size : int
        Patch size ``P`` in pixels.
    embed_dim : int
        Token width ``C`` (also the width of ``k``/``q``/``v`` with the heads concatenated).
    depth : int
        Number of transformer blocks.
    num_prefix_tokens : int
        Tokens before the patch tokens: 1 (class token) + the register tokens.
    mean, std : (3,) tuple of float
        Normalisation of RGB values in [0, 1].
    hf_hub_id : str
        Hugging Face hub repository the pretrained weights come from.
    weights_url : str
        Where the original (DINO / DINOv2) checkpoint is published; it can be passed as
        ``weights=`` when the hub cannot be reached.
    description : str
        One line for humans.
    """

    name: str
    timm_name: str
    patch_size: int
    embed_dim: int
    depth: int = 12
    num_prefix_tokens: int = 1
    mean: tuple[float, float, float] = defaults.IMAGENET_MEAN
    std: tuple[float, float, float] = defaults.IMAGENET_STD
    hf_hub_id: str = ""
    weights_url: str = ""
    description: str = ""


def _dino(name: str, timm_name: str, patch: int, dim: int, file: str, desc: str) -> BackboneConfig:
    return BackboneConfig(
        name=name,
        timm_name=timm_name,
        patch_size=patch,
        embed_dim=dim,
        depth=12,
        num_prefix_tokens=1,
        hf_hub_id=f"timm/{timm_name}",
        weights_url=f"https://dl.fbaipublicfiles.com/dino/{file}/{file}.pth",
        description=desc,
    )


def _dinov2(name: str, size: str, dim: int, depth: int, reg: bool, desc: str) -> BackboneConfig:
    arch = {"s": "small", "b": "base", "l": "large"}[size]
    timm_name = f"vit_{arch}_patch14_{'reg4_' if reg else ''}dinov2.lvd142m"
    file = f"dinov2_vit{size}14{'_reg4' if reg else ''}_pretrain.pth"
    return BackboneConfig(
        name=name,
        timm_name=timm_name,
        patch_size=14,
        embed_dim=dim,
        depth=depth,
        num_prefix_tokens=1 + (4 if reg else 0),
        hf_hub_id=f"timm/{timm_name}",
        weights_url=f"https://dl.fbaipublicfiles.com/dinov2/dinov2_vit{size}14/{file}",
        description=desc,
    )


_REGISTERED = (
    _dino("dino_vits16", "vit_small_patch16_224.dino", 16, 384, "dino_deitsmall16_pretrain",
          "DINO ViT-S/16 (the paper's default)"),
    _dino("dino_vits8", "vit_small_patch8_224.dino", 8, 384, "dino_deitsmall8_pretrain",
          "DINO ViT-S/8"),
    _dino("dino_vitb16", "vit_base_patch16_224.dino", 16, 768, "dino_vitbase16_pretrain",
          "DINO ViT-B/16"),
    _dino("dino_vitb8", "vit_base_patch8_224.dino", 8, 768, "dino_vitbase8_pretrain",
          "DINO ViT-B/8 (the paper's best localization model)"),
    _dinov2("dinov2_vits14", "s", 384, 12, False, "DINOv2 ViT-S/14"),
    _dinov2("dinov2_vitb14", "b", 768, 12, False, "DINOv2 ViT-B/14"),
    _dinov2("dinov2_vitl14", "l", 1024, 24, False, "DINOv2 ViT-L/14"),
    _dinov2("dinov2_vits14_reg", "s", 384, 12, True, "DINOv2 ViT-S/14 with 4 registers"),
    _dinov2("dinov2_vitb14_reg", "b", 768, 12, True, "DINOv2 ViT-B/14 with 4 registers"),
    _dinov2("dinov2_vitl14_reg", "l", 1024, 24, True, "DINOv2 ViT-L/14 with 4 registers"),
)

#: Registered backbones by name.
BACKBONES: dict[str, BackboneConfig] = {config.name: config for config in _REGISTERED}


def save_random_weights(path: str | os.PathLike, name: str = defaults.BACKBONE, *, seed: int = 0) -> Path:
    """Save a random-initialised state dict of backbone ``name`` to ``path``
    (``torch.save``), to try the whole pipeline offline through ``weights=path`` /
    ``--weights path``. The features are meaningless; the plumbing is real.

    Returns
    -------
    pathlib.Path
        ``path``.
    """
    import timm
    import torch

    config = get_backbone_config(name)
    torch.manual_seed(seed)
    model = timm.create_model(config.timm_name, pretrained=False, num_classes=0)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    return path


def available_backbones() -> list[str]:
    """Sorted names of the registered backbones."""
    return sorted(BACKBONES)


def get_backbone_config(name: str) -> BackboneConfig:
    """Return the :class:`BackboneConfig` registered as ``name`` (exact match only).

    Raises
    ------
    ValueError
        When ``name`` is not a registered backbone.
    """
    if not isinstance(name, str) or name not in BACKBONES:
        raise ValueError(
            f"name: unknown backbone {name!r}; valid choices are {', '.join(available_backbones())}"
        )
    return BACKBONES[name]


# ---------------------------------------------------------------------------------------
# Argument checks
# ---------------------------------------------------------------------------------------

_DEVICE_PATTERN = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")
_QKV_INDEX = {"q": 0, "k": 1, "v": 2}
#: Default number of images per forward pass of the batched methods.
_BATCH_SIZE = 8


def _resolve_device(device: Any) -> str:
    """Validate ``device`` and turn ``"auto"`` into ``"cuda"`` or ``"cpu"``."""
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
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size: expected a positive integer, got {batch_size!r}")
    return int(batch_size)


# ---------------------------------------------------------------------------------------
# Weights
# ---------------------------------------------------------------------------------------

_CONTAINER_KEYS = ("teacher", "state_dict", "model", "student")
_STRIP_PREFIXES = ("module.", "backbone.", "_orig_mod.")
_HEAD_PREFIXES = ("head.", "dino_head.", "ibot_head.")


def _read_state_dict(path: Path) -> dict:
    """Read a checkpoint file into a flat ``{key: tensor}`` dict in timm/DINO naming."""
    import torch

    if path.suffix.lower() == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError as exc:  # pragma: no cover - safetensors is a dependency of timm
            raise ImportError(
                "weights: reading .safetensors files needs the 'safetensors' package "
                "(pip install safetensors)"
            ) from exc
        try:
            raw = load_file(str(path), device="cpu")
        except Exception as exc:  # safetensors raises its own error types
            raise ValueError(f"weights: could not read safetensors file '{path}': {exc}") from exc
    else:
        try:
            raw = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as exc:  # UnpicklingError, RuntimeError (zip), EOFError, ...
            raise ValueError(
                f"weights: could not read '{path}' with torch.load(weights_only=True): {exc}. "
                "Expected a state dict of tensors (the published DINO/DINOv2 .pth, a timm "
                "state dict saved with torch.save, or a .safetensors file); a full training "
                "checkpoint with optimizer state must be reduced to its 'teacher' state dict first."
            ) from exc

    state = raw
    for _ in range(4):  # unwrap nested containers such as {"model": {"state_dict": ...}}
        if not isinstance(state, dict):
            break
        inner = next(
            (state[key] for key in _CONTAINER_KEYS if isinstance(state.get(key), dict)), None
        )
        if inner is None:
            break
        state = inner
    if not isinstance(state, dict):
        raise ValueError(
            f"weights: '{path}' does not hold a state dict (found {type(state).__name__})"
        )

    out = {}
    for key, value in state.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            continue
        changed = True
        while changed:
            changed = False
            for prefix in _STRIP_PREFIXES:
                if key.startswith(prefix):
                    key, changed = key[len(prefix):], True
        if key.startswith(_HEAD_PREFIXES):
            continue
        out[key] = value
    if not out:
        keys = list(state)[:8] if isinstance(state, dict) else []
        raise ValueError(f"weights: no backbone tensors found in '{path}' (top-level keys: {keys})")
    return out


def _list_keys(keys: Sequence[str], limit: int = 6) -> str:
    keys = sorted(keys)
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > limit else "")


def _load_weights_file(model, path: Path, config: BackboneConfig, device: str) -> None:
    """Load ``path`` into ``model`` (which may live on the meta device) in place."""
    from timm.models.vision_transformer import checkpoint_filter_fn

    state = _read_state_dict(path)
    proj = state.get("patch_embed.proj.weight")
    if proj is not None and proj.ndim == 4 and tuple(proj.shape[-2:]) != (config.patch_size,) * 2:
        # timm's filter would silently resample the patch embedding to the other size.
        others = [c.name for c in BACKBONES.values() if c.patch_size == proj.shape[-1]]
        raise ValueError(
            f"weights: '{path}' is a checkpoint with patch size {proj.shape[-1]} but backbone "
            f"{config.name!r} has patch size {config.patch_size}"
            + (f"; did you mean one of {', '.join(others)}?" if others else "")
        )
    try:
        state = checkpoint_filter_fn(state, model)
    except (RuntimeError, ValueError, KeyError, IndexError) as exc:
        raise ValueError(
            f"weights: '{path}' could not be converted for backbone {config.name!r} (timm "
            f"{config.timm_name!r}): {type(exc).__name__}: {exc}"
        ) from exc
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing keys: {_list_keys(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {_list_keys(unexpected)}")
        raise ValueError(
            f"weights: '{path}' does not match backbone {config.name!r} (timm "
            f"{config.timm_name!r}); {'; '.join(parts)}. Is it a checkpoint of this architecture?"
        )
    wrong = [
        f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if tuple(state[k].shape) != tuple(v.shape)
    ]
    if wrong:
        raise ValueError(
            f"weights: '{path}' does not match backbone {config.name!r} (timm "
            f"{config.timm_name!r}); tensor shapes differ (file vs model): {_list_keys(wrong, 4)}"
        )
    import torch

    # ``assign=True`` puts the loaded tensors in place of the (meta) parameters instead of
    # copying them into freshly allocated memory; cast first so the model stays float32.
    state = {
        k: v.to(device=device, dtype=torch.float32) if v.is_floating_point() else v.to(device)
        for k, v in state.items()
    }
    model.load_state_dict(state, strict=True, assign=True)


def _weights_help(config: BackboneConfig) -> str:
    return (
        f"Without network access, download a checkpoint elsewhere -- the original file "
        f"{config.weights_url} or the timm weights (model.safetensors) from "
        f"https://huggingface.co/{config.hf_hub_id} -- and pass it with `--weights FILE` on "
        f"the command line or `Backbone({config.name!r}, weights='FILE')` in Python. Both the "
        f"original DINO/DINOv2 .pth and timm/safetensors state dicts work."
    )


def _is_download_error(exc: BaseException) -> bool:
    """Whether ``exc`` looks like a failed download (network, hub, cache)."""
    if isinstance(exc, (OSError, ConnectionError, TimeoutError)):
        return True
    module = type(exc).__module__ or ""
    return module.split(".")[0] in {"huggingface_hub", "httpx", "httpcore", "requests", "urllib3", "urllib"}


#: Host of the Hugging Face hub (where timm's pretrained weights live).
_HUB_HOST = "huggingface.co"


def _hub_reachable(timeout: float = 5.0) -> bool:
    """Quick check that the hub can be reached: ``False`` in offline mode or when the host
    does not resolve / accept a connection. Behind a proxy the check is skipped."""
    import socket

    if os.environ.get("HF_HUB_OFFLINE", "").lower() in {"1", "true", "yes", "on"}:
        return False
    if any(os.environ.get(name) for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True
    host = os.environ.get("HF_ENDPOINT", f"https://{_HUB_HOST}").split("://")[-1].split("/")[0]
    try:
        with socket.create_connection((host.split(":")[0], 443), timeout=timeout):
            return True
    except OSError:
        return False


def _raise_if_not_cached(config: BackboneConfig) -> None:
    """Without the hub, go on only when the weights are in the local HF cache."""
    from huggingface_hub import try_to_load_from_cache

    for filename in ("model.safetensors", "pytorch_model.bin"):
        if isinstance(try_to_load_from_cache(config.hf_hub_id, filename), str):
            import huggingface_hub.constants

            os.environ["HF_HUB_OFFLINE"] = "1"  # use the cached copy without network calls
            huggingface_hub.constants.HF_HUB_OFFLINE = True
            return
    raise OSError(f"{_HUB_HOST} cannot be reached and the weights are not in the local cache")


def _create_model(config: BackboneConfig, weights: Path | None, device: str):
    """Create the timm model of ``config`` with its weights, in eval mode, on ``device``."""
    import timm
    import torch

    kwargs = dict(pretrained=False, dynamic_img_size=True, num_classes=0)
    if weights is None:
        try:
            if not _hub_reachable():  # fail at once instead of a minute of retries
                _raise_if_not_cached(config)
            model = timm.create_model(config.timm_name, **dict(kwargs, pretrained=True))
        except Exception as exc:
            if not _is_download_error(exc):
                raise
            raise WeightsUnavailableError(
                f"The pretrained weights for {config.name!r} (timm {config.timm_name!r}, Hugging "
                f"Face hub {config.hf_hub_id!r}) could not be downloaded: "
                f"{type(exc).__name__}: {exc}\n{_weights_help(config)}"
            ) from exc
        model = model.to(device)
    else:
        # Build on the meta device (no random init: it is overwritten anyway), then
        # materialise on the target device while loading the state dict.
        with torch.device("meta"):
            model = timm.create_model(config.timm_name, weight_init="skip", **kwargs)
        persistent = set(model.state_dict())
        if any(name not in persistent for name, _ in model.named_buffers()):
            # Non-persistent buffers would stay uninitialised: build normally instead.
            model = timm.create_model(config.timm_name, **kwargs).to(device)
        _load_weights_file(model, weights, config, device)
    return model.eval()


def _check_model(model, config: BackboneConfig) -> None:
    """Make sure the timm model agrees with the registry entry."""
    patch = model.patch_embed.patch_size
    patch = patch[0] if isinstance(patch, (tuple, list)) else patch
    found = (int(patch), int(model.embed_dim), len(model.blocks), int(model.num_prefix_tokens))
    wanted = (config.patch_size, config.embed_dim, config.depth, config.num_prefix_tokens)
    if found != wanted:
        raise RuntimeError(
            f"backbone {config.name!r}: timm model {config.timm_name!r} has (patch size, width, "
            f"depth, prefix tokens) = {found}, the registry says {wanted}"
        )


# ---------------------------------------------------------------------------------------
# Images
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Prepared:
    pixels: np.ndarray  # (H_c, W_c, 3) uint8, cropped to a multiple of P
    image_size: tuple[int, int]
    input_size: tuple[int, int]


def _prepare(image, patch_size: int, max_size: int | None) -> _Prepared:
    """Image -> RGB uint8, resized to ``max_size``, cropped to a multiple of ``patch_size``."""
    rgb = as_rgb_array(image)
    image_size = (int(rgb.shape[0]), int(rgb.shape[1]))
    if max_size is not None and (
        isinstance(max_size, bool) or not isinstance(max_size, (int, np.integer)) or max_size < 1
    ):
        raise ValueError(f"max_size: expected a positive integer or None, got {max_size!r}")
    input_size = input_size_for(image_size, max_size)
    rgb = resize_image(rgb, input_size)
    h, w = input_size[0] // patch_size, input_size[1] // patch_size
    if h == 0 or w == 0:
        raise ValueError(
            f"image: the image ({input_size[0]}x{input_size[1]} pixels"
            + (f", resized from {image_size[0]}x{image_size[1]}" if input_size != image_size else "")
            + f") is smaller than one patch of {patch_size} pixels"
        )
    pixels = np.ascontiguousarray(rgb[: h * patch_size, : w * patch_size])
    return _Prepared(pixels=pixels, image_size=image_size, input_size=input_size)


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
            if not isinstance(weights, (str, os.PathLike)):
                raise ValueError(f"weights: expected None or a file path, got {weights!r}")
            weights = Path(weights).expanduser()
            if not weights.is_file():
                raise FileNotFoundError(
                    f"weights: file '{weights}' does not exist"
                    + (" (it is a directory)" if weights.is_dir() else "")
                )
        self.device: str = _resolve_device(device)
        if precision == "fp16" and not self.device.startswith("cuda"):
            raise ValueError(f"precision: 'fp16' needs a CUDA device, got device {self.device!r} (use 'bf16' or 'fp32')")
        self.config: BackboneConfig = config
        self.weights: Path | None = weights
        self.model = _create_model(config, weights, self.device)
        _check_model(self.model, config)

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

        Returns
        -------
        PatchFeatures
            ``features`` of shape ``(h, w, C)`` float32 with ``h = H_in // P`` and
            ``w = W_in // P`` for the resized input size ``(H_in, W_in)``.
        """
        return self.extract_batch(
            [image], max_size=max_size, batch_size=1, block=block, feature=feature,
            with_cls=with_cls,
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
    ) -> list[PatchFeatures]:
        """Patch features of several images, batched where their cropped sizes agree.

        Images are grouped by the size of their cropped input, so no padding is ever used
        and each result equals :meth:`extract` on that image (up to float rounding).

        Parameters
        ----------
        images : sequence of PIL.Image.Image or (H, W, 3) uint8 arrays
        max_size, block, feature, with_cls
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
        prepared = [_prepare(image, self.patch_size, max_size) for image in images]
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
                    image_size=prepared[i].image_size,
                    input_size=prepared[i].input_size,
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
        """Stack same-size uint8 images into a normalised ``(B, 3, H, W)`` float32 tensor."""
        import torch

        batch = torch.from_numpy(np.stack(pixels)).to(self.device)
        batch = batch.permute(0, 3, 1, 2).to(torch.float32).div_(255.0)
        mean = torch.tensor(self.config.mean, dtype=torch.float32, device=self.device)
        std = torch.tensor(self.config.std, dtype=torch.float32, device=self.device)
        return (batch - mean[:, None, None]) / std[:, None, None]

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
        """Forward a same-size batch; return features ``(B, h, w, C)`` and/or cls ``(B, C)``."""
        import torch

        model = self.model
        index = block % self.num_blocks
        h = pixels[0].shape[0] // self.patch_size
        w = pixels[0].shape[1] // self.patch_size
        captured: dict[str, Any] = {}

        def hook(module, inputs, output) -> None:
            captured["out"] = output

        target = model.blocks[index] if feature == "tokens" else model.blocks[index].attn.qkv
        handle = target.register_forward_hook(hook) if want_features else None
        try:
            with torch.inference_mode(), self._autocast():
                x = self._to_tensor(pixels)
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
