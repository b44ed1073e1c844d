"""Backbone weights: the one checkpoint reader, the hub download and model creation.

Every checkpoint file the project loads -- a ViT backbone's ``weights=`` / ``--weights`` and
the ResNet of the self-training (:mod:`deepspectral.tasks.selftrain`) -- goes through
:func:`read_state_dict`:

- ``.safetensors`` files are read with ``safetensors``, anything else with
  ``torch.load(weights_only=True)`` (no code from the file is run);
- containers are unwrapped (``teacher`` / ``state_dict`` / ``model`` / ``student``, nested
  up to :data:`_MAX_NESTING` levels), so a full DINO training checkpoint gives its teacher;
- the prefixes of wrappers (``module.`` DataParallel, ``backbone.`` DINO / MMSeg,
  ``_orig_mod.`` ``torch.compile``, ``encoder.``) are stripped and the heads (``head.``,
  ``dino_head.``, ``ibot_head.``, ``fc.``) dropped;
- every failure is a ``ValueError`` / ``FileNotFoundError`` naming the file.

:func:`create_vit` builds the timm model of a registered backbone, either from such a file
or with the pretrained weights of the Hugging Face hub; without network access it uses the
local hub cache (offline mode only for that one call) or raises
:class:`WeightsUnavailableError` saying which file to download.

torch, timm and huggingface_hub are imported inside the functions that need them.
"""

from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from .. import defaults
from ..errors import SetupError
from .registry import BACKBONES, BackboneConfig, get_backbone_config

__all__ = [
    "WeightsUnavailableError",
    "VALID_CHECKPOINT",
    "check_weights_path",
    "normalize_state_dict",
    "read_state_dict",
    "save_random_weights",
    "create_vit",
]


class WeightsUnavailableError(SetupError):
    """The pretrained weights of a backbone could not be downloaded (e.g. no network)."""


# ---------------------------------------------------------------------------------------
# The checkpoint reader
# ---------------------------------------------------------------------------------------

#: Entries of a checkpoint that hold the model's state dict, tried in this order (DINO's
#: checkpoints hold ``teacher`` and ``student``; the teacher is the published model).
_CONTAINER_KEYS = ("teacher", "state_dict", "model", "student")
#: Most container levels unwrapped (e.g. ``{"model": {"state_dict": ...}}``).
_MAX_NESTING = 4
#: Key prefixes added by wrappers: DataParallel, DINO / MMSeg backbones, torch.compile,
#: encoder-decoder models. Stripped repeatedly, in any order.
_STRIP_PREFIXES = ("module.", "backbone.", "_orig_mod.", "encoder.")
#: Heads that are not part of the backbone: a timm ViT's classifier, DINO's / iBOT's
#: projection heads, a ResNet's classifier.
_HEAD_PREFIXES = ("head.", "dino_head.", "ibot_head.", "fc.")


def check_weights_path(weights: Any) -> Path:
    """Validate a weights file argument.

    Parameters
    ----------
    weights : str or os.PathLike
        Path of a checkpoint file (``~`` is expanded).

    Returns
    -------
    pathlib.Path
        The expanded path.

    Raises
    ------
    ValueError
        ``weights`` is not a path.
    FileNotFoundError
        The file does not exist (or is a directory).
    """
    if not isinstance(weights, (str, os.PathLike)):
        raise ValueError(f"weights: expected None or a file path, got {weights!r}")
    path = Path(weights).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"weights: file '{path}' does not exist" + (" (it is a directory)" if path.is_dir() else "")
        )
    return path


