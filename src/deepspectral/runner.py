"""Running one function over many images: progress, per-image errors, atomic outputs.

``run_batch`` is what the command line uses: one bad image (unreadable, corrupt, too
large, out of memory) is reported and skipped, never the end of the batch; the failures
are listed in ``errors.json`` of the output folder. Every output file is written through
:func:`atomic_write` (a temporary file in the same folder, then :func:`os.replace`), so an
interrupted run never leaves a half-written file behind.
"""

from __future__ import annotations

import json
import os
import secrets
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

__all__ = [
    "RunSummary",
    "run_batch",
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_savez",
    "save_image_atomic",
    "save_png_atomic",
    "ERRORS_FILE",
]

#: Name of the file listing the images that failed, in the output folder.
ERRORS_FILE = "errors.json"


# ---------------------------------------------------------------------------------------
# Atomic writes
# ---------------------------------------------------------------------------------------


def atomic_write(path, write_fn: Callable) -> Path:
    """Write ``path`` atomically: ``write_fn(handle)`` writes to a binary file handle of a
    temporary file in the same folder, which then replaces ``path`` in one step.

    The folder is created when missing. If ``write_fn`` raises, the temporary file is
    removed and ``path`` is left as it was. The file gets the usual permissions (umask).

    Returns
    -------
    pathlib.Path
        ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    descriptor = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            write_fn(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def atomic_write_bytes(path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_write`)."""
    return atomic_write(path, lambda handle: handle.write(data))


def atomic_write_json(path, obj) -> Path:
    """Write ``obj`` as indented UTF-8 JSON (non-ASCII kept as is) to ``path`` atomically."""
    text = json.dumps(obj, indent=2, ensure_ascii=False) + "\n"
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_savez(path, arrays: dict) -> Path:
    """Write ``arrays`` as an uncompressed ``.npz`` (readable with :func:`numpy.load`)
    atomically, with fixed zip timestamps so the same arrays always give the same bytes."""
    import zipfile

    def write(handle) -> None:
        with zipfile.ZipFile(handle, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
            for name, value in arrays.items():
                info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
                with archive.open(info, "w", force_zip64=True) as member:
                    np.lib.format.write_array(member, np.asanyarray(value), allow_pickle=False)

    return atomic_write(path, write)


def _as_pil(image):
    from PIL import Image

    if isinstance(image, Image.Image):
        return image
    array = np.asarray(image)
    if array.dtype == bool:
        array = array.astype(np.uint8) * 255
    if array.dtype != np.uint8:
        raise ValueError(f"image: expected a uint8 or bool array or a PIL image, got dtype {array.dtype}")
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (3, 4)):
        raise ValueError(f"image: expected an (H, W), (H, W, 3) or (H, W, 4) array, got shape {array.shape}")
    return Image.fromarray(np.ascontiguousarray(array))


def save_image_atomic(path, image, *, format: str | None = None, **options) -> Path:
    """Save a PIL image or a ``uint8`` / ``bool`` array (``(H, W)`` -> mode L, bool as
    0/255; ``(H, W, 3)`` RGB; ``(H, W, 4)`` RGBA) to ``path`` atomically. The format comes
    from ``format`` or the extension (``.png``, ``.jpg``, ...); ``options`` go to
    :meth:`PIL.Image.Image.save` (e.g. ``quality=90``)."""
    from PIL import Image

    path = Path(path)
    pil = _as_pil(image)
    if format is None:
        Image.init()
        format = Image.EXTENSION.get(path.suffix.lower())
        if format is None:
            raise ValueError(f"path: cannot tell the image format from the extension of '{path}'")
    if format.upper() == "JPEG" and pil.mode not in ("RGB", "L", "CMYK"):
        pil = pil.convert("RGB")
    return atomic_write(path, lambda handle: pil.save(handle, format=format, **options))


def save_png_atomic(path, image) -> Path:
    """Save a PIL image or ``uint8`` / ``bool`` array as PNG to ``path`` atomically."""
    return save_image_atomic(path, image, format="PNG")


# ---------------------------------------------------------------------------------------
# Batches
# ---------------------------------------------------------------------------------------


