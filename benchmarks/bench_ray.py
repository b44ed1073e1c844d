"""The Ray engine's overhead: images/s of `localize` with the local engine and with Ray.

Runs the work of ``deepspectral localize`` (decode, batched features, eigen-step, box) on
the same N photos from ../shared/data (cycled when N exceeds what is there), without the
cache so every image is computed:

- ``local W``: :class:`deepspectral.engine.Engine` in this process with ``workers=W``
  (warmed up first on 2 images: numba compiled, model loaded);
- ``ray W``: :class:`deepspectral.engine_ray.RayEngine` on a local Ray started with
  ``num_cpus = 1 + W`` logical CPUs: one backbone actor and W eigen-step tasks at once,
  each task with one BLAS thread (``workers=2``). Its time includes starting the actor
  (loading the backbone) and the workers' first calls (numba compile in each new worker
  process): what every ``--engine ray`` run pays. Starting Ray itself is in its own column.

Prints a Markdown table.

    python benchmarks/bench_ray.py --images 100 --configs local:1 local:2 ray:1 ray:2
"""

from __future__ import annotations

import argparse
import logging
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

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def box_record(result) -> list:
    from deepspectral.tasks.localize import localize

    return [int(v) for v in localize(result.decomposition)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sources", nargs="*", help="image folders (default: SOD, COCO-MINI, DAVIS in ../shared/data)")
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--configs", nargs="+", default=["local:1", "local:2", "ray:1", "ray:2"],
                        help="ENGINE:W pairs (local: W eigen-step threads; ray: W eigen-step tasks at once)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--max-size", type=int, default=None, help="default: the library's")
    parser.add_argument("--weights", default=None)
    args = parser.parse_args()

    import ray

    from deepspectral import defaults
    from deepspectral.engine_ray import RayEngine

    sources = args.sources or [str(SHARED / name) for name in ("sod/images", "coco-mini", "davis2016-val/JPEGImages")]
    found = collect_inputs([s for s in sources if Path(s).exists()])
    if not found:
        raise SystemExit("no images found")
    order = np.random.default_rng(0).permutation(len(found))  # a stationary mix of sizes
    items = [found[order[i % len(found)]] for i in range(args.images)]
    weights = args.weights or save_random_weights(Path(tempfile.mkdtemp()) / "vits16_random.pth", "dino_vits16")
    backbone = Backbone("dino_vits16", weights=weights, device="cpu")
    max_size = args.max_size or defaults.MAX_SIZE
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, {platform.system()}, python "
          f"{platform.python_version()}, ray {ray.__version__}, features on the CPU; {args.images} photos "
          f"cycled from {len(found)}, max size {max_size}, batch {args.batch_size}, load average at start "
          f"{os.getloadavg()[0]:.1f}")
    print()
    print("| engine | eigen-step workers | images | Ray start s | run s | images/s | same boxes as the first row |")
    print("|---|---:|---:|---:|---:|---:|---|")
    reference = None
    for config in args.configs:
        kind, workers = config.split(":")
        workers = int(workers)
        boxes: list = []
        collect = lambda item, record: boxes.append(record)  # noqa: E731
        start_seconds = 0.0
        if kind == "local":
            engine = Engine(backbone, max_size=max_size, batch_size=args.batch_size, workers=workers)
            engine.process(items[:2], box_record, desc="warm-up", verbose=False)
            runner = engine
        elif kind == "ray":
            start = time.perf_counter()
            ray.init(num_cpus=1 + workers, include_dashboard=False, logging_level=logging.WARNING)
            start_seconds = time.perf_counter() - start
            engine = Engine(backbone, max_size=max_size, batch_size=args.batch_size, workers=2)
            runner = RayEngine(engine, actors=1, device="cpu")
        else:
            raise SystemExit(f"--configs: expected local:W or ray:W, got {config!r}")
        start = time.perf_counter()
        summary = runner.process(items, box_record, desc=config, verbose=False, collect=collect)
        seconds = time.perf_counter() - start
        if kind == "ray":
            ray.shutdown()
        if summary.failed:
            print(f"({config}: {summary.failed} images failed: {summary.errors[:3]})")
        reference = boxes if reference is None else reference
        print(f"| {kind} | {workers} | {summary.done} | {start_seconds:.1f} | {seconds:.1f} | "
              f"{summary.done / seconds:.2f} | {'yes' if boxes == reference else 'NO'} |", flush=True)


if __name__ == "__main__":
    main()
