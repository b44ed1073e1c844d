"""Run CutLER's own MaskCut (facebookresearch/CutLER, imported from a checkout) beside ours.

Shared by ``tests/test_parity_maskcut.py`` and ``benchmarks/bench_maskcut.py``. Nothing of
CutLER is copied: ``maskcut/maskcut.py`` is imported at run time from the checkout, with
its own imports resolved as its script expects (``maskcut/`` for ``dino`` and ``crf``,
``third_party/`` for the ``TokenCut`` submodule, pinned at TokenCut 5eba77f) and its files
untouched. Shims, at run time only:

- the **backbone** given to their ``maskcut(img_path, backbone, ...)`` is a callable that
  runs *our* timm ViT on the tensor their code prepared (their ``I.resize((480, 480),
  LANCZOS)``, ``utils.resize_pil``, ``ToTensor`` + ``Normalize``) and returns the keys of
  the last block, all heads, CLS dropped, in their ``ViTFeat`` layout ``(1, C, N)`` (the
  forward hook on ``blocks[-1].attn.qkv``, as their ``dino.ViTFeat``): both sides use the
  same weights, and the features differ only by how each side prepares the image;
- their module's ``eigh`` is wrapped to time it (nothing else changes); ``cpu=True``.

What their script does inline after ``maskcut()`` (its ``__main__`` loop: not importable)
is done here as it does it, with the same calls: ``densecrf(np.array(I_new), bipartition)``,
``ndimage.binary_fill_holes(... >= 0.5)``, ``metric.IoU(...) < 0.5`` → dropped, the 0/255
``Image.resize((width, height))`` and their ``create_annotation_info`` (whose RLE is decoded
with pycocotools). ``crf=False`` skips the ``densecrf`` block (MaskCut has no such mode:
it is the comparison without the CRF the issue asks for).
"""

from __future__ import annotations

import importlib.util
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = ["PEER_ENV", "MaskCutPeer", "PeerResult", "load_peer", "pick_photos", "match_instances"]

#: Environment variable naming the CutLER checkout for the parity test.
PEER_ENV = "DEEPSPECTRAL_PEER_CUTLER"


def pick_photos(data: Path, n_coco: int = 10, n_sod: int = 6, n_davis: int = 4) -> list[Path]:
    """Photos of ``../shared/data``: COCO (several objects), SOD (481×321) and DAVIS (854×480)."""
    coco = sorted((data / "coco-mini" / "val2017").glob("*.jpg"))[:n_coco]
    sod = sorted((data / "sod" / "images").glob("*.jpg"))[:n_sod]
    davis = sorted((data / "davis2016-val" / "JPEGImages").glob("*/*.jpg"))[::35][:n_davis]
    return coco + sod + davis


def match_instances(theirs: list, ours: list) -> list[float]:
    """IoU of each of ``theirs`` with its partner among ``ours`` (Hungarian on mask IoU,
    ``scipy.optimize.linear_sum_assignment``); 0 for one left without a partner."""
    from scipy.optimize import linear_sum_assignment

    if not theirs:
        return []
    if not ours:
        return [0.0] * len(theirs)
    table = np.zeros((len(theirs), len(ours)))
    for i, a in enumerate(theirs):
        for j, b in enumerate(ours):
            union = np.logical_or(a, b).sum()
            table[i, j] = np.logical_and(a, b).sum() / union if union else 1.0
    rows, cols = linear_sum_assignment(-table)
    best = [0.0] * len(theirs)
    for i, j in zip(rows, cols):
        best[i] = float(table[i, j])
    return best


@dataclass
class PeerResult:
    """CutLER's outputs for one image (its own code)."""

    masks: list = field(default_factory=list)  # (H, W) bool per annotation, in order
    scores: list = field(default_factory=list)
    seconds: dict = field(default_factory=dict)


class _KeysBackbone:
    """Their ``backbone(tensor)``: our timm model's last-block keys in ``ViTFeat``'s layout."""

    def __init__(self, model):
        self.model = model

    def __call__(self, tensor):
        import torch

        captured = {}
        handle = self.model.blocks[-1].attn.qkv.register_forward_hook(lambda m, i, o: captured.__setitem__("qkv", o))
        try:
            with torch.no_grad():
                self.model.forward_features(tensor)
        finally:
            handle.remove()
        qkv = captured["qkv"]
        bs, tokens = qkv.shape[:2]
        heads = self.model.blocks[-1].attn.num_heads
        keys = qkv.reshape(bs, tokens, 3, heads, -1).permute(2, 0, 3, 1, 4)[1]
        keys = keys.transpose(1, 2).reshape(bs, tokens, -1)
        return keys[:, 1:].transpose(1, 2)  # (bs, C, N)


