"""Turning the bytes of an uploaded photo into an image, or into a clear refusal.

Every upload goes through :func:`decode_upload`: the bytes are written to a file in a
fresh temporary folder (removed right after) and decoded there by
:func:`deepspectral.data.images.load_image`, the library's one decoder, with its
decompression-bomb guard (the pixel count is read from the header and refused above
``deepspectral.defaults.MAX_PIXELS`` before anything is decoded), EXIF orientation and
colour handling. What cannot be used becomes an :class:`UploadRejected` carrying the
HTTP status (400, or 413 for an upload over the size limit) and a one-line message.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

__all__ = ["UploadRejected", "decode_upload", "check_upload_size", "TEMP_PREFIX"]

#: Prefix of the temporary folders uploads are decoded in.
TEMP_PREFIX = "deepspectral-upload-"


class UploadRejected(ValueError):
    """An upload the server refuses.

    Attributes
    ----------
    status : int
        The HTTP status to answer (400: not a usable image; 413: too large).
    message : str
        What is wrong and what to send instead.
    """

    def __init__(self, status: int, message: str) -> None:
        self.status = int(status)
        self.message = str(message)
        super().__init__(self.message)


def check_upload_size(size: int, max_bytes: int, *, what: str = "the upload") -> None:
    """Raise :class:`UploadRejected` (413) when ``size`` bytes exceed ``max_bytes``."""
    if size > max_bytes:
        raise UploadRejected(
            413, f"{what} is {size / 1e6:.1f} MB, more than the limit of {max_bytes / 1e6:.1f} MB "
            "(deepspectral serve --max-upload-mb)",
        )  # fmt: skip


def decode_upload(data: bytes, *, max_bytes: int | None = None, what: str = "the upload") -> np.ndarray:
    """Decode an uploaded photo.

    Parameters
    ----------
    data : bytes
        The file's content as sent.
    max_bytes : int, optional
        Size limit (checked again here; the server refuses larger request bodies first).
    what : str
        How messages name the upload (``"the upload"``, ``"the background photo"``).

    Returns
    -------
    (H, W, 3) uint8
        As :func:`deepspectral.data.images.load_image` returns it.

    Raises
    ------
    UploadRejected
        Empty (400), larger than ``max_bytes`` (413), not an image, truncated or corrupt,
        or more pixels than the decompression-bomb limit (400).
    """
    from ..data.images import ImageLoadError, load_image

    if data is None or len(data) == 0:
        raise UploadRejected(400, f"{what} is empty (0 bytes): send a photo (JPEG, PNG, WebP, ...)")
    if max_bytes is not None:
        check_upload_size(len(data), max_bytes, what=what)
    with tempfile.TemporaryDirectory(prefix=TEMP_PREFIX) as folder:
        path = Path(folder) / "upload"
        path.write_bytes(data)
        try:
            return load_image(path)
        except ImageLoadError as error:
            raise UploadRejected(400, f"{what} cannot be used: {error.reason}") from None
