"""Whole-pipeline benchmark: images/second of `localize` over real photos, per-stage times, RSS.

Runs the same code path as ``deepspectral localize`` (decode, batched features, eigen-step,
box) on N photos from ../shared/data (cycled when N exceeds what is there), for each
``--configs`` entry ``workers:batch_size`` and each ``--eigen-backend``, without the cache
so every image is computed. Prints one table row per run: images/s end to end, the time
per image of each stage (decode, backbone, eigen-step: summed over images, so stages that
overlap — decoding in loader processes, the eigen-step in worker threads — can add up to
more than the wall time), the resident memory after every ``--every`` images, and how many
boxes equal those of the first backend listed.

With ``--loader-workers N`` (default: 8 on CUDA, 0 on a CPU) the photos are decoded by a
``torch.utils.data.DataLoader`` with N worker processes, ``--chunk`` images at a time, while
the engine works on the previous chunk; with 0 the engine decodes them itself.

    python benchmarks/bench_pipeline.py --images 100 --configs 1:1 2:4
    python benchmarks/bench_pipeline.py --images 30 --configs 1:1 --eigen-backend cpu torch
    python benchmarks/bench_pipeline.py --images 30 --configs 1:4 --eigen-backend cpu torch --method tokencut
    # on a GPU (one short command; ViT-S/16 random weights, VOC-like sizes):
    python benchmarks/bench_pipeline.py --device cuda --images 2000 --configs 1:32 \\
        --eigen-backend torch cpu --loader-workers 12 --every 500
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

from deepspectral import Backbone
from deepspectral.backbones import save_random_weights
from deepspectral.data.images import collect_inputs
from deepspectral.engine import Engine
from deepspectral.tasks.localize import localize

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def rss_mb() -> float:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class Decoded:
    """An engine item whose image was decoded elsewhere (a loader process)."""

    def __init__(self, name: str, image: np.ndarray, seconds: float) -> None:
        self.name, self.image, self.decode_seconds = name, image, seconds

    def load_image(self) -> np.ndarray:
        return self.image


class DecodeDataset:
    """A map-style dataset decoding ``items`` (a torch DataLoader runs it in worker processes)."""

    def __init__(self, items: list) -> None:
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> Decoded:
        start = time.perf_counter()
        image = self.items[index].load_image()
        return Decoded(str(self.items[index].path), image, time.perf_counter() - start)


def decoded_chunks(items: list, loader_workers: int, chunk: int):
    """Lists of :class:`Decoded`, ``chunk`` at a time, decoded by ``loader_workers`` processes."""
    from torch.utils.data import DataLoader

    loader = DataLoader(
        DecodeDataset(items), batch_size=chunk, num_workers=loader_workers, collate_fn=list,
        prefetch_factor=4, persistent_workers=False,
    )  # fmt: skip
    yield from loader


def run(engine: Engine, items: list, loader_workers: int, chunk: int, every: int):
    """Localize every item; return (seconds, per-stage seconds summed, boxes, RSS samples)."""
    stages = {"load": 0.0, "features": 0.0, "eigenvectors": 0.0}
    boxes, rss = [], []
    count = 0
    start = time.perf_counter()
    chunks = decoded_chunks(items, loader_workers, chunk) if loader_workers else [items]
    for part in chunks:
        for result in engine.run(part):
            result.check()
            boxes.append(localize(result.decomposition))
            for stage in ("features", "eigenvectors"):
                stages[stage] += result.seconds.get(stage, 0.0)
            stages["load"] += getattr(result.item, "decode_seconds", result.seconds.get("load", 0.0))
            count += 1
            if count % every == 0:
                rss.append(f"{rss_mb():.0f}")
    return time.perf_counter() - start, stages, boxes, rss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sources", nargs="*", help="image folders (default: SOD, COCO-MINI, DAVIS in ../shared/data)")
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--configs", nargs="+", default=["1:1", "2:4"], help="workers:batch_size pairs")
    parser.add_argument("--eigen-backend", nargs="+", default=["auto"], choices=["auto", "cpu", "torch"],
                        help="eigen-step backends to run (each with every config)")  # fmt: skip
    parser.add_argument("--every", type=int, default=50)
    parser.add_argument("--weights", default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--loader-workers", type=int, default=None,
                        help="decoding processes (torch DataLoader); default 8 on CUDA, 0 (the engine decodes) else")  # fmt: skip
    parser.add_argument("--chunk", type=int, default=64, help="images handed to the engine at a time with a loader")
    parser.add_argument("--order", choices=["mixed", "size"], default="mixed",
                        help="mixed: a seeded shuffle (a stationary mix of sizes); size: sorted by image size, "
                        "so that batches hold images of one size")  # fmt: skip
    parser.add_argument("--warmup", type=int, default=2, help="images run before timing (compilation, allocator)")
    parser.add_argument("--method", choices=["dsm", "tokencut"], default="dsm", help="the recipe (--method of localize)")
    args = parser.parse_args()

    sources = args.sources or [str(SHARED / name) for name in ("sod/images", "coco-mini", "davis2016-val/JPEGImages")]
    found = collect_inputs([s for s in sources if Path(s).exists()])
    if not found:
        raise SystemExit("no images found")
    order = np.random.default_rng(0).permutation(len(found))  # a stationary mix of sizes
    items = [found[order[i % len(found)]] for i in range(args.images)]
    if args.order == "size":
        from PIL import Image

        def size(item):
            with Image.open(item.path) as handle:
                return handle.size

        items.sort(key=size)
    loader_workers = args.loader_workers
    if loader_workers is None:
        loader_workers = 8 if args.device.startswith("cuda") else 0
    weights = args.weights
    if weights is None:
        weights = save_random_weights(Path(tempfile.mkdtemp()) / "vits16_random.pth", "dino_vits16")
    backbone = Backbone("dino_vits16", weights=weights, device=args.device, precision=args.precision)
    device = args.device
    if device.startswith("cuda"):
        import torch

        device = f"{torch.cuda.get_device_name(0)}, {args.precision}"
    import torch

    print(f"machine: {platform.machine()}, {os.cpu_count()} cores (torch threads {torch.get_num_threads()}), "
          f"{platform.system()}, python {platform.python_version()}, torch {torch.__version__}, features on {device}; "
          f"method {args.method}; {args.images} photos ({args.order} order) cycled from {len(found)} "
          f"({', '.join(Path(s).name for s in sources)}); decoding: "
          + (f"DataLoader, {loader_workers} processes, chunks of {args.chunk}" if loader_workers else "in the engine"))
    print()
    print("| eigen backend | workers | batch | images | seconds | images/s | decode ms/img | backbone ms/img "
          "| eigen-step ms/img | same box as first backend | RSS MB at " + ", ".join(
              str(n) for n in range(args.every, args.images + 1, args.every)) + " | peak RSS MB |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|")
    first_boxes = None
    for backend in args.eigen_backend:
        for config in args.configs:
            workers, batch = (int(v) for v in config.split(":"))
            engine = Engine(backbone, batch_size=batch, workers=workers, eigen_backend=backend, method=args.method)
            for result in engine.run(items[: args.warmup]):  # warm-up, outside the timing
                result.check()
            seconds, stages, boxes, rss = run(engine, items, loader_workers, args.chunk, args.every)
            if first_boxes is None:
                first_boxes = boxes
            same = sum(a == b for a, b in zip(first_boxes, boxes))
            n = len(items)
            print(f"| {backend} ({engine.eigen_backend}) | {workers} | {batch} | {n} | {seconds:.1f} | {n / seconds:.2f} | "
                  f"{1000 * stages['load'] / n:.1f} | {1000 * stages['features'] / n:.1f} | "
                  f"{1000 * stages['eigenvectors'] / n:.1f} | {same}/{n} | {', '.join(rss)} | {peak_rss_mb():.0f} |",
                  flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
