"""Feature-extraction benchmark: ``Backbone.extract_batch`` against a bare timm forward pass.

For each precision and batch size: milliseconds per image of

* **bare timm forward** — ``model.forward_features`` on tensors already normalised and
  on the device (images bucketed by size exactly as the library does), nothing else;
* **deepspectral** — ``Backbone.extract_batch`` from the decoded uint8 images: resize,
  crop, normalise, transfer, forward up to the chosen block, features back as numpy;

and their ratio (target: at most 1.10 on CPU). For each reduced precision it also
decomposes every image and reports how many localization boxes equal the fp32 ones.

    python benchmarks/bench_features.py [IMAGES ...] [--images 40] [--device cuda]
        [--precisions fp32 bf16 fp16] [--batch-sizes 1 8] [--weights FILE]
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

from deepspectral import Backbone, decompose, localize
from deepspectral.backbones import save_random_weights
from deepspectral.backbones.extract import _prepare
from deepspectral.data.images import collect_inputs, load_image

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def synchronise(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def bare_forward_ms(backbone: Backbone, images: list, batch_size: int, repeats: int) -> float:
    """Median over ``repeats`` of the per-image ms of ``forward_features`` alone."""
    import torch

    prepared = [_prepare(image, backbone.patch_size, None) for image in images]
    batches = [
        backbone._to_tensor([prepared[i].pixels for i in indices])
        for indices in backbone._buckets(prepared, batch_size)
    ]
    times = []
    with torch.inference_mode(), backbone._autocast():
        for _ in range(repeats):
            synchronise(backbone.device)
            start = time.perf_counter()
            for batch in batches:
                backbone.model.forward_features(batch)
            synchronise(backbone.device)
            times.append((time.perf_counter() - start) / len(images))
    return 1000 * float(np.median(times))


def extract_ms(backbone: Backbone, images: list, batch_size: int, repeats: int) -> tuple[float, list]:
    times, features = [], None
    for _ in range(repeats):
        synchronise(backbone.device)
        start = time.perf_counter()
        features = backbone.extract_batch(images, max_size=None, batch_size=batch_size)
        synchronise(backbone.device)
        times.append((time.perf_counter() - start) / len(images))
    return 1000 * float(np.median(times)), features


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sources", nargs="*", help="image files or folders (default: SOD and COCO-MINI)")
    parser.add_argument("--images", type=int, default=40)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precisions", nargs="+", default=None, help="default: fp32 bf16 (+ fp16 on CUDA)")
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--backbone", default="dino_vits16")
    parser.add_argument("--weights", default=None)
    args = parser.parse_args()

    sources = args.sources or [str(SHARED / "sod" / "images"), str(SHARED / "coco-mini")]
    found = collect_inputs([s for s in sources if Path(s).exists()])
    if not found:
        raise SystemExit("no images found: pass image files or folders")
    order = np.random.default_rng(0).permutation(len(found))[: args.images]
    images = [load_image(found[i].path) for i in sorted(order)]
    weights = args.weights or save_random_weights(Path(tempfile.mkdtemp()) / "random.pth", args.backbone)
    precisions = args.precisions or (["fp32", "bf16", "fp16"] if args.device.startswith("cuda") else ["fp32", "bf16"])

    device_name = args.device
    if args.device.startswith("cuda"):
        import torch

        device_name = torch.cuda.get_device_name(0)
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, device {device_name}; backbone {args.backbone} "
          f"(random weights unless --weights); {len(images)} photos, sizes "
          f"{min(i.shape[:2] for i in images)}..{max(i.shape[:2] for i in images)}, no resize")
    print()
    print("| precision | batch | bare timm forward ms/img | deepspectral extract ms/img | ratio | boxes equal to fp32 |")
    print("|---|---:|---:|---:|---:|---:|")
    reference_boxes = None
    for precision in precisions:
        backbone = Backbone(args.backbone, weights=weights, device=args.device, precision=precision)
        boxes_line = ""
        for batch_size in args.batch_sizes:
            backbone.extract_batch(images[: max(2, batch_size)], max_size=None, batch_size=batch_size)  # warm up
            bare = bare_forward_ms(backbone, images, batch_size, args.repeats)
            ours, features = extract_ms(backbone, images, batch_size, args.repeats)
            if batch_size == args.batch_sizes[0]:
                boxes = [localize(decompose(f, image)) for f, image in zip(features, images)]
                if reference_boxes is None:
                    reference_boxes = boxes
                    boxes_line = "(reference)"
                else:
                    boxes_line = f"{sum(a == b for a, b in zip(boxes, reference_boxes))}/{len(boxes)}"
            print(f"| {precision} | {batch_size} | {bare:.1f} | {ours:.1f} | {ours / bare:.2f} | {boxes_line} |")
            boxes_line = ""


if __name__ == "__main__":
    main()
