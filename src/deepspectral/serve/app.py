"""The FastAPI application: the REST API (:mod:`.api`), its OpenAPI page at ``/docs``, the
request-size limits (:mod:`.limits`) and the web page (:mod:`.page`) mounted at ``/``."""

from __future__ import annotations

from pathlib import Path

from .._version import __version__
from .service import Service

__all__ = ["create_app", "FORM_OVERHEAD_BYTES", "PAGE_MAX_FILES"]

#: Room for the multipart boundaries and the settings' form fields above the photo's own
#: size in an API request body.
FORM_OVERHEAD_BYTES = 64 * 1024
#: Photos the page accepts in one upload (each within the size limit).
PAGE_MAX_FILES = 8

_DESCRIPTION = """Deep Spectral Methods on your photos: the box, the mask, the alpha matte and
the Laplacian eigenvectors of the main object, from a self-supervised ViT's features.

Send the photo as the multipart field `file` (or as the raw request body); settings as
query parameters or form fields. One request uses the model at a time (the others wait in
a queue). Errors are JSON `{"detail": message}` with status 400 (a photo or setting that
cannot be used), 413 (over the upload limit) or 503 (out of memory)."""


def create_app(
    service: Service,
    *,
    max_upload_bytes: int,
    page: bool = True,
    examples: list | None = None,
    work_dir: str | Path | None = None,
):
    """The application serving ``service``.

    Parameters
    ----------
    service : Service
        The loaded backbone and its queue (closed when the application shuts down).
    max_upload_bytes : int
        Largest photo accepted (bytes); a larger request body gets 413.
    page : bool, default True
        Mount the Gradio page at ``/`` (False: the REST API alone, no Gradio needed).
    examples : list of path, optional
        Photos the page offers as examples.
    work_dir : path, optional
        Temporary folder of the page's result files (the default: a fresh one under the
        system's temporary folder).

    Returns
    -------
    fastapi.FastAPI
    """
    import contextlib

    from fastapi import FastAPI

    from .api import build_router
    from .limits import BodyLimit

    if max_upload_bytes < 1:
        raise ValueError(f"max_upload_bytes: expected a positive integer, got {max_upload_bytes!r}")

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        service.close()

    app = FastAPI(title="deepspectral", version=__version__, description=_DESCRIPTION, docs_url="/docs", redoc_url=None, lifespan=lifespan)
    limit_mb = f"{max_upload_bytes / 1e6:.1f}"
    app.add_middleware(
        BodyLimit, max_bytes=max_upload_bytes + FORM_OVERHEAD_BYTES, prefix="/api/",
        message="the request body is {size} MB, more than the limit of " + limit_mb + " MB (deepspectral serve --max-upload-mb)",
    )  # fmt: skip
    app.add_middleware(
        BodyLimit, max_bytes=PAGE_MAX_FILES * max_upload_bytes + FORM_OVERHEAD_BYTES,
        message=f"the upload is {{size}} MB, more than {PAGE_MAX_FILES} photos of {limit_mb} MB",
    )  # fmt: skip
    app.include_router(build_router(service, max_upload_bytes=max_upload_bytes))
    if page:
        from .page import mount_page

        mount_page(app, service, max_upload_bytes=max_upload_bytes, examples=examples or [], work_dir=work_dir)
    return app
