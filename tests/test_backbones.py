"""Tests of deepspectral.backbones with random-initialised ViTs loaded through ``weights=``.

Everything runs offline: the models are random (the features are meaningless) but the
plumbing -- checkpoint layouts, the qkv hook, cropping, resizing, batching -- is real.
"""

from __future__ import annotations

import argparse
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
timm = pytest.importorskip("timm")

from deepspectral import defaults  # noqa: E402
from deepspectral.backbones import (  # noqa: E402
    BACKBONES,
    Backbone,
    BackboneConfig,
    WeightsUnavailableError,
    available_backbones,
    get_backbone_config,
)
from deepspectral.features import PatchFeatures  # noqa: E402


# ---------------------------------------------------------------------------------------
# Fixtures: one random ViT-S/16 saved to disk, shared by the whole module
# ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module", autouse=True)
def _single_thread():
    """Tiny inputs: one thread is faster, and far faster on a shared, busy machine."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _randomise_biases(model) -> None:
    """timm initialises the qkv biases to zero; make them non-zero so they are exercised."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("bias"):
                param.add_(0.1 * torch.randn(param.shape, generator=gen))


@pytest.fixture(scope="module")
def vit_model():
    torch.manual_seed(0)
    model = timm.create_model("vit_small_patch16_224", pretrained=False, num_classes=0, dynamic_img_size=True)
    _randomise_biases(model)
    return model.eval()


@pytest.fixture(scope="module")
def weights_file(vit_model, tmp_path_factory):
    path = tmp_path_factory.mktemp("weights") / "vits16_random.pth"
    torch.save(vit_model.state_dict(), path)
    return path


@pytest.fixture(scope="module")
def bb(weights_file):
    return Backbone("dino_vits16", weights=weights_file, device="cpu")