def normalize_state_dict(raw: Any, *, source: str) -> dict:
    """Turn a loaded checkpoint into a flat ``{key: tensor}`` state dict of the backbone.

    Parameters
    ----------
    raw : Mapping
        What ``torch.load`` / ``safetensors`` / a download returned: a state dict or a
        checkpoint holding one under ``teacher`` / ``state_dict`` / ``model`` / ``student``.
    source : str
        Where ``raw`` came from (a file name or URL), for the error messages.

    Returns
    -------
    dict of str to torch.Tensor
        The backbone's tensors, wrapper prefixes stripped, heads and non-tensor entries
        dropped.

    Raises
    ------
    ValueError
        ``raw`` holds no state dict, or no backbone tensor.
    """
    import torch

    state = raw
    for _ in range(_MAX_NESTING):
        if not isinstance(state, Mapping):
            break
        inner = next(
            (state[key] for key in _CONTAINER_KEYS if isinstance(state.get(key), Mapping)), None
        )
        if inner is None:
            break
        state = inner
    if not isinstance(state, Mapping):
        raise ValueError(
            f"weights: '{source}' does not hold a state dict (found {type(state).__name__}); {VALID_CHECKPOINT}"
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
        keys = list(state)[:8]
        raise ValueError(
            f"weights: no backbone tensors found in '{source}' (top-level keys: {keys}); {VALID_CHECKPOINT}"
        )
    return out


#: What a valid checkpoint is, the end of every message about a file that is not one.
VALID_CHECKPOINT = (
    "a valid checkpoint is a state dict of tensors saved with torch.save (the published "
    "DINO/DINOv2 .pth, a timm or torchvision state dict) or a .safetensors file"
)
#: How to turn a checkpoint that holds more than tensors into a valid one (said instead of
#: torch's advice to load it unsafely, which the project never gives).
_CONVERT_HELP = (
    "to convert a checkpoint you trust, save only its tensors where it was made: "
    "torch.save(model.state_dict(), 'weights.pth')"
)
#: First bytes of the files ``torch.save`` writes: a zip archive (torch >= 1.6) or a
#: pickle (protocol 2+ opcode PROTO, the legacy format).
_TORCH_MAGIC = (b"PK\x03\x04", b"\x80")
#: Bytes of a file shown when it is not a checkpoint at all.
_SHOWN_BYTES = 24


def _one_line(text: str) -> str:
    """``text`` with its whitespace runs (newlines included) collapsed to one space."""
    return " ".join(str(text).split())


def _unsafe_pickle_reason(exc: BaseException) -> str:
    """The Python object torch's weights-only unpickler refused (`` (it refers to
    posix.system)``), or nothing; never torch's advice, which is to load the file unsafely
    or to allowlist the object."""
    found = re.search(r"GLOBAL ([A-Za-z_][\w.]*)", str(exc))
    return f" (it refers to {found.group(1)})" if found else ""


def _unreadable_reason(path: Path, exc: BaseException) -> str:
    """Why ``torch.load(path, weights_only=True)`` failed, in words: empty, not a torch
    file at all, a pickle holding more than tensors, or damaged."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(_SHOWN_BYTES)
    except OSError as error:
        return f"it cannot be opened ({error.strerror or error})"
    if not head:
        return "the file is empty (0 bytes)"
    if not head.startswith(_TORCH_MAGIC):
        return f"it is not a torch.save or .safetensors file (it begins with {head!r})"
    if "Weights only load failed" in str(exc) or "weights_only" in str(exc):
        return (
            "it is not a plain checkpoint: it holds Python objects besides tensors, which the safe "
            f"loader refuses{_unsafe_pickle_reason(exc)}; {_CONVERT_HELP}"
        )
    detail = _one_line(str(exc)).split(". ")[0]
    return f"it is damaged or truncated ({type(exc).__name__}: {detail})" if detail else (
        f"it is damaged or truncated ({type(exc).__name__})"
    )


def _torch_load_tensors(path: Path):
    """``torch.load(path, weights_only=True)`` on the CPU; a ``ValueError`` naming the file,
    why it is no checkpoint and what a valid one is, on any failure."""
    import warnings

    import torch

    try:
        with warnings.catch_warnings():
            # "Detected pickle protocol N": torch's note on a file that then fails anyway
            warnings.simplefilter("ignore", UserWarning)
            return torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # UnpicklingError, RuntimeError (zip), EOFError, KeyError, ...
        raise ValueError(
            f"weights: cannot read '{path}': {_unreadable_reason(path, exc)}; {VALID_CHECKPOINT}"
        ) from exc


def read_state_dict(path: str | os.PathLike) -> dict:
    """Read a checkpoint file into a flat ``{key: tensor}`` state dict (CPU tensors).

    Parameters
    ----------
    path : str or os.PathLike
        A ``.safetensors`` file or a ``torch.save`` file of tensors (the published DINO /
        DINOv2 / DINO ResNet-50 ``.pth``, a timm / torchvision state dict, a training
        checkpoint's ``teacher`` / ``state_dict`` / ``model`` entry).

    Returns
    -------
    dict of str to torch.Tensor
        See :func:`normalize_state_dict`.

    Raises
    ------
    FileNotFoundError
        ``path`` does not exist.
    ValueError
        The file cannot be read with ``weights_only=True`` / ``safetensors``, or holds no
        backbone tensor; the message names the file.
    """
    path = check_weights_path(path)
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
            raise ValueError(
                f"weights: cannot read '{path}': not a valid .safetensors file "
                f"({type(exc).__name__}: {_one_line(exc)}); {VALID_CHECKPOINT}"
            ) from exc
    else:
        raw = _torch_load_tensors(path)
    return normalize_state_dict(raw, source=str(path))


def save_random_weights(path: str | os.PathLike, name: str = defaults.BACKBONE, *, seed: int = 0) -> Path:
    """Save a random-initialised state dict of backbone ``name`` (``torch.save``).

    To try the whole pipeline offline through ``weights=path`` / ``--weights path``: the
    features are meaningless, the plumbing is real.

    Parameters
    ----------
    path : str or os.PathLike
        File to write (its folder is created).
    name : str
        Registered backbone name.
    seed : int
        Seed of ``torch.manual_seed`` before the model is built.

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


# ---------------------------------------------------------------------------------------
# A ViT from a file
# ---------------------------------------------------------------------------------------


def _list_keys(keys: Sequence[str], limit: int = 6) -> str:
    """``'a, b, c, ... (N in all)'``: the first ``limit`` sorted keys."""
    keys = sorted(keys)
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > limit else "")


def _load_weights_file(model, path: Path, config: BackboneConfig, device: str) -> None:
    """Load the checkpoint ``path`` into the timm ViT ``model`` (may be on the meta device).

    The file is read by :func:`read_state_dict`, converted by timm's
    ``checkpoint_filter_fn`` (original DINOv2 layouts) and must then match the model
    exactly (keys and shapes); the tensors end up on ``device`` as float32.
    """
    import torch
    from timm.models import eva, vision_transformer

    # DINOv3 is timm's Eva, whose filter converts Meta's checkpoint layout
    checkpoint_filter_fn = (eva if isinstance(model, eva.Eva) else vision_transformer).checkpoint_filter_fn
    state = read_state_dict(path)
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
    # ``assign=True`` puts the loaded tensors in place of the (meta) parameters instead of
    # copying them into freshly allocated memory; cast first so the model stays float32.
    state = {
        k: v.to(device=device, dtype=torch.float32) if v.is_floating_point() else v.to(device)
        for k, v in state.items()
    }
    model.load_state_dict(state, strict=True, assign=True)


# ---------------------------------------------------------------------------------------
# A ViT from the Hugging Face hub
# ---------------------------------------------------------------------------------------

#: Host of the Hugging Face hub (where timm's pretrained weights live).
_HUB_HOST = "huggingface.co"
#: Seconds the reachability probe waits for a TCP connection to the hub.
_HUB_PROBE_TIMEOUT = 5.0
#: Files timm downloads for a hub model, in the order it tries them.
_HUB_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
#: Values of HF_HUB_OFFLINE that mean "offline" (as huggingface_hub reads it).
_TRUE_STRINGS = {"1", "true", "yes", "on"}


def _weights_help(config: BackboneConfig) -> str:
    """The paragraph telling the user which file to download and how to pass it."""
    original = f"the original file {config.weights_url} or " if config.weights_url else ""
    return (
        f"Without network access, download a checkpoint elsewhere -- {original}the timm "
        f"weights (model.safetensors) from https://huggingface.co/{config.hf_hub_id} -- and "
        f"pass it with `--weights FILE` on the command line or "
        f"`Backbone({config.name!r}, weights='FILE')` in Python. Both the original "
        f"DINO/DINOv2/DINOv3 .pth and timm/safetensors state dicts work."
    )


def _is_download_error(exc: BaseException) -> bool:
    """Whether ``exc`` looks like a failed download (network, hub, cache)."""
    if isinstance(exc, (OSError, ConnectionError, TimeoutError)):
        return True
    module = type(exc).__module__ or ""
    return module.split(".")[0] in {"huggingface_hub", "httpx", "httpcore", "requests", "urllib3", "urllib"}


def _hub_reachable(timeout: float = _HUB_PROBE_TIMEOUT) -> bool:
    """Quick check that the hub can be reached.

    ``False`` in offline mode (``HF_HUB_OFFLINE``) or when the host does not resolve /
    accept a connection within ``timeout`` seconds; behind a proxy the check is skipped
    (``True``).
    """
    import socket

    if os.environ.get("HF_HUB_OFFLINE", "").lower() in _TRUE_STRINGS:
        return False
    if any(os.environ.get(name) for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True
    host = os.environ.get("HF_ENDPOINT", f"https://{_HUB_HOST}").split("://")[-1].split("/")[0]
    try:
        with socket.create_connection((host.split(":")[0], 443), timeout=timeout):
            return True
    except OSError:
        return False


def _is_cached(config: BackboneConfig) -> bool:
    """Whether the hub weights of ``config`` are in the local Hugging Face cache."""
    from huggingface_hub import try_to_load_from_cache

    return any(
        isinstance(try_to_load_from_cache(config.hf_hub_id, filename), str)
        for filename in _HUB_WEIGHT_FILES
    )


@contextlib.contextmanager
def _hub_offline() -> Iterator[None]:
    """Hugging Face hub offline mode for the ``with`` block only.

    Sets ``HF_HUB_OFFLINE=1`` in ``os.environ`` and ``huggingface_hub.constants`` (which
    huggingface_hub reads at each call), and restores both afterwards, also on error: later
    hub calls of the process (e.g. the self-training's weights) are not forced offline.
    """
    import huggingface_hub.constants as hub_constants

    old_env = os.environ.get("HF_HUB_OFFLINE")
    old_constant = hub_constants.HF_HUB_OFFLINE
    os.environ["HF_HUB_OFFLINE"] = "1"
    hub_constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        if old_env is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = old_env
        hub_constants.HF_HUB_OFFLINE = old_constant


def _create_pretrained(config: BackboneConfig, **kwargs: Any):
    """``timm.create_model(pretrained=True)`` with a clear error when the hub is out of reach.

    When the hub cannot be reached, the weights are taken from the local cache with offline
    mode on for this one call (no minute of retries); when they are not cached either, the
    download fails at once.

    Raises
    ------
    WeightsUnavailableError
        The weights could not be downloaded; the message says which file to pass instead.
    """
    import timm

    try:
        if _hub_reachable():
            return timm.create_model(config.timm_name, pretrained=True, **kwargs)
        if not _is_cached(config):
            raise OSError(f"{_HUB_HOST} cannot be reached and the weights are not in the local cache")
        with _hub_offline():  # use the cached copy without network calls
            return timm.create_model(config.timm_name, pretrained=True, **kwargs)
    except Exception as exc:
        if not _is_download_error(exc):
            raise
        raise WeightsUnavailableError(
            f"The pretrained weights for {config.name!r} (timm {config.timm_name!r}, Hugging "
            f"Face hub {config.hf_hub_id!r}) could not be downloaded: "
            f"{type(exc).__name__}: {exc}\n{_weights_help(config)}"
        ) from exc


# ---------------------------------------------------------------------------------------
# Model creation
# ---------------------------------------------------------------------------------------


def _check_model(model, config: BackboneConfig) -> None:
    """Make sure the timm model agrees with the registry entry (``RuntimeError`` if not)."""
    patch = model.patch_embed.patch_size
    patch = patch[0] if isinstance(patch, (tuple, list)) else patch
    found = (int(patch), int(model.embed_dim), len(model.blocks), int(model.num_prefix_tokens))
    wanted = (config.patch_size, config.embed_dim, config.depth, config.num_prefix_tokens)
    if found != wanted:
        raise RuntimeError(
            f"backbone {config.name!r}: timm model {config.timm_name!r} has (patch size, width, "
            f"depth, prefix tokens) = {found}, the registry says {wanted}"
        )


def create_vit(config: BackboneConfig, weights: Path | None, device: str):
    """The timm ViT of ``config`` with its weights, in eval mode, on ``device``.

    Parameters
    ----------
    config : BackboneConfig
        The registered backbone.
    weights : pathlib.Path or None
        A checkpoint file (read by :func:`read_state_dict`), or ``None`` for the pretrained
        weights of the Hugging Face hub (or its local cache).
    device : str
        A resolved torch device (``"cpu"``, ``"cuda:0"``, ...).

    Returns
    -------
    timm.models.VisionTransformer
        With ``dynamic_img_size=True`` and no classifier (``num_classes=0``).

    Raises
    ------
    WeightsUnavailableError
        ``weights=None`` and the download failed.
    FileNotFoundError, ValueError
        The file is missing or does not fit the architecture.
    """
    import timm
    import torch

    kwargs = dict(pretrained=False, dynamic_img_size=True, num_classes=0)
    if weights is None:
        model = _create_pretrained(config, dynamic_img_size=True, num_classes=0).to(device)
    else:
        # Build on the meta device (no random init: it is overwritten anyway), then
        # materialise on the target device while loading the state dict.
        with torch.device("meta"):
            try:
                model = timm.create_model(config.timm_name, weight_init="skip", **kwargs)
            except TypeError:  # a model without that option (DINOv3's Eva)
                model = timm.create_model(config.timm_name, **kwargs)
        persistent = set(model.state_dict())
        if any(name not in persistent for name, _ in model.named_buffers()):
            # Non-persistent buffers would stay uninitialised: build normally instead.
            model = timm.create_model(config.timm_name, **kwargs).to(device)
        _load_weights_file(model, weights, config, device)
    _check_model(model, config)
    return model.eval()