class MaskCutPeer:
    """CutLER's ``maskcut/maskcut.py`` from a checkout, fed our model's keys."""

    def __init__(self, checkout: Path, model, patch_size: int = 16):
        checkout = Path(checkout)
        self.checkout = checkout
        self.patch_size = int(patch_size)
        self.backbone = _KeysBackbone(model)
        paths = [str(checkout / "maskcut"), str(checkout / "third_party")]
        sys.path[:0] = paths
        try:
            spec = importlib.util.spec_from_file_location("cutler_maskcut", checkout / "maskcut" / "maskcut.py")
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
        finally:
            for path in paths:
                sys.path.remove(path)
        self.module = module
        self.eigh_seconds = 0.0
        original = module.eigh

        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.eigh_seconds += time.perf_counter() - start

        module.eigh = timed

    def forward(self, features_cn, grid, *, tau: float = 0.15, n: int = 3, size: int = 480):
        """Their ``maskcut_forward`` on given ``(C, N)`` features: ``(bipartitions, seconds
        of eigh)`` (for timing the eigen-step alone)."""
        import torch

        self.eigh_seconds = 0.0
        feats = torch.as_tensor(np.ascontiguousarray(features_cn))
        _, bipartitions, _ = self.module.maskcut_forward(
            feats, list(grid), [self.patch_size, self.patch_size], [size, size], tau, N=n, cpu=True
        )
        return bipartitions, self.eigh_seconds

    def run(self, path: Path, *, tau: float = 0.15, n: int = 3, size: int = 480, crf=(True, False)) -> dict:
        """Their ``maskcut()`` on one photo, then their script's per-mask steps with and / or
        without the CRF (``crf``: the variants wanted, from the same cuts): ``{crf: PeerResult}``."""
        import pycocotools.mask as mask_api
        import torch
        from PIL import Image
        from scipy import ndimage

        module = self.module
        self.eigh_seconds = 0.0
        start = time.perf_counter()
        bipartitions, _, image_new = module.maskcut(str(path), self.backbone, self.patch_size, tau, N=n, fixed_size=size, cpu=True)
        seconds = {"maskcut": time.perf_counter() - start, "eigh": self.eigh_seconds}
        width, height = Image.open(path).convert("RGB").size
        results = {}
        for with_crf in crf:
            result = PeerResult(seconds=dict(seconds))
            start = time.perf_counter()
            for bipartition in bipartitions:
                if with_crf:
                    pseudo_mask = module.densecrf(np.array(image_new), bipartition)
                    pseudo_mask = ndimage.binary_fill_holes(pseudo_mask >= 0.5)
                    if module.metric.IoU(torch.from_numpy(bipartition), torch.from_numpy(pseudo_mask)) < 0.5:
                        pseudo_mask = pseudo_mask * -1
                    pseudo_mask[pseudo_mask < 0] = 0
                else:
                    pseudo_mask = bipartition
                pseudo_mask = Image.fromarray(np.uint8(pseudo_mask * 255))
                pseudo_mask = np.asarray(pseudo_mask.resize((width, height)))
                info = module.create_annotation_info(1, 1, module.category_info, pseudo_mask.astype(np.uint8), None)
                if info is not None:
                    result.masks.append(mask_api.decode(info["segmentation"]).astype(bool))
            result.seconds["post"] = time.perf_counter() - start
            results[with_crf] = result
        return results


def load_peer(checkout, model, patch_size: int = 16) -> MaskCutPeer:
    """A :class:`MaskCutPeer`; ``FileNotFoundError`` when ``checkout`` lacks CutLER's files
    (or its TokenCut submodule)."""
    checkout = Path(checkout)
    needed = [
        checkout / "maskcut" / "maskcut.py",
        checkout / "maskcut" / "crf.py",
        checkout / "third_party" / "TokenCut" / "unsupervised_saliency_detection" / "object_discovery.py",
    ]
    missing = [str(p) for p in needed if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"not a CutLER checkout with its TokenCut submodule (missing {', '.join(missing)})")
    return MaskCutPeer(checkout, model, patch_size)
