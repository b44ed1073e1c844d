"""Whole-pipeline benchmark: images/second of `localize` over real photos, and RSS over time.

Runs the same code path as ``deepspectral localize`` (decode, batched features, eigen-step
in worker threads, box) on N photos from ../shared/data (cycled when N exceeds what is
there), for each ``--configs`` entry ``workers:batch_size``, without the cache so every
image is computed. Prints images/s and the resident memory after every ``--every``
images, to show that memory stays flat.

    python benchmarks/bench_pipeline.py --images 100 --configs 1:1 2:4
    python benchmarks/bench_pipeline.py --images 500 --configs 2:4 --every 100
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sources", nargs="*", help="image folders (default: SOD, COCO-MINI, DAVIS in ../shared/data)")
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--configs", nargs="+", default=["1:1", "2:4"], help="workers:batch_size pairs")
    parser.add_argument("--every", type=int, default=50)
    parser.add_argument("--weights", default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32")
    args = parser.parse_args()

    sources = args.sources or [str(SHARED / name) for name in ("sod/images", "coco-mini", "davis2016-val/JPEGImages")]
    found = collect_inputs([s for s in sources if Path(s).exists()])
    if not found:
        raise SystemExit("no images found")
    order = np.random.default_rng(0).permutation(len(found))  # a stationary mix of sizes
    items = [found[order[i % len(found)]] for i in range(args.images)]
    weights = args.weights
    if weights is None:
        weights = save_random_weights(Path(tempfile.mkdtemp()) / "vits16_random.pth", "dino_vits16")
    backbone = Backbone("dino_vits16", weights=weights, device=args.device, precision=args.precision)
    device = args.device
    if device.startswith("cuda"):
        import torch

        device = f"{torch.cuda.get_device_name(0)}, {args.precision}"
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, {platform.system()}, python "
          f"{platform.python_version()}, features on {device}; "
          f"{args.images} photos cycled from {len(found)} ({', '.join(Path(s).name for s in sources)})")
    print()
    print("| workers | batch | images | seconds | images/s | RSS MB at " + ", ".join(
        str(n) for n in range(args.every, args.images + 1, args.every)) + " | peak RSS MB |")
    print("|---:|---:|---:|---:|---:|---|---:|")
    for config in args.configs:
        workers, batch = (int(v) for v in config.split(":"))
        engine = Engine(backbone, batch_size=batch, workers=workers)
        # warm up (numba compile, allocator) outside the timing
        for result in engine.run(items[:2]):
            result.check()
        rss = []
        start = time.perf_counter()
        for count, result in enumerate(engine.run(items), start=1):
            localize(result.check().decomposition)
            if count % args.every == 0:
                rss.append(f"{rss_mb():.0f}")
        seconds = time.perf_counter() - start
        print(f"| {workers} | {batch} | {len(items)} | {seconds:.1f} | {len(items) / seconds:.2f} | "
              f"{', '.join(rss)} | {peak_rss_mb():.0f} |")


if __name__ == "__main__":
    main()