def _image(height, width, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def _manual_features(model, pixels, *, block, kind, patch=16, prefix=1):
    """Features computed without hooks: blocks run one by one, qkv applied by hand."""
    h, w = pixels.shape[0] // patch, pixels.shape[1] // patch
    crop = pixels[: h * patch, : w * patch]
    x = torch.from_numpy(crop.astype(np.float32) / 255.0).permute(2, 0, 1)[None]
    mean = torch.tensor(defaults.IMAGENET_MEAN)[:, None, None]
    std = torch.tensor(defaults.IMAGENET_STD)[:, None, None]
    x = (x - mean) / std
    with torch.no_grad():
        tokens = model._pos_embed(model.patch_embed(x))
        tokens = model.norm_pre(tokens)
        index = block % len(model.blocks)
        for blk in model.blocks[:index]:
            tokens = blk(tokens)
        blk = model.blocks[index]
        if kind == "tokens":
            out = blk(tokens)
        else:
            qkv = torch.nn.functional.linear(blk.norm1(tokens), blk.attn.qkv.weight, blk.attn.qkv.bias)
            dim = qkv.shape[-1] // 3
            i = "qkv".index(kind)
            out = qkv[..., i * dim:(i + 1) * dim]
    return out[0, prefix:].reshape(h, w, -1).numpy()


# ---------------------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------------------


def test_registry_names():
    required = {
        "dino_vits16", "dino_vits8", "dino_vitb16", "dino_vitb8", "dinov2_vits14",
        "dinov2_vitb14", "dinov2_vits14_reg", "dinov2_vitb14_reg",
    }
    assert required <= set(available_backbones())
    assert available_backbones() == sorted(BACKBONES)
    assert defaults.BACKBONE in BACKBONES
    config = BACKBONES["dino_vits16"]
    assert isinstance(config, BackboneConfig)
    assert config.timm_name == "vit_small_patch16_224.dino"
    assert (config.patch_size, config.embed_dim, config.num_prefix_tokens) == (16, 384, 1)
    assert BACKBONES["dinov2_vits14_reg"].num_prefix_tokens == 5
    with pytest.raises(Exception):
        config.patch_size = 8  # frozen


def test_registry_matches_timm():
    pretrained = set(timm.list_models(pretrained=True))
    for name, config in BACKBONES.items():
        assert config.name == name
        assert config.timm_name in pretrained, config.timm_name
        cfg = timm.models.get_pretrained_cfg(config.timm_name)
        assert tuple(cfg.mean) == pytest.approx(config.mean)
        assert tuple(cfg.std) == pytest.approx(config.std)
        assert cfg.hf_hub_id == config.hf_hub_id
        assert cfg.url == config.weights_url
        with torch.device("meta"):  # shapes only, no memory, no init cost
            kwargs = dict(pretrained=False, num_classes=0, dynamic_img_size=True)
            try:
                model = timm.create_model(config.timm_name, weight_init="skip", **kwargs)
            except TypeError:  # DINOv3's Eva has no weight_init option
                model = timm.create_model(config.timm_name, **kwargs)
        assert model.patch_embed.patch_size[0] == config.patch_size
        assert model.embed_dim == config.embed_dim
        assert len(model.blocks) == config.depth
        assert model.num_prefix_tokens == config.num_prefix_tokens


@pytest.mark.parametrize("name", ["dino_vits", "DINO_VITS16", "vits16", "dino_vits16 ", "", None])
def test_unknown_name(name):
    with pytest.raises(ValueError, match="name") as info:
        Backbone(name, weights="does-not-matter.pth")
    assert "dino_vits16" in str(info.value) and "dinov2_vitb14_reg" in str(info.value)
    with pytest.raises(ValueError, match="unknown backbone"):
        get_backbone_config(name)


# ---------------------------------------------------------------------------------------
# Argument checks
# ---------------------------------------------------------------------------------------


def test_missing_weights_file(tmp_path):
    missing = tmp_path / "nope.pth"
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        Backbone("dino_vits16", weights=missing)


@pytest.mark.parametrize("device", ["gpu", "cuda0", "", 0, None])
def test_bad_device(weights_file, device):
    with pytest.raises(ValueError, match="device"):
        Backbone("dino_vits16", weights=weights_file, device=device)


def test_cuda_unavailable(weights_file):
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    with pytest.raises(ValueError, match="CUDA is not available"):
        Backbone("dino_vits16", weights=weights_file, device="cuda")


def test_device_auto(bb, weights_file):
    auto = Backbone("dino_vits16", weights=weights_file, device="auto")
    assert auto.device == ("cuda" if torch.cuda.is_available() else "cpu")
    assert bb.device == "cpu"
    assert next(bb.model.parameters()).device.type == "cpu"
    assert not bb.model.training


@pytest.mark.parametrize("feature", ["key", "K", "cls", None])
def test_bad_feature(weights_file, bb, feature):
    with pytest.raises(ValueError, match="feature"):
        Backbone("dino_vits16", weights=weights_file, feature=feature)
    if feature is not None:
        with pytest.raises(ValueError, match="feature"):
            bb.extract(_image(32, 32), feature=feature)


@pytest.mark.parametrize("block", [12, -13, 1.5, True, "1"])
def test_bad_block(weights_file, bb, block):
    with pytest.raises(ValueError, match="block"):
        Backbone("dino_vits16", weights=weights_file, block=block)
    with pytest.raises(ValueError, match="block"):
        bb.extract(_image(32, 32), block=block)


def test_bad_batch_size_and_max_size(bb):
    for batch_size in (0, -1, 2.0, True):
        with pytest.raises(ValueError, match="batch_size"):
            bb.extract_batch([_image(32, 32)], batch_size=batch_size)
    for max_size in (0, -5, 100.5):
        with pytest.raises(ValueError, match="max_size"):
            bb.extract(_image(32, 32), max_size=max_size)


def test_image_smaller_than_a_patch(bb):
    with pytest.raises(ValueError, match="smaller than one patch of 16 pixels"):
        bb.extract(_image(10, 40))
    with pytest.raises(ValueError, match="smaller than one patch"):
        bb.extract(_image(40, 15))
    # A resize can make an image too small as well.
    with pytest.raises(ValueError, match="smaller than one patch"):
        bb.extract(_image(400, 20), max_size=200)


def test_bad_image(bb):
    with pytest.raises(ValueError, match="image"):
        bb.extract(np.zeros((32, 32, 5), dtype=np.uint8))


# ---------------------------------------------------------------------------------------
# Features
# ---------------------------------------------------------------------------------------


def test_attributes(bb, weights_file):
    assert bb.name == "dino_vits16"
    assert bb.patch_size == 16
    assert bb.config is BACKBONES["dino_vits16"]
    assert bb.block == -1 and bb.feature == "k"
    assert bb.num_blocks == 12 and bb.embed_dim == 384
    assert bb.weights == weights_file
    assert "dino_vits16" in repr(bb)


def test_shapes_and_crop(bb):
    image = _image(100, 70)
    feats = bb.extract(image)
    assert isinstance(feats, PatchFeatures)
    assert feats.features.shape == (6, 4, 384)
    assert feats.features.dtype == np.float32 and feats.features.flags["C_CONTIGUOUS"]
    assert feats.image_size == (100, 70) and feats.input_size == (100, 70)
    assert feats.crop_size == (96, 64) and feats.grid_size == (6, 4)
    assert (feats.backbone, feats.block, feats.feature, feats.patch_size) == ("dino_vits16", -1, "k", 16)
    assert feats.cls is None
    # The dropped bottom rows / right columns do not matter.
    changed = image.copy()
    changed[96:] = 0
    changed[:, 64:] = 255
    np.testing.assert_array_equal(bb.extract(changed).features, feats.features)
    # ... and equal the features of the pre-cropped image.
    np.testing.assert_allclose(bb.extract(image[:96, :64]).features, feats.features, atol=1e-5)


def test_pil_grey_and_float_inputs(bb):
    from PIL import Image

    image = _image(48, 64, seed=3)
    ref = bb.extract(image).features
    np.testing.assert_array_equal(bb.extract(Image.fromarray(image)).features, ref)
    np.testing.assert_allclose(bb.extract(image / 255.0).features, ref, atol=1e-5)
    grey = bb.extract(image[:, :, 0])
    assert grey.features.shape == (3, 4, 384)


def test_max_size_resize(bb):
    image = _image(300, 200, seed=1)
    feats = bb.extract(image, max_size=100)
    assert feats.image_size == (300, 200)
    assert feats.input_size == (100, 67)
    assert feats.features.shape == (6, 4, 384)
    assert bb.extract(image, max_size=None).features.shape == (18, 12, 384)
    # Equal to resizing first and extracting without a limit.
    from deepspectral.geometry import resize_image

    resized = resize_image(image, (100, 67))
    np.testing.assert_allclose(bb.extract(resized, max_size=None).features, feats.features, atol=1e-5)


@pytest.mark.parametrize("kind", ["k", "q", "v", "tokens"])
def test_feature_kinds_match_manual_computation(bb, vit_model, kind):
    image = _image(64, 80, seed=2)
    for block in (-1, 4):
        feats = bb.extract(image, feature=kind, block=block)
        assert feats.features.shape == (4, 5, 384)
        assert feats.feature == kind and feats.block == block
        expected = _manual_features(vit_model, image, block=block, kind=kind)
        np.testing.assert_allclose(feats.features, expected, atol=1e-4, rtol=1e-4)


def test_feature_kinds_differ(bb):
    image = _image(48, 48, seed=4)
    outs = {kind: bb.extract(image, feature=kind).features for kind in defaults.FEATURE_KINDS}
    for a in outs:
        for b in outs:
            if a < b:
                assert not np.allclose(outs[a], outs[b]), (a, b)
    # The backbone's own default is used when no override is given.
    assert bb.extract(image).feature == "k"
    np.testing.assert_array_equal(bb.extract(image).features, outs["k"])


def test_tokens_match_forward_intermediates(bb, vit_model):
    image = _image(48, 64, seed=5)
    x = (torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255.0
         - torch.tensor(defaults.IMAGENET_MEAN)[:, None, None]) / torch.tensor(defaults.IMAGENET_STD)[:, None, None]
    with torch.no_grad():
        inter = vit_model.forward_intermediates(x, indices=[7], intermediates_only=True, output_fmt="NCHW")[0]
    expected = inter[0].permute(1, 2, 0).numpy()
    np.testing.assert_allclose(bb.extract(image, feature="tokens", block=7).features, expected, atol=1e-4)


def test_cls_embedding(bb, vit_model):
    image = _image(70, 90, seed=6)
    cls = bb.cls_embedding(image)
    assert cls.shape == (384,) and cls.dtype == np.float32
    x = torch.from_numpy(image[:64, :80]).permute(2, 0, 1)[None].float() / 255.0
    x = (x - torch.tensor(defaults.IMAGENET_MEAN)[:, None, None]) / torch.tensor(defaults.IMAGENET_STD)[:, None, None]
    with torch.no_grad():
        expected = vit_model.forward_features(x)[0, 0].numpy()
    np.testing.assert_allclose(cls, expected, atol=1e-4)
    both = bb.extract(image, with_cls=True)
    np.testing.assert_allclose(both.cls, cls, atol=1e-5)
    np.testing.assert_allclose(both.features, bb.extract(image).features, atol=1e-5)
    many = bb.cls_embeddings([image, _image(40, 40), image], batch_size=2)
    assert many.shape == (3, 384)
    np.testing.assert_allclose(many[0], cls, atol=1e-4)
    np.testing.assert_allclose(many[2], cls, atol=1e-4)


def test_extract_batch_equals_extract(bb):
    images = [
        _image(100, 70, seed=10),
        _image(96, 64, seed=11),   # same cropped size as the first
        _image(50, 90, seed=12),
        _image(110, 79, seed=13),  # same cropped size as the first
        _image(50, 90, seed=14),
        _image(200, 60, seed=15),  # resized by max_size below
    ]
    batch = bb.extract_batch(images, max_size=160, batch_size=2, with_cls=True)
    assert len(batch) == len(images)
    for image, got in zip(images, batch):
        single = bb.extract(image, max_size=160, with_cls=True)
        assert got.image_size == single.image_size and got.input_size == single.input_size
        assert got.features.shape == single.features.shape
        assert np.abs(got.features - single.features).max() < 1e-4
        assert np.abs(got.cls - single.cls).max() < 1e-4
    assert batch[5].input_size == (160, 48)
    assert bb.extract_batch([]) == []
    with pytest.raises(ValueError, match="images"):
        bb.extract_batch(_image(32, 32))
    from PIL import Image

    with pytest.raises(ValueError, match="images"):
        bb.extract_batch(Image.fromarray(_image(32, 32)))


# ---------------------------------------------------------------------------------------
# Checkpoint layouts
# ---------------------------------------------------------------------------------------


def test_dino_layout_loads_identically(bb, vit_model, tmp_path):
    state = {f"module.backbone.{k}": v for k, v in vit_model.state_dict().items()}
    state["module.head.mlp.0.weight"] = torch.zeros(2048, 384)
    state["module.head.last_layer.weight_g"] = torch.ones(65536, 1)
    path = tmp_path / "checkpoint.pth"
    torch.save({"teacher": state, "epoch": 100}, path)
    other = Backbone("dino_vits16", weights=str(path), device="cpu")
    image = _image(64, 48, seed=7)
    np.testing.assert_array_equal(other.extract(image).features, bb.extract(image).features)


@pytest.mark.parametrize("container", ["state_dict", "model", "student"])
def test_other_containers(bb, vit_model, tmp_path, container):
    state = {f"backbone.{k}": v for k, v in vit_model.state_dict().items()}
    path = tmp_path / "wrapped.pth"
    torch.save({container: state}, path)
    image = _image(32, 48, seed=8)
    np.testing.assert_array_equal(
        Backbone("dino_vits16", weights=path, device="cpu").extract(image).features,
        bb.extract(image).features,
    )


def test_safetensors_file(bb, vit_model, tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in vit_model.state_dict().items()}, str(path))
    image = _image(48, 32, seed=9)
    np.testing.assert_array_equal(
        Backbone("dino_vits16", weights=path, device="cpu").extract(image).features,
        bb.extract(image).features,
    )


