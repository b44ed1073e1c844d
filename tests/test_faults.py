"""Fault injection: every fault gets a clear message and nothing is lost or half-written.

Full disks (a real 256 KB tmpfs where this runs as root, and a write hook that raises
``ENOSPC`` everywhere), read-only output and cache folders, output and cache paths that are
files, SIGKILL at eight random moments of a run (each followed by a rerun), SIGINT, an oversize image with
``--max-size 0``, every numeric option at its invalid edges, a rerun of a finished run, and
a bug (the one case with a traceback). The exit-status contract is in
``deepspectral.cli.common`` and the README.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from deepspectral.cli import build_parser, main

N_PHOTOS = 10


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """Ten small photo-like images (a flat background, one rectangle, noise)."""
    root = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    for index in range(N_PHOTOS):
        image = np.full((96, 128, 3), rng.integers(0, 255, 3), np.uint8)
        y, x = rng.integers(8, 48), rng.integers(8, 64)
        image[y : y + 40, x : x + 48] = rng.integers(0, 255, 3)
        image = np.clip(image + rng.normal(0, 8, image.shape), 0, 255).astype(np.uint8)
        Image.fromarray(image).save(root / f"img{index:02d}.png")
    return root


def temp_files(folder: Path) -> list[Path]:
    return [path for path in folder.rglob("*") if path.name.endswith(".tmp")]


def output_files(folder: Path) -> dict[str, bytes]:
    """Every output file's bytes (the cache and the run record left out)."""
    return {
        str(path.relative_to(folder)): path.read_bytes()
        for path in sorted(folder.rglob("*"))
        if path.is_file() and ".cache" not in path.parts and not path.name.startswith(".deepspectral-run")
    }


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(arg) for arg in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


COMMANDS = {  # command → (arguments, output suffixes of one image)
    "eigs": (["eigs"], [".npz", ".eigs.png"]),
    "localize": (["localize", "--save-viz"], [".box.jpg"]),
    "segment": (["segment", "--no-crf", "--save-viz"], [".png", ".overlay.jpg"]),
    "matte": (["matte", "--color", "0,128,0"], [".alpha.png", ".fg.png", ".composite.png"]),
}


# ---------------------------------------------------------------------------------------
# Full disk
# ---------------------------------------------------------------------------------------


def _mount(target: Path, options: str) -> bool:
    """Mount a tmpfs at ``target`` (root only); False where this is not possible."""
    if os.geteuid() != 0 or sys.platform != "linux":
        return False
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(target)], capture_output=True)
    return result.returncode == 0


