"""Files: atomic writes (every file the package writes appears whole or not at all) and
content digests (what cache keys are made of).

Each writer goes through :func:`atomic_write`: the bytes go to a temporary file
``.<name>.<pid>.<token>.tmp`` in the target folder, which then replaces the target in one
step (:func:`os.replace`). A killed process can leave such a temporary file behind;
:func:`remove_stale_temp_files` deletes those of processes that no longer run.
:func:`recording_writes` lists the files written in a block, so that the outputs of an
image that failed halfway can be removed (see :func:`deepspectral.engine.run_batch`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import threading
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

__all__ = [
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_savez",
    "save_image_atomic",
    "save_png_atomic",
    "remove_stale_temp_files",
    "recording_writes",
    "remove_files",
    "check_writable_folder",
    "file_digest",
]

_recorders = threading.local()


def file_digest(path: str | os.PathLike, *, chunk_size: int = 1 << 20) -> str:
    """SHA-256 hex digest of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


def atomic_write(path, write_fn: Callable) -> Path:
    """Write ``path`` atomically: ``write_fn(handle)`` writes to a binary file handle of a
    temporary file in the same folder, which then replaces ``path`` in one step.

    The folder is created when missing. If ``write_fn`` raises, the temporary file is
    removed and ``path`` is left as it was (an ``OSError`` that names no file, such as a
    full disk, is raised again naming ``path``). The file gets the usual permissions (umask).

    Returns
    -------
    pathlib.Path
        ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    handle = _open_temp(tmp)
    try:
        with handle:
            write_fn(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        for written in getattr(_recorders, "stack", ()):
            written.append(path)
    except BaseException as error:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if isinstance(error, OSError) and error.filename is None and error.errno is not None:
            # a failed write names no file: name the one being written
            raise OSError(error.errno, error.strerror, str(path)) from error
        raise
    return path


def _open_temp(tmp: Path):
    """A new binary file handle at ``tmp`` (which must not exist). One place to open every
    file the package writes, so that tests can inject disk faults here."""
    descriptor = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    return os.fdopen(descriptor, "wb")


@contextlib.contextmanager
def recording_writes() -> Iterator[list]:
    """Within the block, every file this thread writes with :func:`atomic_write` is
    appended to the yielded list (blocks may nest; each sees the writes made in it)."""
    stack = _recorders.__dict__.setdefault("stack", [])
    written: list[Path] = []
    stack.append(written)
    try:
        yield written
    finally:
        stack.remove(written)


def remove_files(paths) -> None:
    """Delete ``paths`` where they exist, ignoring the ones that cannot be deleted (used to
    take back the outputs of an image that failed halfway)."""
    for path in paths:
        try:
            Path(path).unlink(missing_ok=True)
        except OSError:
            pass


def check_writable_folder(folder: str | os.PathLike) -> Path:
    """Create ``folder`` if missing and check that files can be created in it (by creating
    and removing a temporary file); raise ``OSError`` otherwise."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if not folder.is_dir():
        raise NotADirectoryError(20, "Not a directory", str(folder))
    probe = folder / f".write-check.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    descriptor = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    os.close(descriptor)
    os.unlink(probe)
    return folder


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


def remove_stale_temp_files(folder: str | os.PathLike) -> int:
    """Delete temporary files ``.<name>.<pid>.<token>.tmp`` (see
    :func:`atomic_write`) left under ``folder`` by processes that no
    longer run (a killed run). Returns how many were removed."""
    removed = 0
    for path in Path(folder).rglob(".*.tmp"):
        try:
            pid = int(path.name.rsplit(".", 3)[-3])
        except (ValueError, IndexError):
            continue
        if pid != os.getpid() and not _process_exists(pid):
            path.unlink(missing_ok=True)
            removed += 1
    return removed


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