def test_timm_state_dict_with_classifier_head(bb, vit_model, tmp_path):
    state = dict(vit_model.state_dict())
    state["head.weight"] = torch.zeros(1000, 384)
    state["head.bias"] = torch.zeros(1000)
    path = tmp_path / "with_head.pth"
    torch.save(state, path)
    image = _image(32, 32, seed=10)
    np.testing.assert_array_equal(
        Backbone("dino_vits16", weights=path, device="cpu").extract(image).features,
        bb.extract(image).features,
    )


def test_dinov2_registers_original_layout(tmp_path):
    """An original DINOv2 (+ registers) checkpoint is converted by timm's filter."""
    torch.manual_seed(0)
    model = timm.create_model(
        "vit_small_patch14_reg4_dinov2", pretrained=False, num_classes=0, dynamic_img_size=True
    ).eval()
    _randomise_biases(model)
    state = dict(model.state_dict())
    # Undo timm's conversion: the original keeps the class position inside pos_embed and
    # calls the registers 'register_tokens'; it also has a mask_token.
    pos_cls = 0.01 * torch.randn(1, 1, 384)
    original = {k: v for k, v in state.items() if k not in ("cls_token", "reg_token", "pos_embed")}
    original["cls_token"] = state["cls_token"] - pos_cls
    original["register_tokens"] = state["reg_token"]
    original["pos_embed"] = torch.cat([pos_cls, state["pos_embed"]], dim=1)
    original["mask_token"] = torch.zeros(1, 384)
    path = tmp_path / "dinov2_vits14_reg4_pretrain.pth"
    torch.save(original, path)

    bb = Backbone("dinov2_vits14_reg", weights=path, device="cpu")
    assert bb.patch_size == 14 and bb.model.num_prefix_tokens == 5
    image = _image(60, 45, seed=11)
    feats = bb.extract(image)
    assert feats.features.shape == (4, 3, 384)
    expected = _manual_features(model, image, block=-1, kind="k", patch=14, prefix=5)
    np.testing.assert_allclose(feats.features, expected, atol=1e-4, rtol=1e-4)


