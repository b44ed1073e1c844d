"""Record, or compare with a record, the bytes every command writes on real photos.

A refactoring that should not change results is checked by running this before it
(``record``) and after it (``compare``): every output file of ``eigs``, ``localize``,
``segment``, ``matte`` and ``semseg fit`` on ~30 photos of ``../shared/data`` with a
random-weight ViT-S/16 (seed 0), each command run with its cache and with ``--no-cache``.
Files are compared by SHA-256; JSON files that record timings or paths are compared with
those fields removed.

::

    python benchmarks/golden_outputs.py record  golden.json [--data ../shared/data]
    python benchmarks/golden_outputs.py compare golden.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import tempfile
from pathlib import Path

#: JSON fields that change from run to run (timings, memory, absolute paths, versions).
VOLATILE_KEYS = {"timings", "seconds", "peak_rss_mb", "file", "path", "version", "weights", "created", "inputs"}

COMMANDS = {
    "eigs": ["eigs"],
    "localize": ["localize", "--save-viz"],
    "segment": ["segment", "--save-viz"],
    "segment-nocrf": ["segment", "--no-crf"],
    "matte": ["matte", "--layers", "3", "--color", "0,128,0"],
    "semseg-fit": ["semseg", "fit", "--clusters", "5", "--no-figure"],
}


def pick_photos(data: Path, n_each: int) -> list[Path]:
    sod = sorted((data / "sod" / "images").glob("*.jpg"))[:n_each]
    coco = sorted((data / "coco-mini" / "val2017").glob("*.jpg"))[:n_each]
    davis = sorted((data / "davis2016-val" / "JPEGImages").glob("*/*.jpg"))[:: 14][:n_each]
    return sod + coco + davis


def _strip(obj):
    if isinstance(obj, dict):
        return {k: _strip(v) for k, v in obj.items() if k not in VOLATILE_KEYS}
    if isinstance(obj, list):
        return [_strip(v) for v in obj]
    return obj


def digest(path: Path) -> str:
    if path.suffix == ".json":
        text = json.dumps(_strip(json.loads(path.read_text())), sort_keys=True)
        return "json:" + hashlib.sha256(text.encode()).hexdigest()
    return hashlib.sha256(path.read_bytes()).hexdigest()


def run_all(data: Path, n_each: int, only: list[str] | None) -> dict:
    from deepspectral.backbones import save_random_weights
    from deepspectral.cli import main

    work = Path(tempfile.mkdtemp(prefix="golden-"))
    try:
        photos_dir = work / "photos"
        for index, photo in enumerate(pick_photos(data, n_each)):
            target = photos_dir / f"{index:02d}_{photo.parent.name}_{photo.name}"
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(photo, target)
        weights = save_random_weights(work / "vit_s16.pth", "dino_vits16", seed=0)
        record: dict = {}
        for name, argv in COMMANDS.items():
            if only and name not in only:
                continue
            for cache in ("cache", "nocache"):
                out = work / f"{name}-{cache}"
                inputs = [str(photos_dir)] if name != "matte" else [str(p) for p in sorted(photos_dir.iterdir())[::6]]
                extra = ["--no-cache"] if cache == "nocache" else []
                full = [*argv, *inputs, "-o", str(out), "--weights", str(weights), "--device", "cpu", "-q", *extra]
                code = main(full)
                print(f"{name} ({cache}): exit {code}", file=sys.stderr, flush=True)
                files = {
                    str(p.relative_to(out)): digest(p)
                    for p in sorted(out.rglob("*"))
                    if p.is_file() and ".cache" not in p.parts and "segments" not in p.parts
                }
                record[f"{name}/{cache}"] = {"exit": code, "files": files}
        return record
    finally:
        shutil.rmtree(work, ignore_errors=True)


def compare(old: dict, new: dict) -> int:
    differences = 0
    for run in sorted(set(old) | set(new)):
        a, b = old.get(run), new.get(run)
        if a is None or b is None:
            print(f"{run}: only in {'the record' if b is None else 'this run'}")
            differences += 1
            continue
        if a["exit"] != b["exit"]:
            print(f"{run}: exit {a['exit']} -> {b['exit']}")
            differences += 1
        changed = [f for f in sorted(set(a["files"]) | set(b["files"])) if a["files"].get(f) != b["files"].get(f)]
        for name in changed:
            state = "missing" if name not in b["files"] else "new" if name not in a["files"] else "differs"
            print(f"{run}: {name} {state}")
        differences += len(changed)
        if not changed:
            print(f"{run}: {len(a['files'])} files identical")
    print(f"{differences} difference(s)")
    return 1 if differences else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=("record", "compare"))
    parser.add_argument("record_file", type=Path)
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    parser.add_argument("--n-each", type=int, default=10, help="photos from each of SOD, COCO-MINI, DAVIS")
    parser.add_argument("--only", nargs="*", choices=sorted(COMMANDS), help="run only these commands")
    args = parser.parse_args()
    if not args.data.is_dir():
        parser.error(f"--data: no such folder: '{args.data}'")
    record = run_all(args.data, args.n_each, args.only)
    if args.action == "record":
        args.record_file.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
        print(f"recorded {sum(len(r['files']) for r in record.values())} files in {args.record_file}")
        return 0
    old = json.loads(args.record_file.read_text())
    if args.only:
        old = {k: v for k, v in old.items() if k.split("/")[0] in args.only}
    return compare(old, record)


if __name__ == "__main__":
    raise SystemExit(main())
