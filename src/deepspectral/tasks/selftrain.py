"""Self-training (paper Sec. 3.5 + supplement): a DeepLab-style network on the pseudo-labels.

A ResNet-50 (DINO self-supervised weights; timm building blocks, dilated to output stride 8)
with an ASPP head (DeepLab v3) is trained on the label maps of a ``semseg fit`` run with the
supplement's recipe: Adam, learning rate 1e-4 decayed linearly to 0 over 2,000 steps, batch
144, random 224 x 224 crops and horizontal flips, cross-entropy (255 ignored)::

    from deepspectral.tasks.selftrain import TrainSettings, load_model, train
    train("run/", settings=TrainSettings(steps=2000, batch_size=144), device="cuda")
    model = load_model("run/")
    labels = model.predict(image)          # (H, W) uint8, 0 = background, 1..K

Files in the run folder (names in :mod:`deepspectral.tasks.semantic.rundir`):
``selftrain/checkpoint.pt`` (written atomically every ``checkpoint_every`` steps; a new
``train`` call resumes from it), ``selftrain/model.pt`` (the final weights and settings,
what :func:`load_model` reads), ``selftrain/train.json`` (settings and the loss of every
step).

Backbone weights: ``weights=None`` downloads the DINO ResNet-50 checkpoint (cached by
torch.hub); offline, pass the file (``dino_resnet50_pretrain.pth`` as published, or any
torchvision / timm ResNet state dict); ``weights="random"`` trains from scratch.
"""

from __future__ import annotations

import io
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np

from .semantic.rundir import CHECKPOINT_FILE, LOG_FILE, MODEL_DIR, MODEL_FILE, model_path, read_images, read_run_info

if TYPE_CHECKING:  # torch is imported where it is used
    import torch

__all__ = [
    "TrainSettings",
    "train",
    "load_model",
    "SelfTrainedModel",
    "build_model",
    "ARCHS",
    "DINO_RESNET50_URL",
    "HUB_PREFIXES",
]

#: Backbone architectures: the paper's ResNet-50; ResNet-18 and the tiny ResNet-10-T for CPU trials and tests.
ARCHS = ("resnet50", "resnet18", "resnet10t")
#: Where the DINO ResNet-50 weights are published (the backbone of the paper's self-training).
DINO_RESNET50_URL = "https://dl.fbaipublicfiles.com/dino/dino_resnet50_pretrain/dino_resnet50_pretrain.pth"
#: The supplement's recipe.
STEPS = 2000
BATCH_SIZE = 144
LEARNING_RATE = 1e-4
CROP_SIZE = 224
#: Steps between checkpoints.
CHECKPOINT_EVERY = 100
#: Label ignored by the loss (padding of crops smaller than CROP_SIZE).
IGNORE_LABEL = 255
#: ASPP dilation rates at output stride 8 (DeepLab v3) and its width.
ASPP_RATES = (12, 24, 36)
ASPP_CHANNELS = 256
#: Longest side of the image the trained model sees at prediction time.
PREDICT_MAX_SIZE = 512

#: ``weights`` values naming a Hugging Face hub repository (``timm/resnet50.a1_in1k``,
#: ``hf-hub:owner/name``) load a timm ResNet's weights from there.
HUB_PREFIXES = ("hf-hub:", "timm/")