@pytest.fixture(scope="module")
def dinov3_model():
    """A random-initialised DINOv3 ViT-S/16 built by timm (no download), biases non-zero."""
    torch.manual_seed(3)
    model = timm.create_model("vit_small_patch16_dinov3", pretrained=False, num_classes=0).eval()
    _randomise_biases(model)
    return model


def _normalised(pixels):
    x = torch.from_numpy(pixels.astype(np.float32) / 255.0).permute(2, 0, 1)[None]
    mean = torch.tensor(defaults.IMAGENET_MEAN)[:, None, None]
    std = torch.tensor(defaults.IMAGENET_STD)[:, None, None]
    return (x - mean) / std


def test_dinov3_registered():
    names = {"dinov3_vits16", "dinov3_vits16plus", "dinov3_vitb16", "dinov3_vitl16", "dinov3_vith16plus"}
    assert names <= set(available_backbones())
    for name in names:
        config = BACKBONES[name]
        assert config.patch_size == 16 and config.num_prefix_tokens == 5  # class token + 4 registers
        assert config.timm_name.endswith("_dinov3.lvd1689m") and "qkvb" not in config.timm_name
    assert defaults.BACKBONE == "dino_vits16"  # DINO v1 stays the default


def test_dinov3_patch_features_drop_class_and_register_tokens(tmp_path, dinov3_model):
    path = tmp_path / "dinov3_random.pth"
    torch.save(dinov3_model.state_dict(), path)
    bb = Backbone("dinov3_vits16", weights=path, device="cpu")
    image = _image(70, 100, seed=12)
    crop = image[:64, :96]
    x = _normalised(crop)
    with torch.no_grad():
        # block 0: each patch token's key depends on its own patch only (no absolute
        # position embedding, RoPE is applied after qkv), so it is computed here without
        # any class / register token: the features must be exactly these 4 x 6 keys
        patches = dinov3_model.patch_embed(x).reshape(1, 24, 384)
        first = dinov3_model.blocks[0]
        keys0 = torch.nn.functional.linear(first.norm1(patches), first.attn.qkv.weight)[..., 384:768]
        # last block: the whole sequence run by hand; tokens 0 (class) and 1..4 (registers) dropped
        tokens, rope = dinov3_model._pos_embed(dinov3_model.patch_embed(x))
        tokens = dinov3_model.norm_pre(tokens)
        for blk in dinov3_model.blocks[:-1]:
            tokens = blk(tokens, rope=rope)
        last = dinov3_model.blocks[-1]
        keys = torch.nn.functional.linear(last.norm1(tokens), last.attn.qkv.weight)[..., 384:768]
    assert tokens.shape[1] == 1 + 4 + 24
    feats0 = bb.extract(image, block=0, max_size=None)
    assert feats0.features.shape == (4, 6, 384)
    np.testing.assert_allclose(feats0.features, keys0[0].reshape(4, 6, 384).numpy(), atol=1e-5, rtol=1e-5)
    feats = bb.extract(image, max_size=None)
    np.testing.assert_allclose(feats.features, keys[0, 5:].reshape(4, 6, 384).numpy(), atol=1e-4, rtol=1e-4)


