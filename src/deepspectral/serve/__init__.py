"""``deepspectral serve``: a local web page and REST API around one loaded backbone.

Modules: :mod:`.settings` (what a request may set, once for the API, its docs and the
page), :mod:`.uploads` (bytes → image, or a clear 400 / 413), :mod:`.service` (the
backbone, the queue of jobs, the tasks), :mod:`.pictures` (PNG / ``.npz`` bytes,
checkerboards, side-by-side pictures), :mod:`.limits` (the request-size limit),
:mod:`.api` (the REST routes), :mod:`.page` (the Gradio page), :mod:`.app` (the FastAPI
application of them all).

Needs the ``serve`` extra (FastAPI, Uvicorn, Gradio, python-multipart):
:func:`require_serve` says so in one line when it is missing.
"""

from __future__ import annotations

import importlib.util

__all__ = ["require_serve", "INSTALL_HINT", "REQUIRED_MODULES", "HOST", "PORT", "MAX_UPLOAD_MB"]

#: Address the server listens on: this machine only, unless ``--host`` says otherwise.
HOST = "127.0.0.1"
#: Port of the server (Gradio's usual one).
PORT = 7860
#: Largest photo accepted, MB (10^6 bytes): a 24-megapixel JPEG is about 10 MB.
MAX_UPLOAD_MB = 25.0

#: The modules of the ``serve`` extra (import name → package name).
REQUIRED_MODULES = {"fastapi": "fastapi", "uvicorn": "uvicorn", "multipart": "python-multipart", "gradio": "gradio"}
INSTALL_HINT = 'pip install "deepspectral[serve]"'


def require_serve(*, page: bool = True) -> None:
    """Raise ``ImportError`` naming the ``serve`` extra when a module it needs is missing
    (Gradio only with ``page``), without importing any of them."""
    missing = [
        package for module, package in REQUIRED_MODULES.items()
        if (page or module != "gradio") and importlib.util.find_spec(module) is None
    ]  # fmt: skip
    if missing:
        raise ImportError(f"deepspectral serve needs {', '.join(missing)}: {INSTALL_HINT}")
