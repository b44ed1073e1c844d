"""Reading image files robustly (:func:`load_image`) and expanding command-line inputs
(:func:`collect_inputs`) into :class:`InputImage` items.

Inputs may also be fsspec URLs (``s3://bucket/photos/``, ``gs://...``, ``https://...``,
``file:///data/x.jpg``, ``memory://...``; :func:`is_url`): files, folders and ``.txt``
lists are read through `fsspec <https://filesystem-spec.readthedocs.io>`_
(``pip install "deepspectral[cloud]"``, plus the protocol's own package, e.g. ``s3fs``,
``gcsfs``). Local paths are read as before, without fsspec.
"""

from __future__ import annotations

import io
import os
import posixpath
import re
import struct
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np

from .. import defaults

__all__ = [
    "is_url",
    "url_filesystem",
    "load_image",
    "ImageLoadError",
    "InputImage",
    "collect_inputs",
    "IMAGE_EXTENSIONS",
    "IMAGE_FORMATS",
]


# ---------------------------------------------------------------------------------------
# Loading image files
# ---------------------------------------------------------------------------------------

#: PIL formats :func:`load_image` opens. Formats that run external programs (EPS) or that
#: have no magic number (TGA: any file "opens") are left out on purpose.
IMAGE_FORMATS = (
    "JPEG", "PNG", "WEBP", "AVIF", "BMP", "DIB", "TIFF", "GIF", "PPM", "JPEG2000",
    "QOI", "SGI", "PCX", "ICO",
)

#: File extensions (lower case) that :func:`collect_inputs` picks up in folders.
IMAGE_EXTENSIONS = frozenset(
    {
        ".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".webp", ".avif", ".bmp", ".dib",
        ".tif", ".tiff", ".gif", ".ppm", ".pgm", ".pbm", ".pnm", ".jp2", ".j2k", ".jpx",
        ".qoi", ".sgi", ".rgb", ".pcx", ".ico",
    }
)

#: Suffix of a text file listing image paths (one a line) for :func:`collect_inputs`.
LIST_SUFFIX = ".txt"
#: A URL: a scheme (RFC 3986: a letter, then letters, digits, ``+ - .``) and ``://``.
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")
_FSSPEC_HINT = 'URLs are read and written with fsspec: pip install "deepspectral[cloud]"'


def is_url(path) -> bool:
    """Whether ``path`` is a URL string (``scheme://...``) rather than a local path."""
    return isinstance(path, str) and _URL.match(path) is not None


def url_filesystem(url: str, *, what: str = "inputs"):
    """``(fsspec file system, path inside it)`` of ``url``; ``ValueError`` (its message
    starting with ``what``, the option) naming what to install when fsspec or the
    protocol's package is missing, or the protocol is unknown."""
    try:
        import fsspec
    except ImportError:
        raise ValueError(f"{what}: '{url}': {_FSSPEC_HINT}") from None
    try:
        return fsspec.core.url_to_fs(url)
    except (ImportError, ValueError) as error:  # e.g. "Install s3fs to access S3"
        raise ValueError(f"{what}: cannot open '{url}': {error}") from None


def _read_url(url: str) -> bytes:
    """The bytes of the file at ``url``; :class:`ImageLoadError` as for a local file."""
    try:
        fs, path = url_filesystem(url)
    except ValueError as error:
        raise ImageLoadError(url, str(error).split(": ", 1)[-1]) from None
    try:
        info = fs.info(path)
        if info.get("type") == "directory":
            raise ImageLoadError(url, "not a regular file (a folder?); give an image file")
        if info.get("size") == 0:
            raise ImageLoadError(url, "the file is empty (0 bytes); re-copy or re-export it, or leave it out")
        return fs.cat_file(path)
    except FileNotFoundError:
        raise ImageLoadError(url, "no such file; check the URL") from None
    except PermissionError as error:
        raise ImageLoadError(url, f"permission denied ({error}); check the credentials") from None
    except OSError as error:
        raise ImageLoadError(url, f"cannot read it ({error})") from None


class ImageLoadError(ValueError):
    """An image file that cannot be turned into an RGB array.

    Attributes
    ----------
    path : pathlib.Path
        The file.
    reason : str
        What is wrong with it and what to do about it.
    """

    def __init__(self, path, reason: str) -> None:
        self.path = path if is_url(path) else Path(path)
        self.reason = str(reason)
        super().__init__(f"cannot load image '{self.path}': {self.reason}")

    def __reduce__(self):  # keep the (path, reason) signature through pickling
        return (type(self), (self.path, self.reason))


def _open_formats() -> tuple[str, ...]:
    from PIL import Image

    Image.init()
    return tuple(name for name in IMAGE_FORMATS if name in Image.OPEN)