def test_dinov3_original_layout(tmp_path, dinov3_model):
    """Meta's DINOv3 checkpoint layout (storage_tokens, ls1/ls2, rope periods, mask token)
    is converted by timm's Eva filter to the same model."""
    state = dict(dinov3_model.state_dict())
    original = {}
    for key, value in state.items():
        key = key.replace("reg_token", "storage_tokens").replace("gamma_1", "ls1.gamma").replace("gamma_2", "ls2.gamma")
        original[key] = value
    original["mask_token"] = torch.zeros(1, 384)
    original["rope_embed.periods"] = torch.ones(16)
    path = tmp_path / "dinov3_vits16_pretrain_lvd1689m.pth"
    torch.save(original, path)
    timm_path = tmp_path / "timm.pth"
    torch.save(state, timm_path)
    image = _image(48, 80, seed=13)
    expected = Backbone("dinov3_vits16", weights=timm_path, device="cpu").extract(image).features
    np.testing.assert_array_equal(Backbone("dinov3_vits16", weights=path, device="cpu").extract(image).features, expected)


def test_wrong_weights(tmp_path, vit_model):
    # Keys of another kind of model.
    path = tmp_path / "other.pth"
    torch.save({"conv1.weight": torch.zeros(3, 3)}, path)
    with pytest.raises(ValueError, match="other.pth") as info:
        Backbone("dino_vits16", weights=path, device="cpu")
    assert "missing keys" in str(info.value) and "unexpected keys" in str(info.value)
    # Right keys, wrong architecture (ViT-S weights for a ViT-B backbone).
    with pytest.raises(ValueError, match="vits16.pth|shapes|does not match"):
        small = tmp_path / "vits16.pth"
        torch.save(vit_model.state_dict(), small)
        Backbone("dino_vitb16", weights=small, device="cpu")
    # Weights of the same family with another patch size are refused, not resampled.
    with pytest.raises(ValueError, match="patch size 16.*dino_vits16"):
        Backbone("dino_vits8", weights=small, device="cpu")
    # Not a state dict / not readable.
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"definitely not a checkpoint")
    with pytest.raises(ValueError, match="junk.pth"):
        Backbone("dino_vits16", weights=junk, device="cpu")
    bad_safetensors = tmp_path / "bad.safetensors"
    bad_safetensors.write_bytes(b"\x00" * 16)
    with pytest.raises(ValueError, match="bad.safetensors"):
        Backbone("dino_vits16", weights=bad_safetensors, device="cpu")
    # A pickled non-tensor object cannot be read with weights_only=True.
    pickled = tmp_path / "args.pth"
    torch.save({"args": argparse.Namespace(arch="vit_small")}, pickled)
    with pytest.raises(ValueError, match="args.pth"):
        Backbone("dino_vits16", weights=pickled, device="cpu")
    empty = tmp_path / "empty.pth"
    torch.save({"epoch": 3}, empty)
    with pytest.raises(ValueError, match="no backbone tensors"):
        Backbone("dino_vits16", weights=empty, device="cpu")


