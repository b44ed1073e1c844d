"""Registry of the self-supervised ViT backbones (pure data, no torch).

Each entry says which timm model (with its pretrained tag) a name stands for, its patch
size, width, depth and prefix tokens, its input normalisation and where its weights are
published. :mod:`deepspectral.backbones.weights` builds the models,
:mod:`deepspectral.backbones.extract` runs them.
"""

from __future__ import annotations

from dataclasses import dataclass

from .. import defaults

__all__ = [
    "BackboneConfig",
    "BACKBONES",
    "available_backbones",
    "get_backbone_config",
]


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
        ``weights=`` when the hub cannot be reached. Empty where there is no public file
        (DINOv3: Meta's licence form).
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
    """A DINO ViT (Caron et al. 2021): 12 blocks, one class token, weights on fbaipublicfiles."""
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
    """A DINOv2 ViT/14 (Oquab et al. 2023), optionally with 4 register tokens."""
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


def _dinov3(name: str, arch: str, dim: int, depth: int, desc: str) -> BackboneConfig:
    """A DINOv3 ViT/16 (Siméoni et al. 2025) as timm provides it: class token + 4 register
    tokens, RoPE positions (no absolute position embedding), weights ``lvd1689m``. Meta
    gives the original checkpoints only after its licence form, so there is no public file
    URL (timm's pretrained config has none either); timm's hub copy is the download."""
    timm_name = f"vit_{arch}_patch16_dinov3.lvd1689m"
    return BackboneConfig(
        name=name,
        timm_name=timm_name,
        patch_size=16,
        embed_dim=dim,
        depth=depth,
        num_prefix_tokens=1 + 4,
        hf_hub_id=f"timm/{timm_name}",
        weights_url="",
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
    # DINOv3: timm's models without qkv bias (the "_qkvb" variants add an all-zero bias
    # that timm applies outside the qkv layer, where the feature hook cannot see it)
    _dinov3("dinov3_vits16", "small", 384, 12, "DINOv3 ViT-S/16 (4 registers)"),
    _dinov3("dinov3_vits16plus", "small_plus", 384, 12, "DINOv3 ViT-S+/16 (4 registers)"),
    _dinov3("dinov3_vitb16", "base", 768, 12, "DINOv3 ViT-B/16 (4 registers)"),
    _dinov3("dinov3_vitl16", "large", 1024, 24, "DINOv3 ViT-L/16 (4 registers)"),
    _dinov3("dinov3_vith16plus", "huge_plus", 1280, 32, "DINOv3 ViT-H+/16 (4 registers)"),
)

#: Registered backbones by name.
BACKBONES: dict[str, BackboneConfig] = {config.name: config for config in _REGISTERED}


def available_backbones() -> list[str]:
    """Sorted names of the registered backbones.

    Returns
    -------
    list of str
        The keys of :data:`BACKBONES`, sorted.
    """
    return sorted(BACKBONES)


def get_backbone_config(name: str) -> BackboneConfig:
    """Return the :class:`BackboneConfig` registered as ``name`` (exact match only).

    Parameters
    ----------
    name : str
        A registry name, e.g. ``"dino_vits16"``.

    Returns
    -------
    BackboneConfig

    Raises
    ------
    ValueError
        When ``name`` is not a registered backbone (the message lists the valid names).
    """
    if not isinstance(name, str) or name not in BACKBONES:
        raise ValueError(
            f"name: unknown backbone {name!r}; valid choices are {', '.join(available_backbones())}"
        )
    return BACKBONES[name]
