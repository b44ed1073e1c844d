"""Run TokenCut's own code (YangtaoWANG95/TokenCut, imported from a checkout) beside ours.

Shared by ``tests/test_parity_tokencut.py`` and ``benchmarks/bench_tokencut_parity.py``.
Nothing of TokenCut is copied: its modules are imported at run time from the checkout
(``object_discovery.py`` for boxes, ``unsupervised_saliency_detection/{object_discovery,
utils,bilateral_solver}.py`` for saliency masks) and shimmed where they cannot run here:

- ``bilateral_solver.cg(..., tol=...)``: current scipy renamed ``tol`` to ``rtol``;
- the saliency ``ncut`` moves its mask to ``'cuda'``: its ``torch`` is given a
  ``from_numpy`` whose ``.to(device)`` stays on the CPU;
- ``scipy.linalg.eigh`` as the modules call it is wrapped to time it (nothing else changes).

What TokenCut does inline in its scripts (not importable) is done here as they do it, with
the same library calls: ``torchvision`` ``ToTensor`` + ``Normalize`` (ImageNet statistics),
zero padding of the normalised tensor to a multiple of 16 (``main_tokencut.py``), the
forward hook on the last block's ``attn.qkv`` and the keys of all heads concatenated
(``main_tokencut.py`` / ``unsupervised_saliency_detection/dino.py``). Both sides use the same
timm ViT-S/16 (random weights), so the features differ only by how each side prepares the
image.
"""

from __future__ import annotations

import importlib.util
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = ["PEER_ENV", "TokenCutPeer", "PeerResult", "load_peer", "pick_photos"]

#: Environment variable naming the TokenCut checkout for the parity test.
PEER_ENV = "DEEPSPECTRAL_PEER_TOKENCUT"
PATCH = 16


def pick_photos(data: Path, n_sod: int = 12, n_coco: int = 4, n_davis: int = 4) -> list[Path]:
    """Photos of ``../shared/data``: SOD (481×321: padding and resizing both matter),
    COCO and DAVIS (854×480)."""
    sod = sorted((data / "sod" / "images").glob("*.jpg"))[:n_sod]
    coco = sorted((data / "coco-mini" / "val2017").glob("*.jpg"))[:n_coco]
    davis = sorted((data / "davis2016-val" / "JPEGImages").glob("*/*.jpg"))[::35][:n_davis]
    return sod + coco + davis