def test_offline_download_gives_clear_error(monkeypatch, tmp_path):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(WeightsUnavailableError) as info:
        Backbone("dino_vits16", weights=None, device="cpu")
    message = str(info.value)
    assert isinstance(info.value, RuntimeError)
    assert "'dino_vits16'" in message and "could not be downloaded" in message
    assert "--weights FILE" in message and "weights=" in message
    assert "dino_deitsmall16_pretrain.pth" in message and "safetensors" in message


def _hub_offline_state():
    import os

    import huggingface_hub.constants

    return os.environ.get("HF_HUB_OFFLINE"), huggingface_hub.constants.HF_HUB_OFFLINE


@pytest.mark.parametrize("fails", [False, True])
def test_cached_weights_do_not_switch_the_process_offline(monkeypatch, fails):
    """Hub out of reach + weights in the cache: offline mode is on for that one model
    creation only, and restored afterwards (also when the creation fails), so that later
    hub calls of the process (e.g. the self-training's weights) are not forced offline."""
    import huggingface_hub
    import huggingface_hub.constants

    from deepspectral.backbones import weights as weights_module

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(weights_module, "_hub_reachable", lambda *args, **kwargs: False)
    monkeypatch.setattr(
        huggingface_hub, "try_to_load_from_cache", lambda repo_id, filename, **kwargs: f"/cache/{repo_id}/{filename}"
    )
    real_create_model = timm.create_model
    seen = []

    def create_model(name, pretrained=False, **kwargs):
        seen.append((name, pretrained, _hub_offline_state()))
        if fails:
            raise OSError("cached file is corrupt")
        return real_create_model(name, pretrained=False, weight_init="skip", **kwargs)  # no download

    monkeypatch.setattr(timm, "create_model", create_model)
    before = _hub_offline_state()
    assert before == (None, False)
    if fails:
        with pytest.raises(WeightsUnavailableError, match="could not be downloaded"):
            Backbone("dino_vits16", weights=None, device="cpu")
    else:
        Backbone("dino_vits16", weights=None, device="cpu")
    assert seen == [("vit_small_patch16_224.dino", True, ("1", True))]  # offline during the call
    assert _hub_offline_state() == before  # ... and not after it