@dataclass
class TrainSettings:
    """Settings of a self-training run (saved with the checkpoints).

    Attributes
    ----------
    arch : {"resnet50", "resnet18", "resnet10t"}
    steps, batch_size : int
    lr : float
        Initial learning rate (linear decay to 0 at ``steps``).
    crop_size : int
        Side of the random square crops.
    seed : int
        Seeds the head's initialisation and every batch (batch ``t`` depends on
        ``(seed, t)`` only, so a resumed run sees the same batches).
    weights : str or None
        Backbone weights: None (download DINO ResNet-50), a file path, a hub name
        (``timm/...`` or ``hf-hub:...``), or ``"random"``.
    output_stride : int
        8 (DeepLab's dilated ResNet) or 16/32.
    amp : bool
        Mixed precision (only used on CUDA).
    checkpoint_every : int
    workers : int
        Threads decoding images.
    """

    arch: str = "resnet50"
    steps: int = STEPS
    batch_size: int = BATCH_SIZE
    lr: float = LEARNING_RATE
    crop_size: int = CROP_SIZE
    seed: int = 0
    weights: str | None = None
    output_stride: int = 8
    amp: bool = True
    checkpoint_every: int = CHECKPOINT_EVERY
    workers: int = 4

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            raise ValueError(f"arch: expected one of {ARCHS}, got {self.arch!r}")
        for name in ("steps", "batch_size", "crop_size", "checkpoint_every", "workers"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{name}: expected an integer >= 1, got {value!r}")
        if self.output_stride not in (8, 16, 32):
            raise ValueError(f"output_stride: expected one of (8, 16, 32), got {self.output_stride!r}")
        if not (self.lr > 0 and np.isfinite(self.lr)):
            raise ValueError(f"lr: expected a finite value > 0, got {self.lr!r}")


# ---------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------


def build_model(n_labels: int, *, arch: str = "resnet50", output_stride: int = 8) -> "torch.nn.Module":
    """A dilated ResNet (timm) with a DeepLab v3 ASPP head.

    Parameters
    ----------
    n_labels : int
        Output classes (background + K clusters).
    arch : {"resnet50", "resnet18", "resnet10t"}
    output_stride : {8, 16, 32}
        Stride of the backbone's last feature map (8: DeepLab's dilated ResNet).

    Returns
    -------
    torch.nn.Module
        ``forward(x)``: ``(B, 3, H, W)`` float32 normalised images -> ``(B, n_labels, H, W)``
        logits at the input resolution. Backbone weights are random (see
        :func:`load_backbone_weights`).
    """
    import timm
    import torch
    from torch import nn
    from torch.nn import functional as F

    if arch not in ARCHS:
        raise ValueError(f"arch: expected one of {ARCHS}, got {arch!r}")

    def conv_bn(cin: int, cout: int, kernel: int, dilation: int = 1) -> nn.Sequential:
        return nn.Sequential(
            nn.Conv2d(cin, cout, kernel, padding=dilation * (kernel // 2), dilation=dilation, bias=False),
            nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
        )

    rates = tuple(r * 8 // output_stride for r in ASPP_RATES)

    class AtrousConv(nn.Conv2d):
        """3x3 dilated convolution; when the dilation reaches past the feature map every
        off-centre tap reads padding zeros, so only the centre tap is computed (same result,
        without convolving a mostly-padding input)."""

        def forward(self, x):
            if self.dilation[0] >= max(x.shape[2], x.shape[3]):
                return F.conv2d(x, self.weight[:, :, 1:2, 1:2], self.bias)
            return super().forward(x)

    def atrous_bn(cin: int, cout: int, dilation: int) -> nn.Sequential:
        return nn.Sequential(
            AtrousConv(cin, cout, 3, padding=dilation, dilation=dilation, bias=False),
            nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
        )

    class ASPP(nn.Module):
        def __init__(self, cin: int) -> None:
            super().__init__()
            self.branches = nn.ModuleList([conv_bn(cin, ASPP_CHANNELS, 1)] + [atrous_bn(cin, ASPP_CHANNELS, r) for r in rates])
            self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(cin, ASPP_CHANNELS, 1, bias=False), nn.ReLU(inplace=True))
            self.project = conv_bn(ASPP_CHANNELS * (len(rates) + 2), ASPP_CHANNELS, 1)

        def forward(self, x):
            pooled = self.pool(x).expand(-1, -1, x.shape[2], x.shape[3])
            return self.project(torch.cat([b(x) for b in self.branches] + [pooled], dim=1))

    class DeepLab(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.backbone = timm.create_model(arch, pretrained=False, features_only=True, out_indices=(4,), output_stride=output_stride)
            channels = self.backbone.feature_info.channels()[-1]
            self.head = nn.Sequential(ASPP(channels), conv_bn(ASPP_CHANNELS, ASPP_CHANNELS, 3), nn.Conv2d(ASPP_CHANNELS, n_labels, 1))

        def forward(self, x):
            logits = self.head(self.backbone(x)[-1])
            return F.interpolate(logits, size=x.shape[2:], mode="bilinear", align_corners=False)

    return DeepLab()


def load_backbone_weights(model, weights: str | None, *, arch: str) -> None:
    """Load self-supervised weights into ``model.backbone``.

    Parameters
    ----------
    model : torch.nn.Module
        A network of :func:`build_model`; its ``backbone`` is loaded in place.
    weights : str or None
        ``None`` downloads the DINO ResNet-50 (``resnet50`` only); ``"timm/<name>"`` or
        ``"hf-hub:<repo>"`` loads a timm ResNet from the Hugging Face hub; a path loads a
        torchvision / timm ResNet state dict through the one checkpoint reader
        :func:`deepspectral.backbones.weights.read_state_dict` (containers such as
        ``state_dict`` / ``teacher`` / ``model`` unwrapped, ``module.`` / ``backbone.`` /
        ``encoder.`` prefixes stripped, ``fc.*`` / ``head.*`` dropped); ``"random"`` keeps the
        random initialisation.
    arch : str
        One of :data:`ARCHS`.

    Raises
    ------
    WeightsUnavailableError
        The download failed (offline): the message says which file to pass.
    FileNotFoundError, ValueError
        Missing or unreadable file, or a state dict that does not fit the architecture.
    """
    import torch

    from ..backbones.weights import WeightsUnavailableError, normalize_state_dict, read_state_dict

    if weights == "random":
        return
    if weights is None:
        if arch != "resnet50":
            raise ValueError(f"weights: no published DINO weights for arch {arch!r}; pass a file or 'random'")
        try:
            state = torch.hub.load_state_dict_from_url(DINO_RESNET50_URL, map_location="cpu", progress=False)
        except Exception as error:  # noqa: BLE001 - any download failure means "offline"
            raise WeightsUnavailableError(
                f"could not download the DINO ResNet-50 weights ({type(error).__name__}: {error}); "
                f"download {DINO_RESNET50_URL} elsewhere and pass it with --weights FILE "
                "(or --weights random to train from scratch)"
            ) from error
        source = DINO_RESNET50_URL
        cleaned = normalize_state_dict(state, source=source)
    elif isinstance(weights, str) and weights.startswith(HUB_PREFIXES):
        import timm

        hub_id = weights.split(":", 1)[1] if weights.startswith("hf-hub:") else weights
        try:
            donor = timm.create_model(arch, pretrained=True, pretrained_cfg_overlay=dict(hf_hub_id=hub_id))
        except Exception as error:  # noqa: BLE001 - any hub failure means "unreachable"
            raise WeightsUnavailableError(
                f"could not get the weights '{weights}' from the Hugging Face hub "
                f"({type(error).__name__}: {error}); pass a local file with --weights FILE"
            ) from error
        source = weights
        cleaned = normalize_state_dict(donor.state_dict(), source=source)
    else:
        source = str(weights)
        cleaned = read_state_dict(weights)
    target = model.backbone.state_dict()
    missing = sorted(set(target) - set(cleaned))
    shapes = sorted(k for k in set(target) & set(cleaned) if tuple(target[k].shape) != tuple(cleaned[k].shape))
    if missing or shapes:
        raise ValueError(
            f"weights: the state dict of '{source}' does not fit a {arch}: {len(missing)} missing keys "
            f"(e.g. {missing[:3]}), {len(shapes)} shape mismatches (e.g. {shapes[:3]})"
        )
    model.backbone.load_state_dict({k: cleaned[k] for k in target}, strict=True)


# ---------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------


class _PseudoLabels:
    """Images and label maps of a fitted run; ``batch(step)`` is a deterministic function
    of ``(seed, step)``."""

    def __init__(self, run_dir: Path, *, crop: int, seed: int, workers: int) -> None:
        self.run_dir = run_dir
        self.records = read_images(run_dir)
        if not self.records:
            raise ValueError(f"run_dir: '{run_dir}' has no labelled images to train on")
        self.crop = crop
        self.seed = seed
        self.pool = ThreadPoolExecutor(max_workers=workers)

    def _load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Image ``(H, W, 3) uint8`` and labels ``(H, W) uint8`` of record ``index``."""
        from PIL import Image

        from ..data.images import load_image

        record = self.records[index]
        image = load_image(record["file"])
        labels = np.asarray(Image.open(self.run_dir / record["labels"]))
        if labels.shape != image.shape[:2]:
            raise ValueError(f"labels of {record['file']} have size {labels.shape}, the image {image.shape[:2]}")
        return image, labels

    def _sample(self, index: int, rng_seed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """A random ``(c, c, 3) uint8`` crop of record ``index`` and its ``(c, c) uint8``
        labels (padding: 0 pixels, ``IGNORE_LABEL`` labels), flipped half of the time."""
        rng = np.random.default_rng(rng_seed)
        image, labels = self._load(index)
        c = self.crop
        h, w = labels.shape
        if h < c or w < c:  # pad: image with zeros (the mean after normalisation ~ dark), labels ignored
            ph, pw = max(0, c - h), max(0, c - w)
            image = np.pad(image, ((0, ph), (0, pw), (0, 0)))
            labels = np.pad(labels, ((0, ph), (0, pw)), constant_values=IGNORE_LABEL)
            h, w = labels.shape
        y = int(rng.integers(0, h - c + 1))
        x = int(rng.integers(0, w - c + 1))
        image, labels = image[y:y + c, x:x + c], labels[y:y + c, x:x + c]
        if rng.random() < 0.5:
            image, labels = image[:, ::-1], labels[:, ::-1]
        return np.ascontiguousarray(image), np.ascontiguousarray(labels)

    def batch(self, step: int, size: int) -> tuple[np.ndarray, np.ndarray]:
        """Batch ``step``: ``(size, c, c, 3) uint8`` images and ``(size, c, c) uint8`` labels."""
        rng = np.random.default_rng([self.seed, step])
        indices = rng.integers(0, len(self.records), size=size)
        seeds = rng.integers(0, 2**32, size=(size, 2))
        samples = list(self.pool.map(self._sample, indices.tolist(), list(seeds)))
        return np.stack([s[0] for s in samples]), np.stack([s[1] for s in samples])

    def close(self) -> None:
        """Stop the decoding threads."""
        self.pool.shutdown(wait=False)


def _normalise(images: np.ndarray, device: str) -> "torch.Tensor":
    """``(B, H, W, 3) uint8`` -> ``(B, 3, H, W) float32`` ImageNet-normalised tensor on ``device``
    (:func:`deepspectral.backbones.extract.normalize_imagenet`, the backbones' normaliser)."""
    from ..backbones.extract import normalize_imagenet

    return normalize_imagenet(images, device)


# ---------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------


def _atomic_torch_save(path: Path, obj) -> None:
    """``torch.save(obj)`` to ``path`` atomically (a killed run leaves the old file)."""
    import torch

    from ..files import atomic_write

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write(path, lambda handle: handle.write(buffer.getvalue()))


def _load_run_file(path: Path, remedy: str) -> dict:
    """A file this module saved in the run folder (``checkpoint.pt`` / ``model.pt``), read
    with ``torch.load(weights_only=True)``; a damaged or foreign file is a ``ValueError``
    naming it and ``remedy`` (what to do), not torch's own error text."""
    import torch

    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # EOFError (empty), RuntimeError (truncated zip), UnpicklingError, ...
        raise ValueError(f"'{path}' cannot be read ({type(exc).__name__}): it is damaged or was not written by "
                         f"deepspectral semseg train; {remedy}") from exc
    if not isinstance(saved, dict) or not {"settings", "n_labels", "model"} <= set(saved):
        raise ValueError(f"'{path}' was not written by deepspectral semseg train; {remedy}")
    return saved


def _n_labels(run_dir: Path) -> int:
    """Labels of the run's maps (background + K clusters), from ``semseg.json``."""
    return int(read_run_info(run_dir)["n_labels"])


def train(
    run_dir,
    *,
    settings: TrainSettings | None = None,
    device: str = "auto",
    verbose: bool = True,
    on_step: Callable[[int, float], None] | None = None,
) -> list[float]:
    """Train (or resume training) the segmentation network of a fitted run.

    Parameters
    ----------
    run_dir : str or os.PathLike
        A folder written by ``semseg fit`` (its ``images.json`` and label maps).
    settings : TrainSettings, optional
    device : {"auto", "cpu", "cuda", "cuda:N", "mps"}
    verbose : bool
        Progress bar with the loss.
    on_step : callable, optional
        ``on_step(step, loss)`` after every step (``step`` counts from 1).

    Returns
    -------
    list of float
        The loss of every step since step 1 (resumed runs include the earlier ones).

    Notes
    -----
    When ``selftrain/checkpoint.pt`` exists with the same settings, training resumes from
    it (model, optimiser, schedule, losses); with other settings a ``ValueError`` says so.
    """
    import torch
    from torch.nn import functional as F
    from tqdm.auto import tqdm

    from ..backbones.extract import resolve_device
    from ..files import atomic_write_json

    settings = settings if settings is not None else TrainSettings()
    run_dir = Path(run_dir)
    out = run_dir / MODEL_DIR
    device = resolve_device(device)
    n_labels = _n_labels(run_dir)
    torch.manual_seed(settings.seed)
    model = build_model(n_labels, arch=settings.arch, output_stride=settings.output_stride)
    checkpoint_path = out / CHECKPOINT_FILE
    checkpoint = None
    if checkpoint_path.is_file():
        checkpoint = _load_run_file(checkpoint_path, "delete it to start the training over")
        if checkpoint["settings"] != asdict(settings) or checkpoint["n_labels"] != n_labels:
            raise ValueError(
                f"settings: '{checkpoint_path}' was made with other settings ({checkpoint['settings']}); "
                "delete it to start over, or pass the same settings to resume"
            )
        model.load_state_dict(checkpoint["model"])
    else:
        load_backbone_weights(model, settings.weights, arch=settings.arch)
    model.to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=settings.lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: max(0.0, 1.0 - s / settings.steps))
    use_amp = settings.amp and device.startswith("cuda")
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    losses: list[float] = []
    start = 0
    if checkpoint is not None:
        optimizer.load_state_dict(checkpoint["optimizer"])
        schedule.load_state_dict(checkpoint["schedule"])
        if use_amp and checkpoint.get("scaler"):
            scaler.load_state_dict(checkpoint["scaler"])
        losses = list(checkpoint["losses"])
        start = int(checkpoint["step"])

    def save_checkpoint(step: int) -> None:
        _atomic_torch_save(checkpoint_path, {
            "step": step, "settings": asdict(settings), "n_labels": n_labels,
            "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "schedule": schedule.state_dict(), "scaler": scaler.state_dict() if use_amp else None,
            "losses": losses,
        })

    data = _PseudoLabels(run_dir, crop=settings.crop_size, seed=settings.seed, workers=settings.workers)
    progress = tqdm(range(start, settings.steps), initial=start, total=settings.steps, desc="semseg train",
                    unit="step", disable=(not verbose) or None, file=sys.stderr, dynamic_ncols=True)
    began = time.perf_counter()
    try:
        for step in progress:
            images, labels = data.batch(step, settings.batch_size)
            x = _normalise(images, device)
            y = torch.from_numpy(labels.astype(np.int64)).to(device)
            with torch.autocast(device_type="cuda", dtype=torch.float16, enabled=use_amp):
                logits = model(x)
            loss = F.cross_entropy(logits.float(), y, ignore_index=IGNORE_LABEL)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            schedule.step()
            value = float(loss.detach())
            losses.append(value)
            progress.set_postfix(loss=f"{value:.4f}", lr=f"{schedule.get_last_lr()[0]:.2e}")
            done = step + 1
            if done % settings.checkpoint_every == 0 or done == settings.steps:
                save_checkpoint(done)
            if on_step is not None:
                on_step(done, value)
    finally:
        progress.close()
        data.close()
    _atomic_torch_save(out / MODEL_FILE, {
        "settings": asdict(settings), "n_labels": n_labels,
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    })
    used = dict(asdict(settings), amp=use_amp)  # mixed precision only runs on CUDA: say what ran
    atomic_write_json(out / LOG_FILE, {
        "settings": used, "amp_requested": settings.amp, "n_labels": n_labels, "device": device,
        "seconds_this_run": round(time.perf_counter() - began, 2), "losses": losses,
    })
    return losses


# ---------------------------------------------------------------------------------------
# Prediction
# ---------------------------------------------------------------------------------------


class SelfTrainedModel:
    """The trained network of a run; :meth:`predict` gives label maps. Use :func:`load_model`.

    Attributes
    ----------
    model : torch.nn.Module
        From :func:`build_model`, in eval mode on ``device``.
    n_labels : int
    device : str
    max_size : int or None
        Longest side of the image the network sees (labels are resized back).
    """

    def __init__(self, model: "torch.nn.Module", *, n_labels: int, device: str,
                 max_size: int | None = PREDICT_MAX_SIZE) -> None:
        self.model = model
        self.n_labels = n_labels
        self.device = device
        self.max_size = max_size

    def predict(self, image) -> np.ndarray:
        """Label map of one image.

        Parameters
        ----------
        image : (H, W, 3) uint8 or PIL image

        Returns
        -------
        (H, W) uint8
            0 = background, 1..K.
        """
        import torch
        from PIL import Image

        from ..geometry import as_rgb_array, input_size_for, resize_image

        rgb = as_rgb_array(image)
        size = input_size_for(rgb.shape[:2], self.max_size)
        small = resize_image(rgb, size)
        with torch.inference_mode():
            logits = self.model(_normalise(small[None], self.device))
        labels = logits[0].argmax(0).to(torch.uint8).cpu().numpy()
        if labels.shape != rgb.shape[:2]:
            labels = np.asarray(Image.fromarray(labels).resize((rgb.shape[1], rgb.shape[0]), Image.Resampling.NEAREST))
        return labels


def load_model(run_dir, *, device: str = "auto") -> SelfTrainedModel:
    """Load ``run_dir/selftrain/model.pt`` written by :func:`train`.

    Parameters
    ----------
    run_dir : str or os.PathLike
    device : {"auto", "cpu", "cuda", "cuda:N", "mps"}

    Returns
    -------
    SelfTrainedModel
    """
    from ..backbones.extract import resolve_device

    path = model_path(run_dir)
    if not path.is_file():
        raise FileNotFoundError(f"run_dir: no trained model at '{path}'; run `deepspectral semseg train` first")
    saved = _load_run_file(path, "delete it and rerun `deepspectral semseg train` on the run")
    settings = TrainSettings(**saved["settings"])
    device = resolve_device(device)
    model = build_model(saved["n_labels"], arch=settings.arch, output_stride=settings.output_stride)
    model.load_state_dict(saved["model"])
    model.to(device).eval()
    return SelfTrainedModel(model, n_labels=saved["n_labels"], device=device)
