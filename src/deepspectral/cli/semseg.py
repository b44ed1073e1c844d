"""``deepspectral semseg fit / train / predict``: unsupervised semantic segmentation.

::

    deepspectral semseg fit     IMAGES... -o run/ [--clusters 20] [--segments 15] [--seed 0]
    deepspectral semseg train   run/ [--steps 2000] [--batch-size 144] [--device cuda]
    deepspectral semseg predict run/ IMAGES... -o out/    # clustering, or the trained model

Nothing heavy is imported at module level (``--help`` stays fast).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import EXIT_INTERRUPTED, EXIT_OK, UsageError, batch_status, report_error
from .outputs import local_out_folder
from .options import (
    add_backbone,
    add_cluster,
    add_decomposition,
    add_engine,
    add_inputs,
    backbone_from_args,
    check_cluster_args,
    check_weights_and_out,
    cluster_engine_from_args,
    device_type,
    store_from_args,
    inputs_from_args,
    non_negative_int,
    output_path,
    positive_int,
    positive_float,
)

__all__ = ["register"]

#: Weight of the label colour in ``predict --save-viz`` overlays (the image keeps the rest):
#: a choice by eye when the command was written, not a measured value. It is the same
#: quantity as :func:`deepspectral.viz.overlay_mask`'s ``alpha`` (default 0.5, one mask,
#: with an outline); kept at 0.55 so that the overlays stay byte-identical.
OVERLAY_ALPHA = 0.55


def register(commands, formatter) -> None:
    """Add the ``semseg`` command family (see :data:`deepspectral.cli.COMMAND_MODULES`)."""
    from ..tasks import semantic

    semseg = commands.add_parser(
        "semseg",
        formatter_class=formatter,
        help="unsupervised semantic segmentation of a dataset (fit / train / predict)",
        description="Paper Sec. 3.5: per-image spectral segments, their crops' CLS features clustered "
        "over the dataset, label maps (0 = background, 1..K = clusters); then optional self-training.",
    )
    sub = semseg.add_subparsers(dest="semseg_command", metavar="STEP", required=True)

    fit = sub.add_parser(
        "fit",
        formatter_class=formatter,
        help="segment every image, cluster the segments over the dataset, write the run folder",
        description="Writes OUT/labels/<name>.png (indexed PNG label maps at the original size, 0 = "
        "background, 1..K = clusters, VOC palette), OUT/centroids.npy, OUT/semseg.json (settings, "
        "per-stage timings, peak memory), OUT/images.json, OUT/clusters.jpg (sample crops per "
        "cluster) and OUT/segments/ (per-image cache; a rerun with the same settings resumes).",
    )
    add_inputs(fit)
    add_backbone(fit)
    # 16 = the constant eigenvector + the 15 the per-image k-means uses (supplement)
    add_decomposition(fit, n_eigenvectors=semantic.EIGENVECTORS + 1)
    add_engine(fit)
    add_cluster(fit)
    group = fit.add_argument_group("semantic segmentation")
    group.add_argument("--method", choices=semantic.METHODS, default="spectral",
                       help="spectral: the paper's method; cluster-patch / cluster-seg: the baselines of Table 4 "
                       "(no background label; use --clusters 21 for VOC)")
    group.add_argument("--clusters", type=positive_int, default=semantic.CLUSTERS,
                       help="K of the dataset-level k-means (background is label 0, never a cluster); "
                       "more than the classes = over-clustering (evaluate with majority vote)")
    group.add_argument("--segments", type=positive_int, default=semantic.SEGMENTS,
                       help="segments per image (k of the per-image k-means)")
    group.add_argument("--adaptive-segments", action="store_true",
                       help="per image, the number of segments at the largest eigengap (at most --segments)")
    group.add_argument("--background", choices=semantic.BACKGROUND_RULES, default="largest",
                       help="background segment: the largest (the paper) or the one touching the border most "
                       "(the reference code)")
    group.add_argument("--seed", type=non_negative_int, default=0, help="seeds every k-means")
    group.add_argument("--crop-size", type=non_negative_int, default=semantic.CROP_SIZE,
                       help="segment crops are resized to this square before the backbone (0: as cropped)")
    group.add_argument("--expand", type=non_negative_int, default=semantic.BOX_EXPANSION_PATCHES,
                       help="patches added around each segment's box before cropping")
    group.add_argument("--no-figure", dest="figure", action="store_false", help="do not write clusters.jpg")
    fit.set_defaults(run=_run_fit)

    train = sub.add_parser(
        "train",
        formatter_class=formatter,
        help="self-training: a DeepLab-style network on the run's pseudo-labels",
        description="Trains a dilated ResNet + ASPP head on RUN/labels with the supplement's recipe "
        "(Adam, lr 1e-4 linearly to 0, 2000 steps, batch 144, random 224 crops, flips). Writes "
        "RUN/selftrain/checkpoint.pt (atomically; rerunning resumes), model.pt and train.json.",
    )
    train.add_argument("run_dir", type=Path, metavar="RUN", help="folder written by `semseg fit`")
    train.add_argument("--steps", type=positive_int, default=2000)
    train.add_argument("--batch-size", type=positive_int, default=144)
    train.add_argument("--lr", type=positive_float, default=1e-4, help="initial learning rate (linear decay to 0)")
    train.add_argument("--crop-size", type=positive_int, default=224, help="random square crops")
    train.add_argument("--seed", type=non_negative_int, default=0)
    train.add_argument("--arch", choices=("resnet50", "resnet18", "resnet10t"), default="resnet50",
                       help="backbone of the network (DINO weights exist for resnet50)")
    train.add_argument("--weights", default=None, metavar="FILE|random",
                       help="backbone weights: a ResNet state dict (e.g. dino_resnet50_pretrain.pth) for offline "
                       "use, a hub name (timm/<name> or hf-hub:<repo>), 'random' to train from scratch; default: download "
                       "the DINO ResNet-50")
    train.add_argument("--device", type=device_type, default="auto", metavar="{auto,cpu,cuda,cuda:N,mps}")
    train.add_argument("--no-amp", dest="amp", action="store_false", help="no mixed precision on CUDA")
    train.add_argument("--checkpoint-every", type=positive_int, default=100, help="steps between checkpoints")
    train.add_argument("--workers", type=positive_int, default=4, help="threads loading images")
    train.add_argument("-q", "--quiet", action="store_true")
    train.set_defaults(run=_run_train)

    predict = sub.add_parser(
        "predict",
        formatter_class=formatter,
        help="label new images with a fitted (or trained) run",
        description="Writes OUT/<name>.png, indexed label maps like those of `fit` (same labels). Uses "
        "the trained model when RUN has one (see --use), else the run's backbone, settings and centroids.",
    )
    predict.add_argument("run_dir", type=Path, metavar="RUN", help="folder written by `semseg fit`")
    predict.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders and .txt lists")
    predict.add_argument("-o", "--out", required=True, type=local_out_folder, metavar="OUT")
    predict.add_argument("--use", choices=("auto", "clusters", "model"), default="auto",
                         help="auto: the trained model when there is one, else the clustering")
    predict.add_argument("--backbone", default=None, metavar="NAME",
                         help="must match the backbone recorded by fit (default: the recorded one)")
    predict.add_argument("--weights", type=Path, default=None, metavar="FILE",
                         help="weights file of the recorded backbone (default: the one recorded by fit)")
    predict.add_argument("--device", type=device_type, default="auto", metavar="{auto,cpu,cuda,cuda:N,mps}")
    predict.add_argument("--save-viz", action="store_true", help="also write OUT/<name>.overlay.jpg")
    predict.add_argument("-q", "--quiet", action="store_true")
    predict.set_defaults(run=_run_predict)


def _run_fit(args: argparse.Namespace) -> int:
    from ..tasks import semantic

    if isinstance(args.out, str):  # -o URL (see cli.outputs.out_folder)
        raise UsageError(
            f"-o: '{args.out}': semseg fit cannot write to a URL: its dataset stages (k-means, label maps) read "
            "every image's segments back from the run folder; give a local or shared folder"
        )
    check_weights_and_out(args)
    check_cluster_args(args)
    try:
        settings = semantic.SemanticSettings(
            method=args.method, segments=args.segments, adaptive_segments=args.adaptive_segments,
            eigenvectors=args.n_eigenvectors - 1, background=args.background, clusters=args.clusters,
            seed=args.seed, expand_patches=args.expand, crop_size=args.crop_size, max_size=args.max_size or None,
            knn_lambda=args.knn_lambda, backbone=args.backbone,
            weights=None if args.weights is None else str(args.weights.resolve()),
            block=args.block, feature=args.feature, precision=args.precision,
        )  # fmt: skip
    except ValueError as error:
        raise UsageError(str(error)) from None
    inputs = inputs_from_args(args)
    backbone = backbone_from_args(args)
    # the cache of features and decompositions is the one the other commands use
    store = store_from_args(args, backbone, paths=[item.path for item in inputs])
    return batch_status(
        lambda: semantic.fit(
            inputs, args.out, source=backbone, settings=settings, store=store, batch_size=args.batch_size,
            workers=args.workers, verbose=not args.quiet, figure=args.figure, eigen_backend=args.eigen_backend,
            runner=lambda engine: cluster_engine_from_args(args, engine),
        )
    )


def _run_train(args: argparse.Namespace) -> int:
    from ..backbones import WeightsUnavailableError
    from ..tasks import selftrain
    from ..tasks.semantic.rundir import IMAGES_FILE, model_path

    if not (args.run_dir / IMAGES_FILE).is_file():
        raise UsageError(f"RUN: '{args.run_dir}' is not a fitted run (no {IMAGES_FILE}); run `deepspectral semseg fit` first")
    hub = args.weights is not None and args.weights.startswith(selftrain.HUB_PREFIXES)
    if args.weights not in (None, "random") and not hub and not Path(args.weights).is_file():
        raise UsageError(f"--weights: no such file: '{args.weights}' (or pass 'random', or a hub name timm/... / hf-hub:...)")
    try:
        settings = selftrain.TrainSettings(
            arch=args.arch, steps=args.steps, batch_size=args.batch_size, lr=args.lr, crop_size=args.crop_size,
            seed=args.seed,
            weights=args.weights if (args.weights in (None, "random") or hub) else str(Path(args.weights).resolve()),
            amp=args.amp, checkpoint_every=args.checkpoint_every, workers=args.workers,
        )
        losses = selftrain.train(args.run_dir, settings=settings, device=args.device, verbose=not args.quiet)
    except (WeightsUnavailableError, ImportError, ValueError, FileNotFoundError) as error:
        raise UsageError(str(error)) from None
    except KeyboardInterrupt:
        report_error("interrupted (rerun the same command to resume from the last checkpoint)")
        return EXIT_INTERRUPTED
    if not args.quiet:
        print(f"semseg train: {len(losses)} steps, final loss {losses[-1]:.4f}; model in "
              f"{model_path(args.run_dir)}", flush=True)
    return EXIT_OK


def _overlay(image, labels):
    """``(H, W, 3) uint8`` image with every labelled pixel (label > 0) blended with its
    palette colour, weight :data:`OVERLAY_ALPHA` (values truncated to uint8)."""
    import numpy as np

    from ..tasks.semantic.rundir import PALETTE

    # 1 - 0.55 is 0.44999999999999996 in floating point: rounded, the weight is the 0.45 the
    # overlays were made with (truncation to uint8 differs on 1024 of 65536 values otherwise)
    image_weight = round(1.0 - OVERLAY_ALPHA, 6)
    colours = PALETTE[labels].astype(np.float32)
    blend = np.where(labels[..., None] > 0, image_weight * image + OVERLAY_ALPHA * colours, image.astype(np.float32))
    return blend.astype(np.uint8)


def _run_predict(args: argparse.Namespace) -> int:
    from ..backbones import WeightsUnavailableError
    from ..engine import run_batch
    from ..files import save_image_atomic
    from ..tasks import semantic

    check_weights_and_out(args)
    try:
        run = semantic.load_run(args.run_dir, device=args.device, weights=args.weights, use=args.use)
        if args.backbone is not None and args.backbone != run.settings.backbone:
            raise ValueError(
                f"--backbone: the run was fitted with '{run.settings.backbone}' (its centroids live in that "
                f"feature space), got '{args.backbone}'"
            )
        run.prepare()  # load the backbone / network now: a missing or damaged file is a usage error, not a per-image one
    except (WeightsUnavailableError, ImportError, ValueError, OSError, RuntimeError) as error:
        raise UsageError(str(error)) from None
    inputs = inputs_from_args(args)

    def work(item) -> None:
        image = item.load_image()
        labels = run.predict(image)
        semantic.save_label_png(output_path(args.out, item, ".png"), labels)
        if args.save_viz:
            save_image_atomic(output_path(args.out, item, ".overlay.jpg"), _overlay(image, labels), quality=90)

    return batch_status(lambda: run_batch(inputs, work, out_dir=args.out, desc="semseg predict", verbose=not args.quiet))