def test_normalize_imagenet_is_the_selftrain_formula():
    from deepspectral.backbones import normalize_imagenet

    images = np.random.default_rng(0).integers(0, 256, (2, 5, 7, 3), dtype=np.uint8)
    got = normalize_imagenet(images, "cpu")
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(255.0)
    expected = (x - torch.tensor(defaults.IMAGENET_MEAN)[:, None, None]) / torch.tensor(defaults.IMAGENET_STD)[:, None, None]
    assert got.shape == (2, 3, 5, 7) and got.dtype == torch.float32
    assert torch.equal(got, expected)
    # Non-contiguous / read-only input is fine.
    view = images[:, ::-1]
    view.flags.writeable = False
    assert torch.equal(normalize_imagenet(view, "cpu"), normalize_imagenet(view.copy(), "cpu"))
    for bad in (images[0], images.astype(np.float32), images[..., :2]):
        with pytest.raises(ValueError, match="images"):
            normalize_imagenet(bad, "cpu")


def test_import_is_light():
    code = (
        "import sys, deepspectral.backbones as b; "
        "assert 'torch' not in sys.modules and 'timm' not in sys.modules, 'heavy import'; "
        "print(b.available_backbones()[0])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr


def test_precision_bf16_on_cpu_is_close(weights_file, bb):
    image = _image(64, 96, seed=3)
    half = Backbone("dino_vits16", weights=weights_file, device="cpu", precision="bf16")
    a, b = bb.extract(image).features, half.extract(image).features
    assert a.dtype == b.dtype == np.float32
    assert np.linalg.norm(a - b) / np.linalg.norm(a) < 0.05


@pytest.mark.parametrize("precision", ["fp16", "double"])
def test_bad_precision(weights_file, precision):
    with pytest.raises(ValueError, match="precision"):
        Backbone("dino_vits16", weights=weights_file, device="cpu", precision=precision)