@contextlib.contextmanager
def small_disk(tmp_path: Path, kind: str, monkeypatch, size_bytes: int):
    """A folder on a disk that fills up after about ``size_bytes``: a real tmpfs or a hook
    on the package's one file-opening function (``deepspectral.files._open_temp``)."""
    folder = tmp_path / f"disk-{kind}"
    folder.mkdir()
    if kind == "tmpfs":
        if not _mount(folder, f"size={size_bytes}"):
            pytest.skip("mounting a tmpfs needs root on Linux (the 'hook' variant covers the logic)")
        try:
            yield folder
        finally:
            subprocess.run(["umount", "-l", str(folder)], check=False)
        return
    import deepspectral.files as files

    budget = {"left": size_bytes}
    real_open = files._open_temp

    class Limited:
        def __init__(self, handle):
            self._handle = handle

        def write(self, data):
            size = len(memoryview(data).cast("B"))
            if size > budget["left"]:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # as a real write: no file name
            budget["left"] -= size
            return self._handle.write(data)

        def __getattr__(self, name):
            return getattr(self._handle, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self._handle.close()

    def open_limited(tmp):
        handle = real_open(tmp)
        return Limited(handle) if Path(tmp).is_relative_to(folder) else handle

    monkeypatch.setattr(files, "_open_temp", open_limited)
    yield folder


@pytest.mark.parametrize("kind", ["hook", "tmpfs"])
@pytest.mark.parametrize("command", ["eigs", "localize", "segment", "matte"])
def test_full_disk_fails_images_alone(command, kind, photos, random_weights, tmp_path, monkeypatch, capsys):
    """The disk fills up mid-run: the images that fit are complete, the others are failed
    (no partial outputs), no traceback, no temporary file, exit 1."""
    arguments, suffixes = COMMANDS[command]
    with small_disk(tmp_path, kind, monkeypatch, size_bytes=256 << 10) as disk:
        out = disk / "out"
        code, stdout, stderr = run(capsys, *arguments, photos, "-o", out, "--weights", random_weights, "--max-size", "96")
        assert "Traceback" not in stderr
        assert code == 1, stderr
        assert temp_files(disk) == []
        failed = "".join(stderr.splitlines(keepends=True))
        names = [f"img{index:02d}" for index in range(N_PHOTOS)]
        done = [name for name in names if all((out / f"{name}{suffix}").exists() for suffix in suffixes)]
        assert 0 < len(done) < N_PHOTOS, (done, stderr)
        for name in names:
            if name in done:
                continue
            # a failed image has no output at all and is named (errors.json or, if the disk
            # was too full for it, stderr)
            assert not any((out / f"{name}{suffix}").exists() for suffix in suffixes), name
            errors = out / "errors.json"
            listed = errors.exists() and name in errors.read_text()
            assert listed or name in failed, name
        if command == "localize" and (out / "boxes.json").exists():
            boxes = json.loads((out / "boxes.json").read_text())
            assert {box["image"] for box in boxes} <= set(names)
        elif command == "localize":
            assert "boxes.json" in stderr


def test_failed_image_leaves_no_partial_outputs(photos, random_weights, tmp_path, monkeypatch, capsys):
    """``eigs`` writes the .npz, then its picture fails: the .npz is removed too."""
    import deepspectral.files as files

    real_open = files._open_temp

    def open_failing(tmp):
        if ".img03.eigs.png" in Path(tmp).name:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp))
        return real_open(tmp)

    monkeypatch.setattr(files, "_open_temp", open_failing)
    out = tmp_path / "out"
    code, _, stderr = run(capsys, "eigs", photos, "-o", out, "--weights", random_weights, "--max-size", "96", "--no-cache")
    assert code == 1
    assert not (out / "img03.npz").exists() and not (out / "img03.eigs.png").exists()
    assert (out / "img04.npz").exists()
    assert [record["image"] for record in json.loads((out / "errors.json").read_text())] == ["img03"]
    assert "No space left on device" in stderr


def test_errors_file_on_a_full_disk_is_printed(photos, random_weights, tmp_path, monkeypatch, capsys):
    """When not even errors.json can be written, the failures are printed and the exit
    status is 1."""
    import deepspectral.files as files

    real_open = files._open_temp

    def open_failing(tmp):
        name = Path(tmp).name
        if ".img01.png" in name or ".errors.json" in name:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp))
        return real_open(tmp)

    monkeypatch.setattr(files, "_open_temp", open_failing)
    out = tmp_path / "out"
    code, stdout, stderr = run(capsys, "segment", "--no-crf", photos, "-o", out, "--weights", random_weights, "--max-size", "96")
    assert code == 1
    assert not (out / "errors.json").exists()
    assert "cannot write" in stderr and "errors.json" in stderr and "img01.png" in stderr
    assert "Traceback" not in stderr
    assert f"{N_PHOTOS - 1} images done, 1 failed" in stdout


# ---------------------------------------------------------------------------------------
# Unusable output and cache folders
# ---------------------------------------------------------------------------------------


@pytest.fixture
def read_only_folder(tmp_path) -> Path:
    """A folder no one can write in: a read-only tmpfs as root (root ignores permission
    bits), a mode-0555 folder otherwise."""
    folder = tmp_path / "read-only"
    folder.mkdir()
    if os.geteuid() == 0:
        if not _mount(folder, "ro,size=1m"):
            pytest.skip("as root, a read-only folder needs a read-only mount, which is not possible here")
        yield folder
        subprocess.run(["umount", "-l", str(folder)], check=False)
    else:
        folder.chmod(0o555)
        yield folder
        folder.chmod(0o755)


def _no_backbone(monkeypatch) -> None:
    """Make loading the backbone a bug, to show a check comes before any work."""
    import deepspectral.cli.options as options

    def refuse(args):
        raise AssertionError("the backbone was loaded before the folders were checked")

    monkeypatch.setattr(options, "backbone_from_args", refuse)
    for module in ("deepspectral.cli.images", "deepspectral.cli.matte", "deepspectral.cli.semseg"):
        monkeypatch.setattr(f"{module}.backbone_from_args", refuse, raising=False)


FOLDER_COMMANDS = [["eigs"], ["localize"], ["segment", "--no-crf"], ["matte"], ["semseg", "fit"]]