@dataclass
class RunSummary:
    """What :func:`run_batch` did.

    Attributes
    ----------
    done, failed : int
        Images processed successfully / that raised an expected error.
    seconds : float
        Wall-clock time of the whole batch.
    errors : list of dict
        ``{"path": str, "error": str}`` for every failed image, in input order.
    errors_file : pathlib.Path or None
        Where ``errors`` were written (``None`` when nothing failed).
    """

    done: int = 0
    failed: int = 0
    seconds: float = 0.0
    errors: list = field(default_factory=list)
    errors_file: Path | None = None

    @property
    def total(self) -> int:
        return self.done + self.failed

    @property
    def seconds_per_image(self) -> float:
        return self.seconds / self.total if self.total else 0.0

    @property
    def ok(self) -> bool:
        return self.failed == 0

    def line(self, desc: str = "") -> str:
        """One-line summary, e.g. ``segment: 10 images done, 1 failed, 0.42 s per image``."""
        prefix = f"{desc}: " if desc else ""
        text = (
            f"{prefix}{self.done} image{'s' if self.done != 1 else ''} done, {self.failed} failed, "
            f"{self.seconds_per_image:.2f} s per image"
        )
        if self.errors_file is not None:
            text += f" (failures listed in {self.errors_file})"
        return text


def _expected_errors() -> tuple[type, ...]:
    """Per-image errors that are reported and skipped (a bug still raises)."""
    from .data.images import ImageLoadError

    return (ImageLoadError, ValueError, OSError, RuntimeError, MemoryError, EOFError)


def _fatal_errors() -> tuple[type, ...]:
    """Errors that concern every image alike: they stop the batch."""
    fatal: list[type] = [ImportError]
    try:  # backbones.py does not import torch at module level
        from .backbones import WeightsUnavailableError

        fatal.append(WeightsUnavailableError)
    except ImportError:  # pragma: no cover - backbones.py always ships with the package
        pass
    return tuple(fatal)


def _describe(error: BaseException) -> str:
    message = str(error).strip() or "(no message)"
    return f"{type(error).__name__}: {message}"


def run_batch(
    inputs: Iterable,
    process_fn: Callable,
    *,
    out_dir,
    desc: str,
    verbose: bool = True,
) -> RunSummary:
    """Call ``process_fn(item)`` on every input, with a progress bar, and survive bad images.

    Parameters
    ----------
    inputs : sequence of InputImage (or anything with a ``path`` attribute)
    process_fn : callable
        Processes and saves one input; its return value is ignored.
    out_dir : str or os.PathLike
        Output folder; ``errors.json`` is written there (atomically) when an image failed,
        and an ``errors.json`` left by an earlier run is removed when none did.
    desc : str
        Label of the progress bar and of the summary line.
    verbose : bool
        Show the progress bar (on a terminal) and print failures and the summary line.

    Returns
    -------
    RunSummary

    Notes
    -----
    Expected per-image errors (``ImageLoadError``, ``ValueError``, ``OSError``,
    ``RuntimeError`` such as CUDA out-of-memory, ``MemoryError``) are caught, reported and
    skipped. ``WeightsUnavailableError`` and ``ImportError`` (a missing optional
    dependency) concern every image and stop the batch, as do ``KeyboardInterrupt`` and
    unexpected exceptions (bugs).
    """
    from tqdm.auto import tqdm

    items = list(inputs)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    expected = _expected_errors()
    fatal = _fatal_errors()
    summary = RunSummary()
    start = time.perf_counter()
    progress = tqdm(items, desc=desc, unit="img", disable=(not verbose) or None, file=sys.stderr, dynamic_ncols=True)
    try:
        for item in progress:
            path = getattr(item, "path", item)
            try:
                process_fn(item)
            except fatal:
                raise
            except expected as error:
                summary.failed += 1
                summary.errors.append({"path": str(path), "error": _describe(error)})
                if verbose:
                    progress.write(f"{desc}: failed on {path}: {_describe(error)}", file=sys.stderr)
            else:
                summary.done += 1
    finally:
        progress.close()
        summary.seconds = time.perf_counter() - start
    errors_path = out_dir / ERRORS_FILE
    if summary.errors:
        atomic_write_json(errors_path, summary.errors)
        summary.errors_file = errors_path
    elif errors_path.exists():
        errors_path.unlink()
    if verbose:
        print(summary.line(desc), flush=True)
    return summary
