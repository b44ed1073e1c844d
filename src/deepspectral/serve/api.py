"""The REST API: one ``POST /api/<task>`` per task and ``GET /api/health``.

===========================  ===================================================
``POST /api/localize``       JSON ``{box_xyxy, image_size, score, settings}``
``POST /api/segment``        PNG mask (8-bit grey, 255 = object)
``POST /api/matte``          PNG: RGBA cut-out, alpha or composite (``output``)
``POST /api/eigs``           ``.npz`` (:func:`deepspectral.store.save_decomposition`)
``POST /api/discover``       COCO JSON: several objects (MaskCut), RLE masks
``GET /api/health``          JSON: the model, the settings, the queue
===========================  ===================================================

The photo comes as the multipart field ``file`` or as the raw request body; settings
(:mod:`deepspectral.serve.settings`) as query parameters or form fields. Every answer
carries a ``Server-Timing`` header (seconds per stage). Errors are JSON
``{"detail": message}``: 400 for a photo or setting that cannot be used, 413 for an
upload over the limit, 503 when memory ran out; the server stays up.
"""

from __future__ import annotations

import asyncio
import re

from .._version import __version__
from .service import Service
from .settings import PARAMETERS, SettingError, parameters_of, resolve
from .uploads import UploadRejected, check_upload_size, decode_upload

__all__ = ["build_router", "ENDPOINT_TASKS", "openapi_extra"]

#: Form fields holding files, per task (the photo, and matte's composite background).
_FILE_FIELDS = {"eigs": ("file",), "localize": ("file",), "segment": ("file",), "matte": ("file", "background"), "discover": ("file",)}
#: The tasks with an endpoint and what each returns (for the OpenAPI page).
ENDPOINT_TASKS = {
    "localize": ("application/json", "The box around the main object: box_xyxy [x1, y1, x2, y2] in pixels "
                 "(x2, y2 exclusive; null when the score is below min_score), image_size [W, H], score in [0, 1]."),
    "segment": ("image/png", "The mask of the main object at the photo's size: 8-bit grey PNG, 255 = object. "
                "Header X-Deepspectral-Score: its score."),
    "matte": ("image/png", "output=cutout: RGBA PNG (straight alpha); output=alpha: 8-bit grey PNG; "
              "output=composite: RGB PNG on 'color' or on the 'background' photo."),
    "eigs": ("application/octet-stream", "The decomposition as .npz: eigenvalues (K,), eigenvectors (K, h, w) "
             "float32, image_size, input_size, crop_size, patch_size, metadata (JSON settings)."),
    "discover": ("application/json", "Several objects (MaskCut) as COCO instances: images (one), annotations "
                 "(bbox [x, y, w, h], segmentation as compressed RLE, area, score), categories; plus settings."),
}  # fmt: skip
_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")


def openapi_extra(task: str) -> dict:
    """The OpenAPI description of ``POST /api/<task>``'s query parameters and body."""
    parameters = [
        {"name": p.name, "in": "query", "required": False, "description": p.help, "schema": p.schema}
        for p in parameters_of(task)
    ]
    form = {"file": {"type": "string", "format": "binary", "description": "the photo"}}
    if "background" in _FILE_FIELDS[task]:
        form["background"] = {"type": "string", "format": "binary", "description": "output=composite: the photo to put the cut-out on"}
    form.update({p.name: {**p.schema, "description": p.help} for p in parameters_of(task)})
    binary = {"schema": {"type": "string", "format": "binary"}}
    return {
        "parameters": parameters,
        "requestBody": {
            "required": True,
            "description": "the photo as the multipart field 'file' (settings may be form fields), or as the raw body",
            "content": {
                "multipart/form-data": {"schema": {"type": "object", "required": ["file"], "properties": form}},
                "image/*": binary,
                "application/octet-stream": binary,
            },
        },
        "responses": {
            "200": {"description": ENDPOINT_TASKS[task][1], "content": {ENDPOINT_TASKS[task][0]: {}}},
            "400": {"description": "the photo or a setting cannot be used (JSON detail says why)"},
            "413": {"description": "the upload is larger than the server's limit (--max-upload-mb)"},
            "503": {"description": "the server ran out of memory on this photo"},
        },
    }


class _Upload:
    """What a request sent: the photo's bytes and name, matte's background, the settings."""

    def __init__(self) -> None:
        self.photo: bytes | None = None
        self.name = "photo"
        self.filename = "photo"
        self.background: bytes | None = None
        self.settings: dict[str, str] = {}


async def _read_upload(request, task: str, max_bytes: int) -> _Upload:
    from starlette.datastructures import UploadFile

    upload = _Upload()
    upload.settings.update(request.query_params.items())
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("multipart/form-data") or content_type.startswith("application/x-www-form-urlencoded"):
        form = await request.form(max_files=len(_FILE_FIELDS[task]), max_fields=len(PARAMETERS) + 4)
        try:
            for key, value in form.multi_items():
                if isinstance(value, UploadFile):
                    if key not in _FILE_FIELDS[task]:
                        raise UploadRejected(400, f"{key}: not a file field of /api/{task} (its file fields: {', '.join(_FILE_FIELDS[task])})")
                    data = await value.read()
                    check_upload_size(len(data), max_bytes, what=f"the file '{key}'")
                    if key == "file":
                        upload.photo = data
                        if value.filename:
                            upload.filename = value.filename.replace("\\", "/").rsplit("/", 1)[-1][:128] or upload.filename
                            stem = _SAFE_NAME.sub("_", value.filename.rsplit("/", 1)[-1].rsplit(".", 1)[0]).strip("._")
                            upload.name = stem[:64] or upload.name
                    else:
                        upload.background = data
                else:
                    upload.settings[key] = value  # a form field overrides the query parameter
        finally:
            await form.close()
        if upload.photo is None:
            raise UploadRejected(400, "no photo: send it as the multipart field 'file' (or as the raw request body)")
    else:
        upload.photo = await request.body()
        check_upload_size(len(upload.photo), max_bytes)
    return upload


