"""The paper's eigen-step, deepspectral against the authors' own code: parity and speed.

The authors' code (github.com/lukemelas/deep-spectral-segmentation) is imported at run
time from a checkout given with ``--peer PATH`` (or the ``DEEPSPECTRAL_PEER_DSM``
environment variable); nothing of it is copied here and its files are not edited:

- ``extract/extract.py: _extract_eig``, the eigen-step (fused feature + KNN colour
  affinity, ``eigsh(D - W, K, sigma=0, M=D)``, sign rule), called with the paper's
  settings (1/8 grid: ``image_downsample_factor=8``; ``image_color_lambda=10``; ``K=5``);
- ``object-localization/object_discovery.py: get_bbox_from_patch_mask``, the paper's box
  (largest connected component of ``y_1 > 0``, scaled to pixels).

Their missing imports are shimmed at run time (stub modules, only while their modules
load): ``cv2``, ``fire``, ``accelerate`` (not used by these functions) and their
``object-localization/datasets.py`` (``bbox_iou`` is not used by the box function). What
the computation needs is real: ``pymatting`` (their KNN affinity) and ``scikit-image``
(their connected components): ``pip install "deepspectral[parity]"``. Their
``.cuda()`` is made a no-op while their function runs, so both sides run on the CPU.

Both sides get the same inputs: the same random-weight ViT-S/16 features (or ``--weights``)
and the same pixels: the image cropped to a multiple of 16 (and resized by ``--max-size``
as deepspectral does) is written losslessly as the image their function reads, so the
misalignment of their resize (the uncropped image squeezed onto the crop's grid) does not
arise.

Per photo it prints the D-weighted ``|cos|`` of each non-constant eigenvector (``D`` the
degrees of the fused affinity; generalised eigenvectors are D-orthogonal), whether its
eigengap is clear (:func:`clear_gap`), the IoU of the two boxes (theirs mapped from crop
pixels to the original image) and of the two coarse masks ``y_1 > 0`` (their
single-region segmentation); then the eigen-step speed, milliseconds per image: their
``_extract_eig`` call (reading the feature file and the image, writing the result: a few
ms) against ``deepspectral.decompose`` (crop, colours, affinity, eigensolver, signs).

    python benchmarks/bench_paper_parity.py --peer /path/to/deep-spectral-segmentation \\
        [IMAGES ...] [--limit 30] [--weights FILE]

Without IMAGES it uses the 30 photos of ``golden_outputs.py`` (10 SOD, 10 COCO-MINI,
10 DAVIS) from ../shared/data.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import platform
import subprocess
import sys
import tempfile
import time
import types
from dataclasses import dataclass
from pathlib import Path

import numpy as np

#: Environment variable naming the checkout of the authors' code.
PEER_ENV = "DEEPSPECTRAL_PEER_DSM"
#: An eigenvector's gap is clear when both neighbouring eigenvalues lie at least this
#: fraction of the next eigenvalue away from its own (see :func:`clear_gap`).
CLEAR_GAP = 0.01
#: The paper's settings in the authors' function's terms (README of their repository:
#: ``--K 5``; paper Sec. 3 / supplement: 1/8 grid, lambda_knn = 10).
PAPER_K = 5
PAPER_KNN_LAMBDA = 10.0
PAPER_DOWNSAMPLE = 8

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


class PeerUnavailable(RuntimeError):
    """The authors' code cannot be imported (no checkout, or a dependency missing)."""


@dataclass
class PaperCode:
    """The authors' functions, imported from a checkout."""

    extract_eig: object
    bbox_from_patch_mask: object
    checkout: Path
    commit: str


def peer_path(option: str | None = None) -> Path | None:
    """The checkout named by ``option`` or by :data:`PEER_ENV`, or None."""
    value = option or os.environ.get(PEER_ENV)
    return Path(value) if value else None


@contextlib.contextmanager
def _modules_while_loading(stubs: dict[str, types.ModuleType], real: dict[str, Path]):
    """Put ``stubs`` (for names that cannot be imported) and the modules at ``real``
    (name -> file) into ``sys.modules`` while the body runs, then restore every name."""
    saved = {name: sys.modules.get(name) for name in [*stubs, *real]}
    try:
        for name, module in stubs.items():
            sys.modules[name] = module
        for name, path in real.items():
            sys.modules[name] = _load_file(name, path)
        yield
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module


