"""``deepspectral serve`` benchmark: start-up time and per-request latency of each endpoint.

Starts ``python -m deepspectral serve`` in a subprocess (random-initialised ViT-S/16
weights saved to a temporary file, the CPU, the default ``--max-size``), times how long it
takes until ``GET /api/health`` answers (with the web page, and with ``--no-page``), then
sends each endpoint a 500 × 375 photo ``--repeats`` times (after one request not counted)
from one client and prints a table of the latency seen by the client (median, min, max)
and the server's own time for the work (the ``Server-Timing`` total, median).

The photo is a DAVIS frame from ../shared/data resized to 500 × 375 when it is there, else
a synthetic picture of that size (the timings depend on the size, not on the content).

    python benchmarks/bench_serve.py                  # the README's table
    python benchmarks/bench_serve.py --repeats 10 --startups 3
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
SRC = Path(__file__).resolve().parents[1] / "src"
PHOTO_SIZE = (500, 375)  # (W, H): a VOC-sized photo
#: The requests timed: (label, path, query parameters).
REQUESTS = [
    ("localize dsm", "/api/localize", {}),
    ("localize tokencut", "/api/localize", {"method": "tokencut"}),
    ("segment dsm + crf", "/api/segment", {}),
    ("segment dsm, no refinement", "/api/segment", {"refine": "none"}),
    ("segment tokencut + bilateral", "/api/segment", {"method": "tokencut"}),
    ("matte (RGBA cut-out)", "/api/matte", {}),
    ("matte composite on a colour", "/api/matte", {"output": "composite", "color": "0,177,64"}),
    ("eigs (.npz)", "/api/eigs", {}),
    ("discover 3 objects + crf", "/api/discover", {}),
]


def photo_bytes() -> tuple[bytes, str]:
    frame = SHARED / "davis2016-val" / "JPEGImages" / "blackswan" / "00000.jpg"
    if frame.is_file():
        image, source = Image.open(frame).convert("RGB").resize(PHOTO_SIZE, Image.Resampling.LANCZOS), "DAVIS blackswan/00000"
    else:
        rng = np.random.default_rng(0)
        array = np.full((PHOTO_SIZE[1], PHOTO_SIZE[0], 3), (90, 140, 200), np.uint8)
        array[100:300, 150:380] = (220, 180, 40)
        array = np.clip(array + rng.normal(0, 10, array.shape), 0, 255).astype(np.uint8)
        image, source = Image.fromarray(array), "synthetic"
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=92)
    return buffer.getvalue(), source


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start(weights: Path, args, *, page: bool):
    """Start a server; returns (process, url, seconds until /api/health answered)."""
    import httpx

    port = free_port()
    argv = [sys.executable, "-m", "deepspectral", "serve", "--weights", str(weights), "--device", args.device, "--port", str(port)]
    if args.max_size is not None:
        argv += ["--max-size", str(args.max_size)]
    if not page:
        argv.append("--no-page")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]).strip(os.pathsep)}
    begin = time.perf_counter()
    process = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    while True:
        if process.poll() is not None:
            raise SystemExit(f"the server exited: {process.stderr.read().decode()}")
        try:
            if httpx.get(url + "/api/health", timeout=2).status_code == 200:
                return process, url, time.perf_counter() - begin
        except httpx.HTTPError:
            time.sleep(0.1)


def stop(process) -> None:
    process.send_signal(signal.SIGINT)
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()


def server_total_ms(header: str) -> float:
    for part in header.split(","):
        name, _, value = part.strip().partition(";dur=")
        if name == "total":
            return float(value)
    return float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed requests per endpoint (after one untimed)")
    parser.add_argument("--startups", type=int, default=2, help="start-ups timed per kind (page / API only)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--max-size", type=int, default=None, help="the server's --max-size (default: its default)")
    args = parser.parse_args()

    import httpx

    from deepspectral.backbones import save_random_weights

    data, source = photo_bytes()
    with tempfile.TemporaryDirectory() as folder:
        weights = save_random_weights(Path(folder) / "vits16.pth", "dino_vits16", seed=0)
        startups = {True: [], False: []}
        for _ in range(args.startups):
            for page in (False, True):
                process, url, seconds = start(weights, args, page=page)
                startups[page].append(seconds)
                stop(process)
        process, url, _ = start(weights, args, page=True)
        rows = []
        try:
            with httpx.Client(base_url=url, timeout=600) as client:
                health = [0.0] * args.repeats
                for index in range(args.repeats):
                    begin = time.perf_counter()
                    client.get("/api/health").raise_for_status()
                    health[index] = 1000 * (time.perf_counter() - begin)
                rows.append(("GET /api/health", health, []))
                for label, path, params in REQUESTS:
                    client.post(path, params=params, content=data).raise_for_status()  # not counted
                    seen, server = [], []
                    for _ in range(args.repeats):
                        begin = time.perf_counter()
                        answer = client.post(path, params=params, files={"file": ("photo.jpg", data, "image/jpeg")})
                        answer.raise_for_status()
                        seen.append(1000 * (time.perf_counter() - begin))
                        server.append(server_total_ms(answer.headers.get("server-timing", "")))
                    rows.append((f"POST {path} {label.split(' ', 1)[1] if ' ' in label else ''}".rstrip(), seen, server))
        finally:
            stop(process)

    print(f"\nmachine: {platform.platform()}, {os.cpu_count()} CPUs, device {args.device}; load average "
          f"{' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    print(f"photo: {PHOTO_SIZE[0]}x{PHOTO_SIZE[1]} JPEG ({source}); ViT-S/16 random weights; "
          f"--max-size {args.max_size if args.max_size is not None else 'default'}; {args.repeats} requests each\n")
    print("| start-up (until /api/health answers) | median s | min s | max s |")
    print("|---|---:|---:|---:|")
    for page, label in ((True, "web page + API"), (False, "API only (--no-page)")):
        values = startups[page]
        print(f"| {label} | {statistics.median(values):.1f} | {min(values):.1f} | {max(values):.1f} |")
    print("\n| request | client median ms | min ms | max ms | server work median ms |")
    print("|---|---:|---:|---:|---:|")
    for label, seen, server in rows:
        work = f"{statistics.median(server):.0f}" if server else "-"
        print(f"| {label} | {statistics.median(seen):.0f} | {min(seen):.0f} | {max(seen):.0f} | {work} |")


if __name__ == "__main__":
    main()