@pytest.mark.parametrize("command", FOLDER_COMMANDS, ids=lambda c: " ".join(c))
@pytest.mark.parametrize("where", ["out", "cache"])
def test_read_only_folder_is_refused_before_any_work(command, where, read_only_folder, photos, random_weights, tmp_path, monkeypatch, capsys):
    _no_backbone(monkeypatch)
    out = read_only_folder / "out" if where == "out" else tmp_path / "out"
    extra = ["--cache", read_only_folder / "cache"] if where == "cache" else []
    code, _, stderr = run(capsys, *command, photos, "-o", out, "--weights", random_weights, *extra)
    assert code == 2
    option = "-o/--out" if where == "out" else "--cache"
    assert stderr.startswith(f"deepspectral: error: {option}: cannot write in the folder")
    assert len(stderr.strip().splitlines()) == 1, stderr


@pytest.mark.parametrize("command", FOLDER_COMMANDS, ids=lambda c: " ".join(c))
@pytest.mark.parametrize("where", ["out", "cache"])
def test_folder_that_is_a_file_is_refused(command, where, photos, random_weights, tmp_path, monkeypatch, capsys):
    _no_backbone(monkeypatch)
    a_file = tmp_path / "a-file"
    a_file.write_text("not a folder")
    out = a_file if where == "out" else tmp_path / "out"
    extra = ["--cache", a_file] if where == "cache" else []
    code, _, stderr = run(capsys, *command, photos, "-o", out, "--weights", random_weights, *extra)
    assert code == 2
    option = "-o/--out" if where == "out" else "--cache"
    assert stderr.strip() == f"deepspectral: error: {option}: '{a_file}' exists and is not a folder"


def test_no_cache_ignores_an_unusable_cache_option(photos, random_weights, tmp_path, capsys):
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    code, _, _ = run(
        capsys, "localize", photos / "img00.png", "-o", tmp_path / "out", "--weights", random_weights,
        "--cache", a_file, "--no-cache", "--max-size", "96",
    )  # fmt: skip
    assert code == 0


# ---------------------------------------------------------------------------------------
# Oversize images, numeric options
# ---------------------------------------------------------------------------------------


def test_oversize_image_is_refused_before_the_backbone(photos, random_weights, tmp_path, monkeypatch, capsys):
    """``--max-size 0`` on a 6000×6000 photo: that image fails at once (the backbone never
    sees it), the others are done."""
    from deepspectral.backbones import Backbone

    big = tmp_path / "inputs"
    big.mkdir()
    Image.new("RGB", (6000, 6000), (120, 30, 200)).save(big / "huge.png")
    Image.open(photos / "img00.png").save(big / "small.png")
    seen = []
    real_extract = Backbone.extract

    def extract(self, image, **kwargs):
        seen.append(image.shape[:2])
        return real_extract(self, image, **kwargs)

    monkeypatch.setattr(Backbone, "extract", extract)
    out = tmp_path / "out"
    code, _, stderr = run(capsys, "localize", big, "-o", out, "--weights", random_weights, "--max-size", "0")
    assert code == 1
    assert seen == [(96, 128)]
    (error,) = json.loads((out / "errors.json").read_text())
    assert error["image"] == "huge" and "nodes" in error["error"] and "--max-size" in error["error"]
    assert [box["image"] for box in json.loads((out / "boxes.json").read_text())] == ["small"]


def _subcommands(parser, prefix=()):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _subcommands(sub, (*prefix, name))
    if prefix:
        yield prefix, parser


def _numeric_options():
    for prefix, parser in _subcommands(build_parser()):
        for action in parser._actions:
            name = getattr(action.type, "__name__", "")
            if action.option_strings and (action.type in (int, float) or name.split(" ")[0] in ("int", "float")):
                yield prefix, action


def _bad_values(action) -> list[str]:
    name = getattr(action.type, "__name__", "")
    bad = ["abc", "", "nan", "inf", "-inf", "1e999"]
    if " " in name:  # "int >= 1", "float > 0"
        kind, relation, minimum = name.split(" ")
        low = float(minimum)
        if kind == "int":
            bad.append(str(int(low) - 1 if relation == ">=" else int(low)))
            bad.append("1.5")
        else:
            bad.append(repr(low - 1e-9) if relation == ">=" else minimum)
    return bad


def test_every_numeric_option_is_validated():
    """No command has a bare ``int`` / ``float`` option that accepts nan, inf or a value
    out of range (``--block`` is checked against the backbone's depth, below)."""
    unchecked = [
        (" ".join(prefix), action.option_strings[-1])
        for prefix, action in _numeric_options()
        if action.type in (int, float) and action.dest != "block"
    ]
    assert unchecked == []


