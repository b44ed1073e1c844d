"""The options commands share, validated once, and the objects built from them.

Each command adds the option groups it uses (:func:`add_inputs`, :func:`add_backbone`,
:func:`add_decomposition`, :func:`add_engine`), so ``--help`` shows only options that
change what it does; :func:`backbone_from_args`, :func:`inputs_from_args` and
:func:`engine_from_args` turn them into a backbone, the input items and the engine.
Only ``argparse`` and the defaults are imported at module level (``--help`` stays fast).
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from pathlib import Path

from .. import defaults
from .common import UsageError
from .outputs import out_folder

__all__ = [
    "number_type",
    "positive_int",
    "non_negative_int",
    "non_negative_float",
    "positive_float",
    "device_type",
    "add_inputs",
    "add_backbone",
    "add_decomposition",
    "add_engine",
    "add_method",
    "method_from_args",
    "add_cluster",
    "check_weights_and_out",
    "require_crf",
    "backbone_from_args",
    "inputs_from_args",
    "store_from_args",
    "engine_from_args",
    "check_cluster_args",
    "cluster_engine_from_args",
    "output_path",
]


def number_type(kind: type = int, minimum: float = 0, *, exclusive: bool = False):
    """An argparse ``type``: a finite ``int`` or ``float`` at least ``minimum`` (greater than
    it when ``exclusive``), with a clear message otherwise."""
    noun = "an integer" if kind is int else "a number"
    relation = ">" if exclusive else ">="

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {noun}, got {text!r}") from None
        if not math.isfinite(value) or value < minimum or (exclusive and value == minimum):
            raise argparse.ArgumentTypeError(f"expected {noun} {relation} {minimum}, got {text!r}")
        return value

    parse.__name__ = f"{kind.__name__} {relation} {minimum}"  # how argparse names it in errors
    return parse


positive_int = number_type(int, 1)
non_negative_int = number_type(int, 0)
non_negative_float = number_type(float, 0)
positive_float = number_type(float, 0, exclusive=True)


def device_type(text: str) -> str:
    """An argparse ``type``: ``auto``, ``cpu``, ``mps``, ``cuda`` or ``cuda:N``."""
    if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", text):
        raise argparse.ArgumentTypeError(f"expected auto, cpu, cuda, cuda:N or mps, got {text!r}")
    return text


# ---------------------------------------------------------------------------------------
# Option groups
# ---------------------------------------------------------------------------------------


def add_inputs(parser: argparse.ArgumentParser) -> None:
    """``INPUT...``, ``-o/--out``, ``-q/--quiet``."""
    io = parser.add_argument_group("inputs and outputs")
    io.add_argument(
        "inputs",
        nargs="+",
        metavar="INPUT",
        help="image files, folders (searched recursively) and .txt files listing paths (one a line)",
    )
    io.add_argument(
        "-o", "--out", required=True, type=out_folder, metavar="OUT",
        help="output folder (created if missing); eigs, localize, segment, matte, discover: also an fsspec URL "
        "(s3://bucket/run/, gs://..., file:///...; pip install \"deepspectral[cloud]\" and the protocol's package)",
    )  # fmt: skip
    io.add_argument("-q", "--quiet", action="store_true", help="no progress bar, no summary line")


def add_device(group) -> None:
    """``--device``."""
    group.add_argument(
        "--device",
        type=device_type,
        default="auto",
        metavar="{auto,cpu,cuda,cuda:N,mps}",
        help="where the backbone runs (auto: CUDA when available, else the CPU)",
    )


def add_backbone(parser: argparse.ArgumentParser) -> None:
    """``--backbone``, ``--weights``, ``--device``, ``--block``, ``--feature``,
    ``--precision``, ``--max-size``."""
    from ..backbones import BACKBONES  # a registry of names: no torch imported

    names = sorted(BACKBONES)
    model = parser.add_argument_group("backbone")
    model.add_argument(
        "--backbone", choices=names, default=defaults.BACKBONE, metavar="NAME",
        help="feature extractor, one of: " + ", ".join(names),
    )  # fmt: skip
    model.add_argument(
        "--weights",
        type=Path,
        default=None,
        metavar="FILE",
        help="checkpoint file to load instead of downloading the pretrained weights "
        "(a DINO .pth as published, or a timm / safetensors state dict); use it offline",
    )
    add_device(model)
    model.add_argument("--block", type=int, default=defaults.BLOCK, help="transformer block the features come from")
    model.add_argument("--feature", choices=defaults.FEATURE_KINDS, default=defaults.FEATURE, help="which features of that block")
    model.add_argument(
        "--precision",
        choices=defaults.PRECISIONS,
        default=defaults.PRECISION,
        help="arithmetic of the backbone (fp16: CUDA only; mixed precision can move boxes slightly)",
    )
    model.add_argument(
        "--max-size",
        type=non_negative_int,
        default=defaults.MAX_SIZE,
        help="longest image side (pixels) used for the features and eigenvectors; larger images are "
        "downscaled and results mapped back to the original pixels (0: no limit)",
    )


def add_decomposition(parser: argparse.ArgumentParser, *, n_eigenvectors: int = defaults.N_EIGENVECTORS) -> None:
    """``--knn-lambda``, ``--n-eigenvectors`` (with this command's default), ``--eigen-backend``."""
    spectral = parser.add_argument_group("spectral decomposition")
    spectral.add_argument(
        "--knn-lambda",
        type=non_negative_float,
        default=defaults.KNN_LAMBDA,
        help="weight of the colour (KNN-matting) affinity; 0 uses the features only",
    )
    spectral.add_argument(
        "--n-eigenvectors",
        type=number_type(int, 2),
        default=n_eigenvectors,
        help="eigenvectors computed, the constant one included (at least 2: the tasks need the second)",
    )
    spectral.add_argument(
        "--eigen-backend",
        choices=defaults.EIGEN_BACKENDS,
        default=defaults.EIGEN_BACKEND,
        help="where the affinity and eigensolver run: cpu (numba/scipy), torch (on the backbone's device, "
        "images of one size batched), auto (torch when the backbone is on a CUDA GPU, else cpu)",
    )


def add_method(parser: argparse.ArgumentParser, *, scores: bool = True) -> None:
    """``--method``, ``--tau``, ``--eps`` and (``scores``) ``--min-score``; checked by
    :func:`method_from_args`."""
    recipe = parser.add_argument_group("recipe")
    recipe.add_argument(
        "--method",
        choices=defaults.METHOD_NAMES,
        default=defaults.METHOD,
        help="spectral recipe: dsm (Deep Spectral Methods, the paper's) or tokencut (TokenCut: binary graph "
        "of the patch keys, cut at the mean of the second eigenvector)",
    )
    recipe.add_argument(
        "--tau",
        type=number_type(float, -1),  # and < 1: checked with the recipe (method_from_args)
        default=None,
        help=f"tokencut only: cosine above which two patches are linked (default {defaults.TOKENCUT_TAU})",
    )
    recipe.add_argument(
        "--eps",
        type=positive_float,  # and < 1: checked with the recipe
        default=None,
        help=f"tokencut only: weight of the other pairs of patches (default {defaults.TOKENCUT_EPS:g})",
    )
    if scores:
        recipe.add_argument(
            "--min-score",
            type=non_negative_float,  # and <= 1: checked in method_from_args
            default=defaults.MIN_SCORE,
            help="report 'no object' (a null box, an empty mask) when the score (the relative eigengap "
            "1 - l1/l2 of the decomposition, in [0, 1]) is below this",
        )


def method_from_args(args: argparse.Namespace) -> tuple[str, dict]:
    """The recipe name and its parameters from :func:`add_method`'s options; a
    :class:`UsageError` for an option that does not apply to the chosen recipe or a bad value."""
    from ..recipes import get_recipe

    method = getattr(args, "method", defaults.METHOD)
    params = {name: getattr(args, name, None) for name in ("tau", "eps")}
    given = {name: value for name, value in params.items() if value is not None}
    if method == defaults.METHOD:
        if given:
            raise UsageError(f"--{next(iter(given))}: applies to --method tokencut only")
        recipe_params: dict = {}
    else:
        for option, default in (("knn_lambda", defaults.KNN_LAMBDA), ("n_eigenvectors", defaults.N_EIGENVECTORS)):
            if getattr(args, option, default) != default:
                raise UsageError(f"--{option.replace('_', '-')}: applies to --method dsm only")
        try:
            recipe_params = get_recipe(method).resolve(given)
        except ValueError as error:
            name, _, message = str(error).partition(": ")
            raise UsageError(f"--{name}: {message}") from None
    min_score = getattr(args, "min_score", defaults.MIN_SCORE)
    if not (math.isfinite(min_score) and 0 <= min_score <= 1):
        raise UsageError(f"--min-score: expected a number in [0, 1], got {min_score!r}")
    return method, recipe_params


def add_engine(parser: argparse.ArgumentParser) -> None:
    """``--batch-size``, ``--workers``, ``--cache``, ``--no-cache``."""
    speed = parser.add_argument_group("speed and caching")
    speed.add_argument("--batch-size", type=positive_int, default=defaults.BATCH_SIZE, help="images per backbone forward pass")
    speed.add_argument(
        "--workers",
        type=positive_int,
        default=defaults.WORKERS,
        help="threads for the eigen-step; 2 or more overlap it with the backbone's next batch",
    )
    speed.add_argument(
        "--cache",
        type=Path,
        default=None,
        metavar="DIR",
        help="cache of features and eigenvectors, keyed by image content and settings; a rerun "
        "resumes from it (default: OUT/.cache)",
    )
    speed.add_argument("--no-cache", action="store_true", help="compute everything, cache nothing")


def add_cluster(parser: argparse.ArgumentParser) -> None:
    """``--engine``, ``--ray-address``, ``--ray-actors`` (commands whose per-image work runs
    anywhere: see :mod:`deepspectral.engine_ray`)."""
    cluster = parser.add_argument_group("cluster")
    cluster.add_argument(
        "--engine",
        choices=defaults.ENGINES,
        default=defaults.ENGINE,
        help="local: this process; ray: a Ray cluster (pip install \"deepspectral[ray]\"), same outputs",
    )
    cluster.add_argument(
        "--ray-address",
        default=None,
        metavar="ADDR",
        help="with --engine ray: the cluster to join ('auto': the one `ray start` runs on this machine; "
        "'ray://HOST:10001'); default: start a local Ray for this run",
    )
    cluster.add_argument(
        "--ray-actors",
        type=positive_int,
        default=None,
        metavar="N",
        help="with --engine ray: backbone actors (default: one per GPU of the cluster, else 1)",
    )


# ---------------------------------------------------------------------------------------
# Objects built from the options
# ---------------------------------------------------------------------------------------


def check_weights_and_out(args: argparse.Namespace, *, url: bool = False) -> None:
    """Raise :class:`UsageError` when ``--weights`` names no file, or when ``-o/--out`` or
    ``--cache`` cannot be used as a folder to write in (a file, a read-only folder); each
    option may be absent or None. The folders are created when missing (the run removes
    the temporary files a killed run left there: :func:`deepspectral.engine.run_batch`,
    :class:`deepspectral.store.Store`). ``-o`` may be an fsspec URL when ``url``
    (:func:`deepspectral.cli.outputs.use_url_out`: checked, and ``args.out`` becomes its local
    staging folder), else a URL is refused."""
    from ..errors import describe_os_error
    from ..files import check_writable_folder
    from .outputs import URL_COMMANDS, use_url_out

    weights = getattr(args, "weights", None)
    if isinstance(weights, Path) and not weights.is_file():
        raise UsageError(f"--weights: no such file: '{weights}'")
    if isinstance(getattr(args, "out", None), str):  # a URL (see out_folder)
        if not url:
            raise UsageError(
                f"-o: '{args.out}': only {', '.join(URL_COMMANDS)} write to a URL; give a local (or shared) folder"
            )
        use_url_out(args)
    folders = {"-o/--out": getattr(args, "out", None)}
    if not getattr(args, "no_cache", False):
        folders["--cache"] = getattr(args, "cache", None)
    for option, folder in folders.items():
        if folder is None:
            continue
        if folder.exists() and not folder.is_dir():
            raise UsageError(f"{option}: '{folder}' exists and is not a folder")
        try:
            check_writable_folder(folder)
        except OSError as error:
            raise UsageError(f"{option}: cannot write in the folder: {describe_os_error(error)}") from None


def require_crf() -> None:
    """Raise :class:`UsageError` (naming the pip extra) when the dense CRF is not installed,
    before any image is processed."""
    from ..crf import check_crf_available

    try:
        check_crf_available()
    except ImportError as error:
        raise UsageError(str(error)) from None


def backbone_from_args(args: argparse.Namespace):
    """The :class:`~deepspectral.Backbone` the backbone options ask for; a failure to load
    it (no weights offline, bad file, ...) is a :class:`UsageError`."""
    from ..backbones import Backbone, WeightsUnavailableError

    try:
        return Backbone(
            args.backbone,
            weights=args.weights,
            device=args.device,
            block=args.block,
            feature=args.feature,
            precision=args.precision,
        )
    except WeightsUnavailableError as error:
        raise UsageError(str(error)) from None
    except (ImportError, ValueError, OSError, RuntimeError) as error:
        raise UsageError(f"cannot load the backbone '{args.backbone}': {error}") from None


def inputs_from_args(args: argparse.Namespace) -> list:
    """The images named by ``args.inputs`` (see :func:`deepspectral.data.images.collect_inputs`);
    a missing path is a :class:`UsageError`."""
    from ..data.images import collect_inputs

    try:
        return collect_inputs(args.inputs)
    except ValueError as error:
        raise UsageError(str(error)) from None


def store_from_args(args: argparse.Namespace, backbone, *, paths: list | None = None, n_eigenvectors: int | None = None):
    """The cache of ``--cache`` / ``--no-cache`` (default ``OUT/.cache``), or None; its
    expected disk use for the image files ``paths`` is printed unless quiet."""
    from ..engine import default_cache_dir, estimate_cache_bytes
    from ..store import Store

    if args.no_cache:
        return None
    cache_dir = args.cache or default_cache_dir(args.out)
    try:
        store = Store(cache_dir)
    except OSError as error:
        raise UsageError(f"--cache: cannot use '{cache_dir}' as the cache folder: {error}") from None
    if not args.quiet and paths:
        need = estimate_cache_bytes(
            paths,
            patch_size=backbone.patch_size,
            embed_dim=backbone.embed_dim,
            n_eigenvectors=args.n_eigenvectors if n_eigenvectors is None else n_eigenvectors,
            max_size=args.max_size or None,
        )
        print(f"cache: {cache_dir} (up to about {need / 1e6:.0f} MB for {len(paths)} images)", file=sys.stderr)
    return store


def engine_from_args(
    args: argparse.Namespace,
    backbone,
    *,
    paths: list | None = None,
    n_eigenvectors: int | None = None,
    decompose: bool = True,
    keep_features: bool = False,
    use: str = "boxes",
):
    """The :class:`~deepspectral.engine.Engine` of the decomposition and engine options,
    with its cache (:func:`store_from_args`); the recipe options (:func:`add_method`) when
    the command has them, ``use`` saying whether its results are boxes or masks."""
    from ..engine import Engine

    n_eigenvectors = args.n_eigenvectors if n_eigenvectors is None else n_eigenvectors
    method, method_params = method_from_args(args)
    settings = dict(
        max_size=args.max_size or None,
        knn_lambda=args.knn_lambda,
        n_eigenvectors=n_eigenvectors,
        decompose=decompose,
        keep_features=keep_features,
        batch_size=args.batch_size,
        workers=args.workers,
        eigen_backend=args.eigen_backend,
        method=method,
        method_params=method_params or None,
        use=use,
    )
    try:
        engine = Engine(backbone, **settings)
    except ValueError as error:  # settings that do not go together (e.g. a recipe and a backend)
        raise UsageError(str(error)) from None
    engine.store = store_from_args(args, backbone, paths=paths, n_eigenvectors=n_eigenvectors)
    return engine


def cluster_engine_from_args(args: argparse.Namespace, engine):
    """``engine`` itself with ``--engine local``, else a
    :class:`~deepspectral.engine_ray.RayEngine` around it; Ray options without
    ``--engine ray``, or Ray not installed, are a :class:`UsageError`."""
    check_cluster_args(args)
    if getattr(args, "engine", defaults.ENGINE) == "local":
        return engine
    from ..engine_ray import RayEngine

    return RayEngine(engine, address=args.ray_address, actors=args.ray_actors, device=args.device)


def check_cluster_args(args: argparse.Namespace) -> None:
    """Raise :class:`UsageError` for Ray options without ``--engine ray``, or ``--engine ray``
    without Ray installed (call it before loading anything)."""
    if getattr(args, "engine", defaults.ENGINE) == "local":
        for option in ("ray_address", "ray_actors"):
            if getattr(args, option, None) is not None:
                raise UsageError(f"--{option.replace('_', '-')}: only with --engine ray")
        return
    from ..engine_ray import require_ray

    try:
        require_ray()
    except ImportError as error:
        raise UsageError(f"--engine ray: {error}") from None


def output_path(out_dir: Path, item, suffix: str) -> Path:
    """``OUT/<the item's relative path><suffix>`` (output names keep input sub-folders)."""
    return out_dir.joinpath(*item.relative.parts[:-1], item.relative.name + suffix)