def _error(status: int, message: str):
    from fastapi.responses import JSONResponse

    return JSONResponse({"detail": message}, status_code=status)


def _timing(seconds: dict) -> dict:
    """``Server-Timing`` header of a result's seconds per stage (milliseconds)."""
    return {"Server-Timing": ", ".join(f"{name};dur={1000 * value:.1f}" for name, value in seconds.items())}


def build_router(service: Service, *, max_upload_bytes: int):
    """The API's routes around ``service``; photos over ``max_upload_bytes`` get 413."""
    import time

    from fastapi import APIRouter, Request
    from fastapi.responses import JSONResponse, Response

    from .pictures import npz_bytes, png_bytes

    router = APIRouter(prefix="/api")

    async def handle(request: Request, task: str, work):
        """Read, check and queue one request; the answer of ``work(upload, settings)``
        (run in the model's queue), or a JSON error."""
        try:
            upload = await _read_upload(request, task, max_upload_bytes)
            settings = resolve(task, upload.settings, service.server_defaults)
            future = service.submit(work, upload, settings)
            return await asyncio.wrap_future(future)
        except UploadRejected as error:
            return _error(error.status, error.message)
        except SettingError as error:
            return _error(400, str(error))
        except MemoryError:
            return _error(503, "the server ran out of memory on this photo; try a smaller one or a lower --max-size")
        except ValueError as error:  # the pipeline cannot take this image (too small, grid too large)
            return _error(400, f"this photo cannot be processed: {error}")

    def photo_of(upload: _Upload):
        """The decoded photo and the seconds the decoding took."""
        start = time.perf_counter()
        image = decode_upload(upload.photo, max_bytes=max_upload_bytes, what="the photo")
        return image, {"decode": time.perf_counter() - start}

    def localize_job(upload, settings):
        image, seconds = photo_of(upload)
        found = service.localize(image, settings)
        return JSONResponse(found.record(), headers=_timing({**seconds, **found.seconds}))

    def segment_job(upload, settings):
        image, seconds = photo_of(upload)
        found = service.segment(image, settings)
        headers = {
            **_timing({**seconds, **found.seconds}),
            "X-Deepspectral-Score": f"{found.score:.6f}",
            "Content-Disposition": f'inline; filename="{upload.name}.mask.png"',
        }
        return Response(png_bytes(found.mask.astype("uint8") * 255), media_type="image/png", headers=headers)

    def matte_job(upload, settings):
        background = None
        if upload.background is not None:
            if settings.output != "composite":
                raise SettingError("background: only with output=composite")
            if settings.color is not None:
                raise SettingError("background: give a background photo or a color, not both")
            background = decode_upload(upload.background, max_bytes=max_upload_bytes, what="the background photo")
        image, seconds = photo_of(upload)
        found = service.matte(image, settings, background)
        suffix = {"alpha": "alpha", "cutout": "fg", "composite": "composite"}[settings.output]
        headers = {**_timing({**seconds, **found.seconds}), "Content-Disposition": f'inline; filename="{upload.name}.{suffix}.png"'}
        return Response(png_bytes(found.picture), media_type="image/png", headers=headers)

    def eigs_job(upload, settings):
        image, seconds = photo_of(upload)
        start = time.perf_counter()
        decomposition = service.eigs(image, settings)
        headers = {
            **_timing({**seconds, "total": time.perf_counter() - start}),
            "Content-Disposition": f'attachment; filename="{upload.name}.npz"',
        }
        return Response(npz_bytes(decomposition), media_type="application/octet-stream", headers=headers)

    def discover_job(upload, settings):
        image, seconds = photo_of(upload)
        found = service.discover(image, settings)
        answer = {**found.coco(upload.filename, image.shape[:2]), "settings": found.settings}
        return JSONResponse(answer, headers=_timing({**seconds, **found.seconds}))

    jobs = {"localize": localize_job, "segment": segment_job, "matte": matte_job, "eigs": eigs_job, "discover": discover_job}
    summaries = {
        "localize": "A box around the main object",
        "segment": "A mask of the main object",
        "matte": "Alpha matte, RGBA cut-out or composite",
        "eigs": "The Laplacian eigenvectors (.npz)",
        "discover": "Several objects (MaskCut): COCO instances",
    }
    def endpoint_of(task: str, job):
        async def endpoint(request: Request):
            return await handle(request, task, job)

        endpoint.__name__ = task
        endpoint.__annotations__["request"] = Request  # (a string under `from __future__ import annotations`)
        return endpoint

    for task, job in jobs.items():
        router.add_api_route(
            f"/{task}", endpoint_of(task, job), methods=["POST"], summary=summaries[task],
            openapi_extra=openapi_extra(task), response_class=Response,
        )  # fmt: skip

    @router.get("/health", summary="Is the server up; the model and its settings")
    async def health():
        return {"status": "ok", "version": __version__, "max_upload_mb": max_upload_bytes / 1e6, **service.info()}

    return router