@pytest.mark.parametrize(
    "prefix, option, value",
    [
        (prefix, action.option_strings[-1], value)
        for prefix, action in _numeric_options()
        if action.dest != "block"
        for value in _bad_values(action)
    ],
    ids=lambda v: v if isinstance(v, str) else " ".join(v),
)
def test_numeric_option_edges_are_refused(prefix, option, value, capsys):
    argv = [*prefix, f"{option}={value}"]
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, argv
    assert f"argument {option}" in err or option in err, err
    assert "Traceback" not in err


@pytest.mark.parametrize("command", ["eigs", "localize", "segment", "matte"])
@pytest.mark.parametrize("block", ["12", "-13", "x"])
def test_block_out_of_range_is_a_usage_error(command, block, photos, random_weights, tmp_path, capsys):
    code, _, stderr = run(capsys, command, photos, "-o", tmp_path / "out", "--weights", random_weights, "--block", block)
    assert code == 2
    assert "Traceback" not in stderr
    last = stderr.strip().splitlines()[-1]  # argparse prints its usage first
    assert last.startswith("deepspectral") and "error:" in last and "block" in last, stderr


# ---------------------------------------------------------------------------------------
# Reruns, interruptions, bugs
# ---------------------------------------------------------------------------------------


def _mtimes(folder: Path) -> dict[str, int]:
    """Modification times of the per-image outputs (not of the run's JSON summaries, such as
    segment's scores.json, which every run writes)."""
    return {name: (folder / name).stat().st_mtime_ns for name in output_files(folder) if not name.endswith(".json")}


@pytest.mark.parametrize("command", ["eigs", "segment", "matte"])
def test_finished_run_is_not_recomputed(command, photos, random_weights, tmp_path, capsys):
    arguments, _ = COMMANDS[command]
    out = tmp_path / "out"
    base = [*arguments, photos, "-o", out, "--weights", random_weights, "--max-size", "96"]
    assert run(capsys, *base)[0] == 0
    first = _mtimes(out)
    before = output_files(out)
    code, stdout, _ = run(capsys, *base, "--workers", "2")  # speed options change nothing
    assert code == 0 and f"0 images done, 0 failed, {N_PHOTOS} already done" in stdout
    assert _mtimes(out) == first
    code, stdout, _ = run(capsys, *base, "--overwrite")
    assert code == 0 and f"{N_PHOTOS} images done" in stdout
    assert all(_mtimes(out)[name] > first[name] for name in first)
    assert output_files(out) == before
    # other settings: everything is recomputed
    code, stdout, _ = run(capsys, *base, "--knn-lambda", "3")
    assert code == 0 and f"{N_PHOTOS} images done" in stdout


def test_changed_settings_then_killed_then_resumed_recomputes_old_outputs(photos, random_weights, tmp_path, capsys):
    """Outputs of a run with other settings are never taken as finished, even after a run
    with the new settings stopped halfway."""
    out = tmp_path / "out"
    base = ["segment", "--no-crf", photos, "-o", out, "--weights", random_weights, "--max-size", "96"]
    assert run(capsys, *base)[0] == 0
    # a run with new settings processes 3 images, then stops (as if killed)
    inputs = tmp_path / "three.txt"
    inputs.write_text("".join(f"{photos / f'img{i:02d}.png'}\n" for i in range(3)))
    assert run(capsys, "segment", "--no-crf", inputs, "-o", out, "--weights", random_weights, "--max-size", "96", "--knn-lambda", "2")[0] == 0
    code, stdout, _ = run(capsys, *base, "--knn-lambda", "2")
    assert code == 0 and f"{N_PHOTOS - 3} images done, 0 failed, 3 already done" in stdout
    reference = tmp_path / "reference"
    assert run(capsys, "segment", "--no-crf", photos, "-o", reference, "--weights", random_weights, "--max-size", "96", "--knn-lambda", "2")[0] == 0
    assert output_files(out) == output_files(reference)


def test_a_bug_gets_a_traceback_and_a_request_to_report_it(photos, random_weights, tmp_path, monkeypatch, capsys):
    import deepspectral.tasks.localize as localize_module

    def broken(decomposition):
        raise TypeError("unsupported operand")

    monkeypatch.setattr(localize_module, "localize", broken)
    code, _, stderr = run(capsys, "localize", photos, "-o", tmp_path / "out", "--weights", random_weights, "--max-size", "96")
    assert code == 70
    assert "Traceback" in stderr and "TypeError: unsupported operand" in stderr
    assert "this is a bug in deepspectral" in stderr and "please report it" in stderr