def _scale_to_uint8(array: np.ndarray, mode: str) -> np.ndarray:
    """Greyscale samples of more than 8 bits to ``uint8``, scaled (never clipped).

    16-bit samples (modes ``I;16*``, and ``I`` when every value fits in 16 bits) are mapped
    by their bit depth, 65535 -> 255 (divide by 257). Float images (``F``) in [0, 1] are
    multiplied by 255. Anything else (negative or wider values) is stretched from its
    minimum to its maximum.
    """
    values = np.asarray(array, dtype=np.float64)
    finite = np.isfinite(values)
    if not finite.all():
        values = np.where(finite, values, 0.0)
    low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    if mode.startswith("I;16") and not mode.startswith("I;16S"):
        scaled = values / 257.0
    elif mode == "F" and low >= 0.0 and high <= 1.0:
        scaled = values * 255.0
    elif mode != "F" and low >= 0.0 and high <= 65535.0:
        scaled = values / 257.0
    elif high > low:
        scaled = (values - low) * (255.0 / (high - low))
    else:
        scaled = np.zeros_like(values)
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def _composite_on_white(rgba: np.ndarray) -> np.ndarray:
    """``(H, W, 4) uint8`` -> ``(H, W, 3) uint8``: alpha-composite over a white background."""
    alpha = rgba[:, :, 3:4].astype(np.float32) / 255.0
    rgb = rgba[:, :, :3].astype(np.float32)
    return np.clip(np.rint(rgb * alpha + 255.0 * (1.0 - alpha)), 0, 255).astype(np.uint8)