def _load_module(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class _CpuTensor:
    """What the shimmed ``torch.from_numpy`` returns: ``.to(device)`` gives the CPU tensor."""

    def __init__(self, tensor):
        self._tensor = tensor

    def to(self, *args, **kwargs):
        return self._tensor


class _CpuTorch:
    """``torch`` for TokenCut's saliency ``ncut``, with CUDA transfers kept on the CPU."""

    def __init__(self):
        import torch

        self._torch = torch

    def __getattr__(self, name):
        return getattr(self._torch, name)

    def from_numpy(self, array):
        return _CpuTensor(self._torch.from_numpy(array))


@dataclass
class PeerResult:
    """TokenCut's outputs for one image (its own code)."""

    box: list = field(default_factory=list)  # [x1, y1, x2, y2] in pixels
    box_vector: np.ndarray | None = None  # (h, w) flipped second eigenvector (boxes' grid)
    mask: np.ndarray | None = None  # (H, W) bool saliency mask (seed's component)
    mask_vector: np.ndarray | None = None  # (h, w) second eigenvector on the saliency grid
    solver: np.ndarray | None = None  # (H, W) float bilateral solver output
    seconds: dict = field(default_factory=dict)


class TokenCutPeer:
    """TokenCut's functions from a checkout, fed the given timm model's keys."""

    def __init__(self, checkout: Path, model):
        checkout = Path(checkout)
        self.checkout = checkout
        self.model = model
        self.boxes = _load_module("tokencut_object_discovery", checkout / "object_discovery.py")
        saliency = checkout / "unsupervised_saliency_detection"
        self.saliency = _load_module("tokencut_saliency_discovery", saliency / "object_discovery.py")
        self.utils = _load_module("tokencut_saliency_utils", saliency / "utils.py")
        self.solver = _load_module("tokencut_bilateral_solver", saliency / "bilateral_solver.py")
        # shims (the modules' own globals; their files are untouched)
        import scipy.sparse.linalg

        def cg(*args, tol=None, **kwargs):
            return scipy.sparse.linalg.cg(*args, rtol=tol, **kwargs)

        self.solver.cg = cg
        self.saliency.torch = _CpuTorch()
        self.eigh_seconds = 0.0
        for module in (self.boxes, self.saliency):
            original = module.eigh

            def timed(*args, _original=original, **kwargs):
                start = time.perf_counter()
                try:
                    return _original(*args, **kwargs)
                finally:
                    self.eigh_seconds += time.perf_counter() - start

            module.eigh = timed

    # -- what TokenCut's scripts do inline -------------------------------------------
    @staticmethod
    def _to_tensor(pil_image):
        from torchvision import transforms

        transform = transforms.Compose(
            [transforms.ToTensor(), transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))]
        )
        return transform(pil_image)

    def _keys(self, tensor):
        """``(1, 1 + N, C)`` keys of the last block, all heads (main_tokencut.py's hook)."""
        import torch

        captured = {}
        handle = self.model.blocks[-1].attn.qkv.register_forward_hook(lambda m, i, o: captured.__setitem__("qkv", o))
        try:
            with torch.no_grad():
                self.model.forward_features(tensor[None])
        finally:
            handle.remove()
        qkv = captured["qkv"]
        nb_im, nb_tokens = qkv.shape[:2]
        nh = self.model.blocks[-1].attn.num_heads
        qkv = qkv.reshape(nb_im, nb_tokens, 3, nh, -1).permute(2, 0, 3, 1, 4)
        return qkv[1].transpose(1, 2).reshape(nb_im, nb_tokens, -1)

    def box(self, path: Path, *, tau: float = 0.2, eps: float = 1e-5) -> PeerResult:
        """main_tokencut.py on one image: pad, features, ``ncut`` (its ``detect_box``)."""
        import torch
        from PIL import Image

        img = self._to_tensor(Image.open(path).convert("RGB"))
        init_image_size = img.shape
        size_im = (
            img.shape[0],
            int(np.ceil(img.shape[1] / PATCH) * PATCH),
            int(np.ceil(img.shape[2] / PATCH) * PATCH),
        )
        padded = torch.zeros(size_im)
        padded[:, : img.shape[1], : img.shape[2]] = img
        w_featmap, h_featmap = padded.shape[-2] // PATCH, padded.shape[-1] // PATCH
        feats = self._keys(padded)
        self.eigh_seconds = 0.0
        start = time.perf_counter()
        pred, _, _, _, _, eigenvector = self.boxes.ncut(
            feats, [w_featmap, h_featmap], [PATCH, PATCH], init_image_size, tau, eps
        )
        seconds = time.perf_counter() - start
        return PeerResult(
            box=[float(v) for v in pred],
            box_vector=np.asarray(eigenvector),
            seconds={"ncut": seconds, "eigh": self.eigh_seconds},
        )

    def saliency_mask(self, path: Path, *, tau: float = 0.2, bilateral: bool = True, result: PeerResult | None = None) -> PeerResult:
        """get_saliency.py on one image: ``utils.resize_pil``, features, saliency ``ncut``,
        ``bilateral_solver_output`` (its defaults of get_saliency.py: 16, 16, 8)."""
        from PIL import Image

        result = PeerResult() if result is None else result
        image = Image.open(path).convert("RGB")
        resized, w, h, feat_w, feat_h = self.utils.resize_pil(image, PATCH)
        keys = self._keys(self._to_tensor(resized))[:, 1:]  # ViTFeat: CLS dropped, (C, N)
        feat = keys[0].transpose(0, 1)
        self.eigh_seconds = 0.0
        start = time.perf_counter()
        seed, bipartition, eigvec = self.saliency.ncut(feat, [feat_h, feat_w], [PATCH, PATCH], [h, w], tau)
        result.seconds["saliency_ncut"] = time.perf_counter() - start
        result.seconds["saliency_eigh"] = self.eigh_seconds
        result.mask = np.asarray(bipartition) > 0.5
        # the vector on the grid, read back from its "nearest" upsampling: cell j is at
        # pixel ceil(j * h / feat_h), the first pixel with floor(i * feat_h / h) == j
        rows = -(-np.arange(feat_h) * h // feat_h)
        cols = -(-np.arange(feat_w) * w // feat_w)
        result.mask_vector = np.asarray(eigvec)[rows[:, None], cols[None, :]]
        if bilateral:
            start = time.perf_counter()
            output, _ = self.solver.bilateral_solver_output(str(path), np.asarray(bipartition), 16, 16, 8)
            result.seconds["bilateral"] = time.perf_counter() - start
            result.solver = output
        return result


def load_peer(checkout, model) -> TokenCutPeer:
    """A :class:`TokenCutPeer`; ``FileNotFoundError`` when ``checkout`` lacks TokenCut's files."""
    checkout = Path(checkout)
    needed = [checkout / "object_discovery.py", checkout / "unsupervised_saliency_detection" / "bilateral_solver.py"]
    missing = [str(p) for p in needed if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"not a TokenCut checkout (missing {', '.join(missing)})")
    return TokenCutPeer(checkout, model)