def _cli(photos: Path, out: Path, weights: Path, *extra) -> list[str]:
    return [
        sys.executable, "-m", "deepspectral", "segment", str(photos), "-o", str(out), "--weights", str(weights),
        "--no-crf", "--save-viz", "--batch-size", "2", "--workers", "2", "--max-size", "96", "-q", *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def reference_run(photos, random_weights, tmp_path_factory) -> dict[str, bytes]:
    out = tmp_path_factory.mktemp("reference") / "out"
    subprocess.run(_cli(photos, out, random_weights), check=True, timeout=600)
    return output_files(out)


def _count_files(folder: Path) -> int:
    return sum(1 for path in folder.rglob("*") if path.is_file()) if folder.exists() else 0


@pytest.mark.slow
def test_sigkill_at_random_moments_then_resume(photos, random_weights, reference_run, tmp_path):
    """Kill a run with SIGKILL at five random moments (seeded: after 1-3 more files
    appeared, plus 0-300 ms), rerunning each time; then let it finish: no temporary file
    anywhere and outputs byte-identical to an uninterrupted run. (Five, to keep CI short;
    tests/test_resume.py kills and resumes a run of its own too.)"""
    out = tmp_path / "out"
    rng = random.Random(12)
    kills = 0
    for _ in range(5):
        start_count = _count_files(out)
        wanted, delay = rng.randint(1, 3), rng.uniform(0.0, 0.3)
        process = subprocess.Popen(_cli(photos, out, random_weights))
        deadline = time.monotonic() + 300
        while process.poll() is None and _count_files(out) < start_count + wanted and time.monotonic() < deadline:
            time.sleep(0.005)
        time.sleep(delay)
        process.send_signal(signal.SIGKILL)
        process.wait()
        kills += process.returncode == -signal.SIGKILL
    assert kills >= 3, "most runs finished before they could be killed: use longer runs"
    subprocess.run(_cli(photos, out, random_weights), check=True, timeout=600)
    assert temp_files(out) == []
    assert output_files(out) == reference_run


@pytest.mark.slow
def test_sigint_exits_130_and_the_rerun_completes(photos, random_weights, reference_run, tmp_path):
    out = tmp_path / "out"
    process = subprocess.Popen(_cli(photos, out, random_weights), stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not list(out.glob("*.png")):
        time.sleep(0.02)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    if process.returncode == 0:
        pytest.skip("the run finished before the interruption arrived")
    assert process.returncode == 130, stderr
    assert "interrupted (rerun the same command to resume)" in stderr
    assert "Traceback" not in stderr
    assert temp_files(out) == []
    subprocess.run(_cli(photos, out, random_weights), check=True, timeout=600)
    assert output_files(out) == reference_run


def test_stale_temp_file_in_the_output_folder_is_removed(photos, random_weights, tmp_path, capsys):
    """A killed run's temporary file (its process gone) is removed by the next run; one of
    a running process is left alone."""
    out = tmp_path / "out"
    out.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = out / f".img00.png.{int(dead.stdout)}.{uuid.uuid4().hex[:8]}.tmp"
    stale.write_bytes(b"")
    live = out / f".img01.png.{os.getppid()}.{uuid.uuid4().hex[:8]}.tmp"
    live.write_bytes(b"")
    assert run(capsys, "segment", "--no-crf", photos / "img00.png", "-o", out, "--weights", random_weights, "--max-size", "96")[0] == 0
    assert not stale.exists() and live.exists()


def test_one_eigenvector_is_refused_by_the_tasks():
    """``decompose(n_eigenvectors=1)`` is valid (the constant vector), but a box or mask
    from it would be meaningless: the tasks say so instead of returning the whole image."""
    from oracle import oracle_features

    from deepspectral import decompose
    from deepspectral.tasks.localize import localize
    from deepspectral.tasks.segment import segment_object

    mask = np.zeros((96, 128), bool)
    mask[20:70, 30:90] = True
    image = np.where(mask[..., None], 200, 40).astype(np.uint8).repeat(3, axis=2)
    decomposition = decompose(oracle_features(mask), image, n_eigenvectors=1)
    with pytest.raises(ValueError, match="n_eigenvectors >= 2"):
        localize(decomposition)
    with pytest.raises(ValueError, match="n_eigenvectors >= 2"):
        segment_object(decomposition, image, crf=False)