def _pil_to_rgb(image) -> np.ndarray:
    """Any PIL image (already loaded and oriented) -> ``(H, W, 3) uint8``."""
    mode = image.mode
    if mode == "RGB":
        return np.asarray(image, dtype=np.uint8)
    if mode.startswith("I") or mode == "F":
        grey = _scale_to_uint8(np.asarray(image), mode)
        return np.repeat(grey[:, :, None], 3, axis=2)
    if mode in ("1", "L"):
        grey = np.asarray(image.convert("L"), dtype=np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    has_alpha = mode in ("RGBA", "RGBa", "LA", "La", "PA") or (
        mode in ("P", "L", "RGB") and "transparency" in image.info
    )
    if has_alpha:
        return _composite_on_white(np.asarray(image.convert("RGBA"), dtype=np.uint8))
    return np.asarray(image.convert("RGB"), dtype=np.uint8)


def load_image(path) -> np.ndarray:
    """Read an image file as a ``(H, W, 3) uint8`` RGB array, the way a viewer shows it.

    - The EXIF orientation tag is applied (a portrait photo stored sideways comes back
      upright), see :func:`PIL.ImageOps.exif_transpose`.
    - Greyscale and bilevel images are repeated over the three channels; 16-bit and
      32-bit greyscale is scaled to 8 bits by its bit depth (65535 -> 255), not clipped.
    - Transparency (RGBA, LA, palette images with a transparent colour) is composited on
      a **white** background.
    - CMYK, YCbCr and palette images are converted to RGB.
    - Animated files (GIF, WebP, ...) give their first frame.

    Parameters
    ----------
    path : str or os.PathLike
        A JPEG, PNG, WebP, AVIF, BMP, TIFF, GIF, PNM, JPEG 2000, QOI, SGI, PCX or ICO file,
        or its fsspec URL (:func:`is_url`; read whole, then decoded alike). The format is
        read from the content, not from the extension.

    Returns
    -------
    (H, W, 3) uint8
        C-contiguous and writable.

    Raises
    ------
    ImageLoadError
        (a ``ValueError``) when the file is missing, empty, not an image, truncated or
        corrupt, or has more than ``deepspectral.defaults.MAX_PIXELS`` pixels (checked
        from the header before anything is decoded; PIL's own decompression-bomb error is
        reported the same way).
    """
    import warnings

    from PIL import Image, ImageOps, UnidentifiedImageError

    if is_url(path):
        source = io.BytesIO(_read_url(path))
    else:
        path = source = Path(path)
        if not path.exists():
            raise ImageLoadError(path, "no such file; check the path")
        if not path.is_file():
            raise ImageLoadError(path, "not a regular file (a folder?); give an image file")
        if path.stat().st_size == 0:
            raise ImageLoadError(path, "the file is empty (0 bytes); re-copy or re-export it, or leave it out")
    limit = int(defaults.MAX_PIXELS)
    try:
        with warnings.catch_warnings():
            # PIL warns from its own (lower) pixel limit; ours is applied just below.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            handle = Image.open(source, formats=_open_formats())
        with handle as image:
            width, height = image.size
            if width * height > limit:
                raise ImageLoadError(
                    path,
                    f"{width}x{height} = {width * height} pixels is more than the limit of {limit} "
                    "(deepspectral.defaults.MAX_PIXELS; protects against decompression bombs); "
                    "downscale the image first",
                )
            if width < 1 or height < 1:
                raise ImageLoadError(path, f"the image has no pixels ({width}x{height})")
            image.load()  # first frame only for animated files
            try:
                oriented = ImageOps.exif_transpose(image)
            except (ValueError, TypeError, KeyError, OSError, SyntaxError) as error:
                warnings.warn(f"{path}: ignoring an unreadable EXIF orientation ({error})", stacklevel=2)
                oriented = image
            rgb = _pil_to_rgb(oriented)
            # PIL hands out read-only views; give the caller an array of its own.
            return rgb.copy(order="C") if not (rgb.flags.writeable and rgb.flags.c_contiguous) else rgb
    except ImageLoadError:
        raise
    except Image.DecompressionBombError as error:
        raise ImageLoadError(
            path, f"refused as a possible decompression bomb ({error}); downscale the image first"
        ) from None
    except PermissionError as error:
        raise ImageLoadError(path, f"permission denied ({error}); check the file's permissions") from None
    except UnidentifiedImageError:
        raise ImageLoadError(
            path,
            "not an image file that can be read (unknown or unsupported format); supported: "
            + ", ".join(IMAGE_FORMATS),
        ) from None
    except (OSError, SyntaxError, ValueError, EOFError, struct.error) as error:
        raise ImageLoadError(
            path, f"the file is truncated or corrupt ({error}); re-copy or re-export it, or leave it out"
        ) from None


# ---------------------------------------------------------------------------------------
# Collecting the inputs of a command
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class InputImage:
    """One image to process and the name its outputs get.

    Attributes
    ----------
    path : pathlib.Path or str
        The image file (as given, or resolved against a list file's folder), or its URL
        (a ``str``, :func:`is_url`).
    relative : pathlib.PurePosixPath
        Output name without extension, relative to the output folder: the image's path
        relative to the folder it was found in (``a/x`` for ``folder/a/x.jpg``), or its
        stem for a file given directly or by a list file.
    """

    path: Path | str
    relative: PurePosixPath

    @property
    def name(self) -> str:
        """How messages and ``errors.json`` name the image (its output name)."""
        return self.relative.as_posix()

    def load_image(self) -> np.ndarray:
        """The decoded image, ``(H, W, 3) uint8`` (see :func:`load_image`)."""
        return load_image(self.path)


def _is_image_name(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS


def _scan_folder(folder: Path) -> list[tuple[Path, PurePosixPath]]:
    """Image files under ``folder`` (recursive), sorted by relative path. Hidden files and
    folders (names starting with ``.``, e.g. macOS ``._x.jpg``) are skipped."""
    found = []
    for root, dirs, files in os.walk(folder, followlinks=False):
        dirs[:] = [name for name in dirs if not name.startswith(".")]
        root_path = Path(root)
        for name in files:
            path = root_path / name
            if name.startswith(".") or not _is_image_name(path) or not path.is_file():
                continue
            relative = PurePosixPath(*path.relative_to(folder).parts)
            found.append((path, relative.with_suffix("")))
    found.sort(key=lambda item: (item[1].parts, item[0].name))
    return found


def _read_list(list_file: Path) -> list[tuple[Path | str, PurePosixPath]]:
    """Entries of a ``.txt`` list: one path a line, blank lines and ``#`` comments skipped,
    relative paths resolved against the list's folder. An entry may be a folder or a URL."""
    try:
        lines = list_file.read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(f"inputs: cannot read the list file '{list_file}': {error}") from None
    base = list_file.parent
    found = []
    for number, line in enumerate(lines, start=1):
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        if is_url(entry):
            found.extend(_collect_url(entry, where=f"line {number} of '{list_file}'"))
            continue
        path = Path(entry).expanduser()
        if not path.is_absolute():
            path = base / path
        if not path.exists():
            raise ValueError(f"inputs: '{entry}' (line {number} of '{list_file}') does not exist")
        if path.is_dir():
            found.extend(_scan_folder(path))
            continue
        try:
            relative = PurePosixPath(*path.relative_to(base).parts).with_suffix("")
        except ValueError:
            relative = PurePosixPath(path.stem)
        if ".." in relative.parts:
            relative = PurePosixPath(path.stem)
        found.append((path, relative))
    return found


def _scan_url_folder(fs, root: str) -> list[tuple[str, PurePosixPath]]:
    """As :func:`_scan_folder`, for a folder of an fsspec file system (URLs returned)."""
    found = []
    for path in fs.find(root):
        relative = PurePosixPath(posixpath.relpath(path, root))
        if any(part.startswith(".") for part in relative.parts) or not _is_image_name(Path(relative.name)):
            continue
        found.append((fs.unstrip_protocol(path), relative.with_suffix("")))
    found.sort(key=lambda item: (item[1].parts, PurePosixPath(item[0]).name))
    return found


def _collect_url(url: str, *, where: str | None = None) -> list[tuple[str, PurePosixPath]]:
    """Entries of a URL argument: a file, a folder (scanned) or a ``.txt`` list (entries
    URLs, or paths relative to the list's folder). ``where`` names the list line that
    gave ``url`` in messages."""
    fs, path = url_filesystem(url)
    given = f"'{url}'" + (f" ({where})" if where else "")
    try:
        if fs.isdir(path):
            return _scan_url_folder(fs, path)
        if not fs.exists(path):
            raise ValueError(f"inputs: {given} does not exist (expected an image, a folder or a .txt list)")
        if PurePosixPath(path).suffix.lower() != LIST_SUFFIX:
            return [(fs.unstrip_protocol(path), PurePosixPath(PurePosixPath(path).stem))]
        text = fs.cat_file(path).decode("utf-8-sig")
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(f"inputs: cannot read {given}: {error}") from None
    base = posixpath.dirname(fs.unstrip_protocol(path))
    found = []
    for number, line in enumerate(text.splitlines(), start=1):
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        target = entry if is_url(entry) else posixpath.join(base, entry)
        for item, relative in _collect_url(target, where=f"line {number} of '{url}'"):
            if not is_url(entry) and PurePosixPath(entry).suffix:  # a file: its path in the list
                relative = PurePosixPath(posixpath.normpath(entry)).with_suffix("")
                if ".." in relative.parts or relative.is_absolute():
                    relative = PurePosixPath(relative.name)
            found.append((item, relative))
    return found


def _unique_name(name: PurePosixPath, taken: set[str]) -> PurePosixPath:
    counter = 2
    while True:
        candidate = name.with_name(f"{name.name}_{counter}")
        if candidate.as_posix().casefold() not in taken:
            return candidate
        counter += 1


def collect_inputs(paths) -> list[InputImage]:
    """Expand command-line inputs into the images to process, with unique output names.

    Parameters
    ----------
    paths : list of str or os.PathLike
        Any mix of image files (any extension: the content decides), folders (searched
        recursively for files with an image extension, case-insensitive, in sorted order;
        hidden files and folders skipped) and ``.txt`` files listing paths one a line
        (relative paths are relative to the list's folder; blank lines and lines starting
        with ``#`` are skipped; entries may be files or folders). Each may be an fsspec
        URL (:func:`is_url`; a URL list's entries are URLs or relative to its folder).

    Returns
    -------
    list of InputImage
        In argument order. Output names keep each image's path relative to the folder it
        came from, so ``a/x.jpg`` and ``b/x.jpg`` give ``a/x`` and ``b/x``. A file met twice
        is kept once. Names that still collide (case-insensitively, as on macOS/Windows
        file systems) get ``_2``, ``_3``, ... in argument order.

    Raises
    ------
    ValueError
        When an argument does not exist, or when nothing at all is found.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    entries: list[tuple[Path | str, PurePosixPath]] = []
    for argument in paths:
        if is_url(argument):
            entries.extend(_collect_url(argument))
            continue
        path = Path(argument).expanduser()
        if not path.exists():
            raise ValueError(f"inputs: '{argument}' does not exist (expected an image, a folder or a .txt list)")
        if path.is_dir():
            entries.extend(_scan_folder(path))
        elif path.suffix.lower() == LIST_SUFFIX:
            entries.extend(_read_list(path))
        else:
            entries.append((path, PurePosixPath(path.stem)))
    if not entries:
        raise ValueError(
            f"inputs: no images found in {[str(p) for p in paths]} (image extensions: "
            f"{', '.join(sorted(IMAGE_EXTENSIONS))})"
        )
    seen_files: set = set()
    originals = {relative.as_posix().casefold() for _, relative in entries}
    taken: set[str] = set()
    result = []
    for path, relative in entries:
        key = path if is_url(path) else path.resolve()
        if key in seen_files:
            continue
        seen_files.add(key)
        folded = relative.as_posix().casefold()
        if folded in taken:
            relative = _unique_name(relative, taken | originals)
            folded = relative.as_posix().casefold()
        taken.add(folded)
        result.append(InputImage(path=path, relative=relative))
    return result
