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
    "EIGEN_BACKENDS",
    "EIGEN_BACKEND",
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
    "METHOD",
    "METHOD_NAMES",
    "TOKENCUT_TAU",
    "TOKENCUT_EPS",
    "REFINEMENTS",
    "REFINE",
    "BILATERAL_PARAMS",
    "BILATERAL_MAX_SIZE",
    "MIN_SCORE",
    "MASKCUT_TAU",
    "MAX_OBJECTS",
    "AUTO_MAX_OBJECTS",
    "AUTO_MIN_SCORE",
    "MASKCUT_RESIZE",
    "DISCOVER_MAX_SIZE",
    "DISCOVER_REFINEMENTS",
    "DISCOVER_REFINE",
    "MASKCUT_CRF_PARAMS",
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
#: Where the eigen-step (affinity + eigensolver) runs: "cpu" (numba / scipy), "torch" (on
#: the backbone's device, batched per size bucket), "auto": torch when the backbone is on
#: a CUDA GPU, else cpu (so CPU runs keep the numba / scipy results bit for bit).
EIGEN_BACKENDS = ("auto", "cpu", "torch")
EIGEN_BACKEND = "auto"

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

#: Recipe of the decomposition (see :data:`deepspectral.recipes.METHODS`): the paper's.
METHOD = "dsm"
#: Names of the recipes of ``deepspectral.recipes.METHODS`` (here too, so that ``--help``
#: lists them without importing the recipes' maths).
METHOD_NAMES = ("dsm", "tokencut")
#: TokenCut's cosine threshold of its binary graph (paper Sec. 3.2; code default
#: ``--tau 0.2`` of ``main_tokencut.py`` and ``get_saliency.py``).
TOKENCUT_TAU = 0.2
#: TokenCut's weight of the pairs below the threshold (code default ``--eps 1e-5``).
TOKENCUT_EPS = 1e-5
#: Refinements of ``segment``: none, the dense CRF (the paper's), the fast bilateral
#: solver (TokenCut's saliency results).
REFINEMENTS = ("none", "crf", "bilateral")
#: Refinement per method when none is asked for: each recipe's published one.
REFINE = {"dsm": "crf", "tokencut": "bilateral"}
#: Fast bilateral solver settings of TokenCut's saliency runs
#: (``unsupervised_saliency_detection/get_saliency.py``: ``--sigma-spatial 16``,
#: ``--sigma-luma 16``, ``--sigma-chroma 8``; ``bilateral_solver.py``: ``lam`` 256,
#: ``A_diag_min`` 1e-5, ``cg_tol`` 1e-5, ``cg_maxiter`` 25, confidence 0.999).
BILATERAL_PARAMS = {
    "sigma_spatial": 16.0,
    "sigma_luma": 16.0,
    "sigma_chroma": 8.0,
    "lam": 256.0,
    "confidence": 0.999,
    "diag_min": 1e-5,
    "cg_tol": 1e-5,
    "cg_maxiter": 25,
}
#: Longest side (pixels) at which segment's bilateral solver works: every benchmark image
#: (up to DAVIS's 854 x 480) at full resolution, as TokenCut does; larger photos are solved
#: at this size and the output resized (the solver's cost grows with the pixels: the 20
#: photos of benchmarks/bench_tokencut_parity.py, 481 x 321 to 854 x 480, took 4.3 s
#: together on a 2-vCPU VM).
BILATERAL_MAX_SIZE = 1024
#: Score below which localize / segment report "no object" (0: every image gets one,
#: as before the score existed).
MIN_SCORE = 0.0

# --- discover (MaskCut, CutLER: facebookresearch/CutLER maskcut/maskcut.py, commit cca0a27) ---
#: MaskCut's cosine threshold of TokenCut's binary graph (CutLER's README runs
#: ``maskcut.py --tau 0.15``; the script's own default, 0.2, is TokenCut's).
MASKCUT_TAU = 0.15
#: Objects per image (MaskCut's ``--N 3``).
MAX_OBJECTS = 3
#: Most cuts of ``--max-objects auto`` (it stops earlier when a cut's score is below
#: ``--min-score``); a bound on the work, not a tuned value.
AUTO_MAX_OBJECTS = 10
#: ``--min-score`` of ``--max-objects auto`` when none is given (the score of a cut is
#: 1 - λ1 of its graph, see deepspectral.recipes.maskcut; measured in the README's
#: "Discover several objects").
AUTO_MIN_SCORE = 0.7
#: MaskCut's fixed square input (``--fixed_size 480``; the aspect ratio is ignored).
MASKCUT_RESIZE = 480
#: ``discover``'s longest input side when the aspect ratio is kept (MaskCut's scale).
DISCOVER_MAX_SIZE = 480
#: Refinements of ``discover``: none or MaskCut's dense CRF.
DISCOVER_REFINEMENTS = ("none", "crf")
DISCOVER_REFINE = "crf"
#: MaskCut's dense CRF (``maskcut/crf.py``: MAX_ITER 10, POS_W 7, POS_XY_STD 3, Bi_W 10,
#: Bi_XY_STD 50, Bi_RGB_STD 5), in :func:`deepspectral.crf.dense_crf`'s names.
MASKCUT_CRF_PARAMS = {
    "bilateral_weight": 10.0,
    "bilateral_xy_std": 50.0,
    "bilateral_rgb_std": 5.0,
    "gaussian_weight": 7.0,
    "gaussian_xy_std": 3.0,
    "iterations": 10,
}