def _load_file(name: str, path: Path) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _stub(name: str, **attributes) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__dict__.update(attributes)
    module.__deepspectral_stub__ = True
    return module


def _importable(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def load_paper_code(checkout: str | os.PathLike) -> PaperCode:
    """Import the authors' eigen-step and box functions from ``checkout``.

    Raises
    ------
    PeerUnavailable
        The checkout or one of the files is missing, or a dependency their computation
        needs (pymatting, scikit-image) is not installed.
    """
    checkout = Path(checkout)
    extract_py = checkout / "extract" / "extract.py"
    utils_py = checkout / "extract" / "extract_utils.py"
    discovery_py = checkout / "object-localization" / "object_discovery.py"
    for path in (extract_py, utils_py, discovery_py):
        if not path.is_file():
            raise PeerUnavailable(f"not a checkout of lukemelas/deep-spectral-segmentation: {path} is missing")
    for module, package in (("pymatting", "pymatting"), ("skimage", "scikit-image")):
        if not _importable(module):
            raise PeerUnavailable(
                f"the authors' code needs {package} for its computation: pip install {package} "
                '(or pip install "deepspectral[parity]")'
            )
    # imported by their modules but not used by the two functions called here
    stubs = {}
    for name in ("cv2", "fire"):
        if not _importable(name):
            stubs[name] = _stub(name)
    if not _importable("accelerate"):
        stubs["accelerate"] = _stub("accelerate", Accelerator=None)
    if not _importable("sklearn"):
        stubs.update(
            sklearn=_stub("sklearn"),
            **{"sklearn.cluster": _stub("sklearn.cluster", KMeans=None, MiniBatchKMeans=None),
               "sklearn.decomposition": _stub("sklearn.decomposition", PCA=None)},
        )  # fmt: skip
    # their object-localization/datasets.py (dataset loaders; imports traitlets) only
    # provides bbox_iou to object_discovery, which the box function does not call; the
    # name would also shadow any installed ``datasets`` package
    stubs["datasets"] = _stub("datasets", bbox_iou=None)
    with _modules_while_loading(stubs, {"extract_utils": utils_py}):
        extract = _load_file("deepspectral_peer_dsm_extract", extract_py)
        discovery = _load_file("deepspectral_peer_dsm_object_discovery", discovery_py)
    for name in ("deepspectral_peer_dsm_extract", "deepspectral_peer_dsm_object_discovery"):
        sys.modules.pop(name, None)
    try:
        commit = subprocess.run(
            ["git", "-C", str(checkout), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    return PaperCode(extract._extract_eig, discovery.get_bbox_from_patch_mask, checkout, commit)


@contextlib.contextmanager
def _cuda_is_a_no_op():
    """Their eigen-step moves the features with ``.cuda()``: keep them on the CPU."""
    import torch

    original = torch.Tensor.cuda
    torch.Tensor.cuda = lambda self, *args, **kwargs: self
    try:
        yield
    finally:
        torch.Tensor.cuda = original


def paper_eigenpairs(
    code: PaperCode,
    features: np.ndarray,
    crop: np.ndarray,
    workdir: str | os.PathLike,
    *,
    n_eigenvectors: int = PAPER_K,
    knn_lambda: float = PAPER_KNN_LAMBDA,
    patch_size: int = 16,
) -> tuple[np.ndarray, np.ndarray, float]:
    """Run the authors' ``_extract_eig`` on one image, the paper's settings.

    Parameters
    ----------
    features : (h_p, w_p, C) float32
        Patch features (keys), as deepspectral's backbone gives them.
    crop : (H_c, W_c, 3) uint8
        The pixels the backbone saw (multiples of ``patch_size``); written losslessly as
        the image file their function reads.
    workdir : path
        A folder for their input and output files (a fresh subfolder is used per call).

    Returns
    -------
    eigenvalues : (K,) float64
    eigenvectors : (K, H_c // 8, W_c // 8) float32, their sign rule applied
    seconds : float
        Wall time of their function call.
    """
    import torch
    from PIL import Image

    hp, wp, channels = features.shape
    height, width = crop.shape[:2]
    if (height, width) != (hp * patch_size, wp * patch_size):
        raise ValueError(f"crop: size {(height, width)} is not the patch grid {(hp, wp)} times {patch_size}")
    workdir = Path(tempfile.mkdtemp(dir=workdir))
    (workdir / "images").mkdir()
    (workdir / "eigs").mkdir()
    # PIL opens by content: a PNG under the .jpg name their code builds keeps the pixels exact
    Image.fromarray(crop).save(workdir / "images" / "photo.jpg", format="PNG")
    data = {
        "k": torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32).reshape(1, hp * wp, channels)),
        "file": "photo.jpg",
        "id": "photo",
        "patch_size": patch_size,
        "shape": (1, 3, height, width),
    }
    torch.save(data, workdir / "features.pth")
    with _cuda_is_a_no_op():
        start = time.perf_counter()
        code.extract_eig(
            (0, str(workdir / "features.pth")),
            K=int(n_eigenvectors),
            images_root=str(workdir / "images"),
            output_dir=str(workdir / "eigs"),
            which_matrix="laplacian",
            image_downsample_factor=PAPER_DOWNSAMPLE,
            image_color_lambda=float(knn_lambda),
        )
        seconds = time.perf_counter() - start
    out = torch.load(workdir / "eigs" / "photo.pth", map_location="cpu")
    grid = (height // PAPER_DOWNSAMPLE, width // PAPER_DOWNSAMPLE)
    values = out["eigenvalues"].numpy().astype(np.float64)
    vectors = out["eigenvectors"].numpy().astype(np.float32).reshape(-1, *grid)
    return values, vectors, seconds


def paper_box(code: PaperCode, fiedler: np.ndarray, crop_size: tuple[int, int]) -> tuple[int, int, int, int]:
    """Their box of the Fiedler vector ``(h, w)`` (``y_1 > 0``, largest component), in
    pixels of the crop, ``(x1, y1, x2, y2)`` with x2 / y2 exclusive."""
    import torch

    box = code.bbox_from_patch_mask(torch.from_numpy(fiedler.ravel() > 0), (3, *crop_size))
    return tuple(int(v) for v in box)


def clear_gap(values: np.ndarray, index: int, threshold: float = CLEAR_GAP) -> bool:
    """Whether eigenvector ``index`` (0 < index < len(values) - 1) is well separated:
    ``min(λ_i − λ_{i−1}, λ_{i+1} − λ_i) ≥ threshold · λ_{i+1}`` (a relative gap of 1 %
    by default). An eigenvector is determined by the matrix only up to perturbations of
    the order of (matrix error) / gap, so without a clear gap two correct solvers may
    return different vectors of the same near-degenerate subspace."""
    lower = values[index] - values[index - 1]
    upper = values[index + 1] - values[index]
    return bool(min(lower, upper) >= threshold * abs(values[index + 1]))


def d_cosine(a: np.ndarray, b: np.ndarray, degree: np.ndarray) -> float:
    """``|aᵀ D b| / sqrt(aᵀ D a · bᵀ D b)`` of two vectors, ``D = diag(degree)``."""
    a = np.asarray(a, np.float64).ravel()
    b = np.asarray(b, np.float64).ravel()
    return float(abs(a @ (degree * b)) / np.sqrt((a @ (degree * a)) * (b @ (degree * b))))


def box_iou(a, b) -> float:
    """IoU of two ``(x1, y1, x2, y2)`` boxes (x2 / y2 exclusive)."""
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 1.0


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def fused_degree(features: np.ndarray, colours: np.ndarray, knn_lambda: float) -> np.ndarray:
    """Degrees ``(h * w,)`` float64 of deepspectral's fused affinity (for the D-cosine)."""
    from deepspectral.spectral import grid_affinity

    affinity = grid_affinity(features, colours, knn_lambda=knn_lambda)
    upper = np.triu(affinity)
    return upper.sum(axis=1, dtype=np.float64) + np.triu(affinity, 1).sum(axis=0, dtype=np.float64)


@dataclass
class PhotoResult:
    name: str
    grid: tuple[int, int]
    cosines: list[float]  # eigenvectors 1 .. K'-2 of the parity pass
    clear: list[bool]
    box_iou: float
    mask_iou: float
    ours_box: tuple[int, int, int, int]
    paper_box: tuple[int, int, int, int]
    paper_s: float
    ours_s: float


def compare_photo(
    code: PaperCode,
    backbone,
    image: np.ndarray,
    name: str,
    workdir,
    *,
    knn_lambda: float = PAPER_KNN_LAMBDA,
    repeat: int = 1,
) -> PhotoResult:
    """One photo through both eigen-steps: a timed pass with the paper's K = 5 (boxes,
    masks, times; the best of ``repeat`` runs on each side) and an untimed pass with K = 6,
    which tells the gap of eigenvector 4."""
    from deepspectral import decompose, localize
    from deepspectral.spectral import coarse_mask

    feats = backbone.extract(image)
    geometry = feats.geometry
    crop = geometry.crop(image)
    # timed pass, the paper's K
    paper_s = ours_s = float("inf")
    for _ in range(repeat):
        values, vectors, seconds = paper_eigenpairs(code, feats.features, crop, workdir, knn_lambda=knn_lambda)
        paper_s = min(paper_s, seconds)
        start = time.perf_counter()
        dec = decompose(feats, image, knn_lambda=knn_lambda, n_eigenvectors=PAPER_K)
        ours_s = min(ours_s, time.perf_counter() - start)
    theirs = paper_box(code, vectors[1], geometry.crop_size)
    theirs = tuple(int(v) for v in geometry.input_boxes_to_image([theirs])[0])  # crop pixels = input pixels
    ours = localize(dec)
    masks = mask_iou(vectors[1] > 0, coarse_mask(dec))
    # parity pass: one more eigenpair, so every eigenvector of the paper's K has a known gap
    values6, vectors6, _ = paper_eigenpairs(code, feats.features, crop, workdir, n_eigenvectors=PAPER_K + 1,
                                            knn_lambda=knn_lambda)  # fmt: skip
    dec6 = decompose(feats, image, knn_lambda=knn_lambda, n_eigenvectors=PAPER_K + 1)
    degree = fused_degree(feats.features, geometry.grid_colours(image), knn_lambda)
    indices = range(1, PAPER_K)
    cosines = [d_cosine(vectors6[i], dec6.eigenvectors[i], degree) for i in indices]
    clear = [clear_gap(values6, i) for i in indices]
    return PhotoResult(name, geometry.grid_size, cosines, clear, box_iou(theirs, ours), masks, ours, theirs,
                       paper_s, ours_s)  # fmt: skip


def default_photos(data: Path = SHARED) -> list[Path]:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from golden_outputs import pick_photos

    return pick_photos(data, 10)


def run(
    checkout: str | os.PathLike,
    paths: list,
    *,
    weights: str | None = None,
    knn_lambda: float = PAPER_KNN_LAMBDA,
    repeat: int = 1,
) -> tuple[PaperCode, list[PhotoResult]]:
    """Import the authors' code from ``checkout`` and compare every photo of ``paths``
    (after one untimed warm-up photo: numba compilation on both sides). Raises
    :class:`PeerUnavailable` when the authors' code cannot be imported."""
    code = load_paper_code(checkout)

    from deepspectral import Backbone
    from deepspectral.backbones import save_random_weights
    from deepspectral.data.images import load_image

    scratch = Path(tempfile.mkdtemp(prefix="paper-parity-"))
    weights = weights or save_random_weights(scratch / "vits16_random.pth", "dino_vits16", seed=0)
    backbone = Backbone("dino_vits16", weights=weights, device="cpu")
    compare_photo(code, backbone, load_image(paths[0]), "warm-up", scratch, knn_lambda=knn_lambda)
    results = []
    for path in paths:
        name = f"{Path(path).parent.name}/{Path(path).name}"
        results.append(
            compare_photo(code, backbone, load_image(path), name, scratch, knn_lambda=knn_lambda, repeat=repeat)
        )
    return code, results


def summary(results: list[PhotoResult]) -> dict:
    """The figures the targets are stated in: min ``|cos|`` of the eigenvectors with a
    clear gap, min box and mask IoU, eigen-step ms per image and the speed-up."""
    clear_cos = [c for r in results for c, g in zip(r.cosines, r.clear) if g]
    paper_ms = 1000 * np.array([r.paper_s for r in results])
    ours_ms = 1000 * np.array([r.ours_s for r in results])
    ratio = paper_ms / ours_ms
    return {
        "photos": len(results),
        "clear_vectors": len(clear_cos),
        "vectors": sum(len(r.cosines) for r in results),
        "min_cos": min(clear_cos) if clear_cos else float("nan"),
        "box_ious": np.array([r.box_iou for r in results]),
        "mask_ious": np.array([r.mask_iou for r in results]),
        "theirs_ms": paper_ms,
        "ours_ms": ours_ms,
        "speedups": ratio,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("images", nargs="*", help="image files or folders (default: the 30 golden photos)")
    parser.add_argument("--peer", default=None, help=f"checkout of the authors' code (default: ${PEER_ENV})")
    parser.add_argument("--limit", type=int, default=30)
    parser.add_argument("--weights", default=None, help="ViT-S/16 weights (default: random, seed 0)")
    parser.add_argument("--knn-lambda", type=float, default=PAPER_KNN_LAMBDA)
    parser.add_argument("--repeat", type=int, default=1, help="timed runs per photo and side (best kept)")
    args = parser.parse_args()

    checkout = peer_path(args.peer)
    if checkout is None:
        sys.exit(f"give the checkout of lukemelas/deep-spectral-segmentation with --peer PATH or ${PEER_ENV}")
    from deepspectral.data.images import collect_inputs

    paths = [item.path for item in collect_inputs(args.images)] if args.images else default_photos()
    paths = paths[: args.limit]
    if not paths:
        sys.exit("no images found: pass image files or folders")
    try:
        code, results = run(checkout, paths, weights=args.weights, knn_lambda=args.knn_lambda, repeat=args.repeat)
    except PeerUnavailable as error:
        sys.exit(str(error))

    print(f"authors' code: {code.checkout} at commit {code.commit}")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, {platform.system()}, "
          f"python {platform.python_version()}, load average at the end {os.getloadavg()[0]:.1f}")  # fmt: skip
    print(f"photos: {len(results)}, random-weight ViT-S/16 (seed 0) unless --weights, knn_lambda {args.knn_lambda}, "
          f"K {PAPER_K} (parity of eigenvectors 1..{PAPER_K - 1} from a K = {PAPER_K + 1} pass); "
          f"clear gap: relative gap >= {CLEAR_GAP}")  # fmt: skip
    print()
    header = " | ".join(f"\\|cos\\| y{i}" for i in range(1, PAPER_K))
    print(f"| photo | grid | {header} | box IoU | mask IoU (y1 > 0) | paper ms | deepspectral ms |")
    print("|---|---|" + "---:|" * (PAPER_K - 1) + "---:|---:|---:|---:|")
    for r in results:
        cells = " | ".join(f"{c:.4f}" + ("" if g else " (no gap)") for c, g in zip(r.cosines, r.clear))
        print(f"| {r.name} | {r.grid[0]}×{r.grid[1]} | {cells} | {r.box_iou:.3f} | {r.mask_iou:.3f} | "
              f"{1000 * r.paper_s:.0f} | {1000 * r.ours_s:.0f} |")  # fmt: skip
    figures = summary(results)
    boxes, masks = figures["box_ious"], figures["mask_ious"]
    print()
    print(f"eigenvectors with a clear gap: {figures['clear_vectors']} of {figures['vectors']}, min |cos| "
          f"{figures['min_cos']:.6f} (target >= 0.99)")  # fmt: skip
    print(f"box IoU: min {boxes.min():.3f}, {int((boxes >= 0.9).sum())}/{len(boxes)} photos >= 0.9, "
          f"{int((boxes == 1.0).sum())} identical")  # fmt: skip
    print(f"mask IoU (y1 > 0 on the grid): min {masks.min():.3f}, {int((masks >= 0.95).sum())}/{len(masks)} >= 0.95")
    paper_ms, ours_ms, ratio = figures["theirs_ms"], figures["ours_ms"], figures["speedups"]
    print()
    print("| eigen-step, ms per image | median | min | max |")
    print("|---|---:|---:|---:|")
    print(f"| paper's `_extract_eig` (imported) | {np.median(paper_ms):.0f} | {paper_ms.min():.0f} | "
          f"{paper_ms.max():.0f} |")  # fmt: skip
    print(f"| `deepspectral.decompose` | {np.median(ours_ms):.0f} | {ours_ms.min():.0f} | {ours_ms.max():.0f} |")
    print(f"| speed-up (per image) | {np.median(ratio):.1f}× | {ratio.min():.1f}× | {ratio.max():.1f}× |")
    print(f"speed-up of the median times: {np.median(paper_ms) / np.median(ours_ms):.1f}×")


if __name__ == "__main__":
    main()
