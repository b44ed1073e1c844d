"""Every default of the library, written once.

The values follow the paper (Melas-Kyriazi et al., CVPR 2022) and its supplement; the
comment on each says where it comes from, and ``docs/algorithm.md`` shows where each is used.
"""

from __future__ import annotations

__all__ = [
    "BACKBONE",
    "BLOCK",
    "FEATURE",
    "FEATURE_KINDS",
    "PRECISION",
    "PRECISIONS",
    "GRID_STRIDE",
    "KNN_LAMBDA",
    "KNN_SETTINGS",
    "KNN_KERNELS",
    "KNN_KERNEL",
    "N_EIGENVECTORS",
    "MAX_SIZE",
    "MAX_GRID_NODES",
    "BATCH_SIZE",
    "WORKERS",
    "ENGINE",
    "ENGINES",
    "MAX_PIXELS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "CRF_PARAMS",
]

#: Registry name of the default backbone (DINO ViT-S/16).
BACKBONE = "dino_vits16"
#: Transformer block the features come from (-1: the last one).
BLOCK = -1
#: Which features of that block: attention keys (the paper's choice).
FEATURE = "k"
FEATURE_KINDS = ("k", "q", "v", "tokens")
#: Arithmetic of the backbone's forward pass: full precision unless asked (fp16: CUDA only).
PRECISION = "fp32"
PRECISIONS = ("fp32", "fp16", "bf16")

#: The working ("intermediate") grid is 1/GRID_STRIDE of the cropped image (paper: M/8 x N/8).
GRID_STRIDE = 8
#: Weight of the colour affinity in W = W_feat + lambda * W_knn (supplement, Table 7).
KNN_LAMBDA = 10.0
#: (k neighbours, weight of the x/y coordinates) pairs of the KNN-matting colour affinity.
KNN_SETTINGS = ((20, 2.0), (10, 0.1))
#: Edge weights of the KNN affinity: "binary" (PyMatting's default, the paper's code) or
#: "soft" (Eq. 1 of the paper, 1 - distance).
KNN_KERNELS = ("binary", "soft")
KNN_KERNEL = "binary"
#: Number of eigenvectors returned, the constant one included.
N_EIGENVECTORS = 5

#: Longest side (pixels) of the image used for the decomposition. Every standard benchmark
#: image (<= 640 px a side) stays at full resolution; larger photos are downscaled for the
#: decomposition and results are mapped back to the original pixels.
MAX_SIZE = 800
#: Largest working grid (nodes) decomposed: the dense affinity takes 4 * nodes**2 bytes
#: (30,000 nodes = 3.6 GB, about a 1,400 x 1,400 image with --max-size 0).
MAX_GRID_NODES = 30_000
#: Images per backbone forward pass in dataset runs (bucketed by size: results unchanged).
#: On a 2-core CPU batching measured no faster (benchmarks/bench_pipeline.py); raise it on a GPU.
BATCH_SIZE = 1
#: Threads running the eigen-step beside the backbone in dataset runs. On a 2-core CPU the
#: backbone already keeps both cores busy and 2 measured slower; more cores or a GPU gain.
WORKERS = 1
#: Where dataset runs run: this process (``local``) or a Ray cluster (``ray``,
#: ``deepspectral.engine_ray``; the ``ray`` extra).
ENGINE = "local"
ENGINES = ("local", "ray")
#: Images with more pixels than this are refused before decoding (decompression bombs).
MAX_PIXELS = 200_000_000

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: Dense CRF settings used by the paper's code ("default parameters").
CRF_PARAMS = {
    "bilateral_weight": 10.0,
    "bilateral_xy_std": 80.0,
    "bilateral_rgb_std": 13.0,
    "gaussian_weight": 3.0,
    "gaussian_xy_std": 3.0,
    "iterations": 5,
}
