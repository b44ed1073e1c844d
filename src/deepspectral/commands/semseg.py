"""``deepspectral semseg fit / train / predict``: unsupervised semantic segmentation.

::

    deepspectral semseg fit     IMAGES... -o run/ [--clusters 20] [--segments 15] [--seed 0]
    deepspectral semseg train   run/ [--steps 2000] [--batch-size 144] [--device cuda]
    deepspectral semseg predict run/ IMAGES... -o out/    # clustering, or the trained model

Nothing heavy is imported at module level (``--help`` stays fast).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

__all__ = ["register"]

EXIT_FAILED_IMAGES = 1
EXIT_USAGE = 2


def _error(message: str) -> None:
    print(f"deepspectral semseg: error: {message}", file=sys.stderr)


def register(commands, common, formatter) -> None:
    """Add the ``semseg`` command family to the ``deepspectral`` subparsers."""
    from ..cli import _common_parser, device_type, non_negative_int, positive_int
    from ..tasks import semantic

    semseg = commands.add_parser(
        "semseg",
        formatter_class=formatter,
        help="unsupervised semantic segmentation of a dataset (fit / train / predict)",
        description="Paper Sec. 3.5: per-image spectral segments, their crops' CLS features clustered "
        "over the dataset, label maps (0 = background, 1..K = clusters); then optional self-training.",
    )
    sub = semseg.add_subparsers(dest="semseg_command", metavar="STEP", required=True)

    # a fresh copy of the shared options, so that changing a default here changes it nowhere else
    fit_common = _common_parser()
    fit = sub.add_parser(
        "fit",
        parents=[fit_common],
        formatter_class=formatter,
        help="segment every image, cluster the segments over the dataset, write the run folder",
        description="Writes OUT/labels/<name>.png (indexed PNG label maps at the original size, 0 = "
        "background, 1..K = clusters, VOC palette), OUT/centroids.npy, OUT/semseg.json (settings, "
        "per-stage timings, peak memory), OUT/images.json, OUT/clusters.jpg (sample crops per "
        "cluster) and OUT/segments/ (per-image cache; a rerun with the same settings resumes).",
    )
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
    # 16 = the constant eigenvector + the 15 the per-image k-means uses (supplement)
    fit.set_defaults(run=_run_fit, n_eigenvectors=semantic.EIGENVECTORS + 1)

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
    train.add_argument("--lr", type=float, default=1e-4, help="initial learning rate (linear decay to 0)")
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
    predict.add_argument("-o", "--out", required=True, type=Path, metavar="OUT")
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
    from ..cli import backbone_from_args, batch_status, check_weights_and_out
    from ..data.images import collect_inputs
    from ..tasks import semantic

    check_weights_and_out(args)  # UsageError: reported by cli.main
    try:
        settings = semantic.SemanticSettings(
            method=args.method, segments=args.segments, adaptive_segments=args.adaptive_segments,
            eigenvectors=max(1, args.n_eigenvectors - 1), background=args.background, clusters=args.clusters,
            seed=args.seed, expand_patches=args.expand, crop_size=args.crop_size, max_size=args.max_size or None,
            knn_lambda=args.knn_lambda, backbone=args.backbone,
            weights=None if args.weights is None else str(args.weights.resolve()),
            block=args.block, feature=args.feature,
        )
        inputs = collect_inputs(args.inputs)
    except ValueError as error:
        _error(str(error))
        return EXIT_USAGE
    source = backbone_from_args(args)  # UsageError: reported by cli.main
    return batch_status(
        lambda: semantic.fit(inputs, args.out, source=source, settings=settings, verbose=not args.quiet, figure=args.figure),
        also=(ValueError,),
        interrupted="interrupted (rerun the same command to resume)",
        report=_error,
    )


def _run_train(args: argparse.Namespace) -> int:
    from ..backbones import WeightsUnavailableError
    from ..tasks import selftrain
    from ..tasks.semantic import IMAGES_FILE

    if not (args.run_dir / IMAGES_FILE).is_file():
        _error(f"RUN: '{args.run_dir}' is not a fitted run (no {IMAGES_FILE}); run `deepspectral semseg fit` first")
        return EXIT_USAGE
    hub = args.weights is not None and args.weights.startswith(selftrain.HUB_PREFIXES)
    if args.weights not in (None, "random") and not hub and not Path(args.weights).is_file():
        _error(f"--weights: no such file: '{args.weights}' (or pass 'random', or a hub name timm/... / hf-hub:...)")
        return EXIT_USAGE
    try:
        settings = selftrain.TrainSettings(
            arch=args.arch, steps=args.steps, batch_size=args.batch_size, lr=args.lr, crop_size=args.crop_size,
            seed=args.seed,
            weights=args.weights if (args.weights in (None, "random") or hub) else str(Path(args.weights).resolve()),
            amp=args.amp, checkpoint_every=args.checkpoint_every, workers=args.workers,
        )
        losses = selftrain.train(args.run_dir, settings=settings, device=args.device, verbose=not args.quiet)
    except (WeightsUnavailableError, ImportError, ValueError, FileNotFoundError) as error:
        _error(str(error))
        return EXIT_USAGE
    except KeyboardInterrupt:
        _error("interrupted (rerun the same command to resume from the last checkpoint)")
        return 130
    if not args.quiet:
        print(f"semseg train: {len(losses)} steps, final loss {losses[-1]:.4f}; model in "
              f"{args.run_dir / selftrain.MODEL_DIR / selftrain.MODEL_FILE}", flush=True)
    return 0


def _overlay(image, labels):
    import numpy as np

    from ..tasks.semantic import PALETTE

    colours = PALETTE[labels].astype(np.float32)
    blend = np.where(labels[..., None] > 0, 0.45 * image + 0.55 * colours, image.astype(np.float32))
    return blend.astype(np.uint8)


def _run_predict(args: argparse.Namespace) -> int:
    from ..backbones import WeightsUnavailableError
    from ..data.images import collect_inputs, load_image
    from ..cli import check_weights_and_out, run_images
    from ..runner import save_image_atomic
    from ..tasks import semantic

    check_weights_and_out(args)  # UsageError: reported by cli.main
    try:
        run = semantic.load_run(args.run_dir, device=args.device, weights=args.weights, use=args.use)
        if args.backbone is not None and args.backbone != run.settings.backbone:
            raise ValueError(
                f"--backbone: the run was fitted with '{run.settings.backbone}' (its centroids live in that "
                f"feature space), got '{args.backbone}'"
            )
        inputs = collect_inputs(args.inputs)
        if run.use == "clusters":
            run.source  # load the backbone now: a missing weights file is a usage error, not a per-image one
    except WeightsUnavailableError as error:
        _error(str(error))
        return EXIT_USAGE
    except (ImportError, ValueError, OSError, RuntimeError) as error:
        _error(str(error))
        return EXIT_USAGE

    def process(item) -> None:
        image = load_image(item.path)
        labels = run.predict(image)
        name = Path(*item.relative.parts)
        semantic.save_label_png(args.out / name.with_name(name.name + ".png"), labels)
        if args.save_viz:
            save_image_atomic(args.out / name.with_name(name.name + ".overlay.jpg"), _overlay(image, labels), quality=90)

    return run_images(inputs, process, out_dir=args.out, desc="semseg predict", quiet=args.quiet)
