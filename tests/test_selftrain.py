"""Self-training (issue #5): a few CPU steps on tiny images, loss goes down, resume."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

torch = pytest.importorskip("torch")
pytest.importorskip("timm")

from deepspectral.tasks.selftrain import TrainSettings, build_model, load_backbone_weights, load_model, train  # noqa: E402
from deepspectral.tasks.semantic import load_run, save_label_png  # noqa: E402


def _tiny_run(root: Path, n: int = 3) -> Path:
    """A run folder as ``semseg fit`` writes it: two labels (0 background, 1..2 objects)."""
    rng = np.random.default_rng(0)
    records = []
    for i in range(n):
        labels = np.zeros((40, 48), dtype=np.uint8)
        labels[8:28, 6:22] = 1
        labels[14:34, 28:44] = 2
        colours = np.array([[90, 90, 90], [220, 40, 40], [40, 200, 60]])
        image = np.clip(colours[labels] + rng.normal(0, 10, size=(40, 48, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(image).save(root / f"im{i}.png")
        save_label_png(root / "labels" / f"im{i}.png", labels)
        records.append({"image": f"im{i}", "file": str(root / f"im{i}.png"), "labels": f"labels/im{i}.png", "segments": 2})
    (root / "images.json").write_text(json.dumps(records))
    (root / "semseg.json").write_text(json.dumps({"format": 1, "settings": {"clusters": 2, "backbone": "oracle"}, "n_labels": 3}))
    np.save(root / "centroids.npy", np.eye(2, 4, dtype=np.float32))
    return root


def _settings(**changes) -> TrainSettings:
    base = dict(arch="resnet10t", steps=8, batch_size=4, lr=1e-3, crop_size=32, seed=0, weights="random",
                output_stride=16, amp=False, checkpoint_every=2, workers=2)
    base.update(changes)
    return TrainSettings(**base)


def test_loss_goes_down_and_predict(tmp_path):
    run = _tiny_run(tmp_path)
    losses = train(run, settings=_settings(), device="cpu", verbose=False)
    assert len(losses) == 8
    assert np.mean(losses[-2:]) < 0.8 * np.mean(losses[:2]), losses
    assert (run / "selftrain" / "model.pt").is_file() and (run / "selftrain" / "checkpoint.pt").is_file()
    model = load_model(run, device="cpu")
    labels = model.predict(np.asarray(Image.open(run / "im0.png")))
    assert labels.shape == (40, 48) and labels.dtype == np.uint8 and labels.max() <= 2
    # load_run prefers the trained model once there is one
    semantic_run = load_run(run, device="cpu")
    assert semantic_run.use == "model"
    np.testing.assert_array_equal(semantic_run.predict(np.asarray(Image.open(run / "im0.png"))), labels)


@pytest.mark.slow
def test_killed_training_resumes(tmp_path):
    full = tmp_path / "a"
    full.mkdir()
    _tiny_run(full)
    reference = train(full, settings=_settings(steps=4), device="cpu", verbose=False)

    killed = tmp_path / "b"
    killed.mkdir()
    _tiny_run(killed)

    def kill(step: int, loss: float) -> None:
        if step == 3:  # dies after step 3; the last checkpoint is at step 2
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(killed, settings=_settings(steps=4), device="cpu", verbose=False, on_step=kill)
    saved = torch.load(killed / "selftrain" / "checkpoint.pt", weights_only=True)
    assert saved["step"] == 2
    assert not list((killed / "selftrain").glob(".*.tmp"))  # atomic: no temp files left
    resumed = train(killed, settings=_settings(steps=4), device="cpu", verbose=False)
    assert len(resumed) == 4
    np.testing.assert_allclose(resumed, reference, rtol=1e-4, atol=1e-5)
    a = torch.load(full / "selftrain" / "model.pt", weights_only=True)["model"]
    b = torch.load(killed / "selftrain" / "model.pt", weights_only=True)["model"]
    for key in a:
        torch.testing.assert_close(a[key].float(), b[key].float(), rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="settings"):
        train(killed, settings=_settings(steps=4, lr=5e-4), device="cpu", verbose=False)


def test_backbone_weights_file(tmp_path):
    import timm

    donor = timm.create_model("resnet10t", pretrained=False)
    path = tmp_path / "r10.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in donor.state_dict().items()}}, path)
    model = build_model(3, arch="resnet10t", output_stride=16)
    load_backbone_weights(model, str(path), arch="resnet10t")
    torch.testing.assert_close(model.backbone.state_dict()["conv1.0.weight"], donor.state_dict()["conv1.0.weight"])
    bad = tmp_path / "bad.pth"
    torch.save({"conv1.weight": torch.zeros(1)}, bad)
    with pytest.raises(ValueError, match="does not fit"):
        load_backbone_weights(model, str(bad), arch="resnet10t")
    with pytest.raises(ValueError, match="arch"):
        TrainSettings(arch="vgg16")


def test_backbone_weights_file_uses_the_one_reader(tmp_path):
    """Files go through deepspectral.backbones.weights.read_state_dict: DINO containers,
    torch.compile prefixes, unreadable files named in a ValueError."""
    import timm

    donor = timm.create_model("resnet10t", pretrained=False)
    path = tmp_path / "dino.pth"
    state = {f"module.backbone._orig_mod.{k}": v for k, v in donor.state_dict().items()}
    state["module.dino_head.last_layer.weight"] = torch.zeros(4, 4)
    torch.save({"teacher": state, "student": {}, "epoch": 3}, path)
    model = build_model(3, arch="resnet10t", output_stride=16)
    load_backbone_weights(model, str(path), arch="resnet10t")
    loaded = model.backbone.state_dict()
    assert loaded and all(not key.startswith("fc.") for key in loaded)
    for key, value in loaded.items():
        torch.testing.assert_close(value, donor.state_dict()[key], rtol=0, atol=0)
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="junk.pth"):
        load_backbone_weights(model, str(junk), arch="resnet10t")
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        load_backbone_weights(model, str(tmp_path / "missing.pth"), arch="resnet10t")


def test_offline_errors_name_the_fix(monkeypatch):
    from deepspectral.backbones import WeightsUnavailableError

    def offline(*args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    model = build_model(3, arch="resnet10t", output_stride=16)
    with pytest.raises(ValueError, match="no published DINO weights"):
        load_backbone_weights(model, None, arch="resnet10t")
    big = build_model(3, arch="resnet50", output_stride=8)
    with pytest.raises(WeightsUnavailableError, match="dino_resnet50_pretrain.pth"):
        load_backbone_weights(big, None, arch="resnet50")
