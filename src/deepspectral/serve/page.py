"""The web page (Gradio Blocks, mounted on the FastAPI application at ``/``).

Upload one or more photos (or pick an example), choose the task and the recipe with its
main settings, press *Run*: each photo's result appears beside it (eigenvector panels, the
box drawn on it, the mask laid over it, the matte, the RGBA cut-out on a checkerboard, the
composite on a colour or a second photo, the instances of several objects), the files of every result can be downloaded
(PNG, JSON, ``.npz``), and a table lists scores, boxes and timings. The photos go through
the same decoding and checks as the REST API (:func:`~deepspectral.serve.uploads.decode_upload`)
and the same queue (:meth:`~deepspectral.serve.service.Service.submit`). Result files are
written in a temporary folder (``work_dir``), which Gradio cleans up.
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

from .. import defaults
from .pictures import DISPLAY_HEIGHT, as_rgb, npz_bytes, on_checkerboard, png_bytes
from .service import Service
from .settings import MAX_EIGENVECTORS, MAX_RADIUS, SettingError, resolve
from .uploads import UploadRejected, check_upload_size, decode_upload

__all__ = ["PAGE_TASKS", "build_page", "mount_page", "run_page_task", "sweep_results"]

#: The page's tasks: label → (API task, matte output).
PAGE_TASKS = {
    "eigenvectors": ("eigs", None),
    "box": ("localize", None),
    "mask": ("segment", None),
    "matte": ("matte", "alpha"),
    "cut-out": ("matte", "cutout"),
    "composite": ("matte", "composite"),
    "instances": ("discover", None),
}
PAGE_TASK = "mask"
#: Seconds between Gradio's sweeps of its temporary files, and the age at which they go.
CACHE_SWEEP = (600, 3600)
#: Eigenvector figures to download are capped at this height (as ``deepspectral eigs``).
FIGURE_MAX_HEIGHT = 768
_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")
_MATTE_SUFFIX = {"alpha": "alpha", "cutout": "fg", "composite": "composite"}


def sweep_results(work_dir: Path, max_age: float) -> int:
    """Remove the ``results-*`` folders of earlier runs older than ``max_age`` seconds
    from ``work_dir`` (Gradio serves copies of the files from its own cache); returns how
    many went."""
    import shutil
    import time

    removed = 0
    for folder in Path(work_dir).glob("results-*"):
        try:
            if time.time() - folder.stat().st_mtime > max_age:
                shutil.rmtree(folder, ignore_errors=True)
                removed += 1
        except OSError:
            continue
    return removed


def _stem(path: str, index: int, taken: set) -> str:
    stem = _SAFE_NAME.sub("_", Path(path).stem).strip("._")[:64] or f"photo{index + 1}"
    name, counter = stem, 2
    while name in taken:
        name, counter = f"{stem}_{counter}", counter + 1
    taken.add(name)
    return name


def _job(service: Service, task: str, data: bytes, settings, background: bytes | None, max_bytes: int):
    """Decode the photo and run ``task`` on it (inside the service's queue)."""
    image = decode_upload(data, max_bytes=max_bytes, what="the photo")
    if task == "eigs":
        return image, service.eigs(image, settings)
    if task == "localize":
        return image, service.localize(image, settings)
    if task == "segment":
        return image, service.segment(image, settings)
    if task == "discover":
        return image, service.discover(image, settings)
    back = decode_upload(background, max_bytes=max_bytes, what="the background photo") if background else None
    return image, service.matte(image, settings, back)


def run_page_task(
    service: Service, paths: list, label: str, given: dict, *, out_dir: Path, max_bytes: int, background: str | None = None
) -> tuple[list, list, list]:
    """What *Run* does, without Gradio: the task ``label`` (:data:`PAGE_TASKS`) on the
    photos at ``paths`` with the settings ``given`` (text, as the API takes them).

    Returns
    -------
    rows : list of list of (H, W, 3) uint8
        Per photo: the photo and its result (the eigenvector figure alone: it starts
        with the photo), for :func:`deepspectral.viz.picture_grid`.
    files : list of str
        The result files written in ``out_dir``.
    details : list of dict
        Per photo: the numbers (score, box, sizes, settings, seconds) or the error.

    Raises
    ------
    SettingError
        A setting that cannot be used (nothing is run).
    """
    from ..viz import draw_box, eigenvector_figure, overlay_mask

    task, output = PAGE_TASKS[label]
    if output is not None:
        given = {**given, "output": output}
    settings = resolve(task, given, service.server_defaults)
    background_data = None
    if task == "matte" and output == "composite" and background:
        background_data = Path(background).read_bytes()
        check_upload_size(len(background_data), max_bytes, what="the background photo")
        settings = _without_color(settings)
    rows, files, details, taken = [], [], [], set()
    for index, path in enumerate(paths):
        name = _stem(path, index, taken)
        try:
            data = Path(path).read_bytes()
            check_upload_size(len(data), max_bytes, what=f"'{name}'")
            image, found = service.submit(_job, service, task, data, settings, background_data, max_bytes).result()
        except UploadRejected as error:
            details.append({"photo": name, "error": error.message})
            continue
        except SettingError:  # the same for every photo (e.g. the CRF is not installed)
            raise
        except (ValueError, MemoryError) as error:
            details.append({"photo": name, "error": f"this photo cannot be processed: {error}"})
            continue
        record = {"photo": name, "task": label, "image_size": [int(image.shape[1]), int(image.shape[0])]}
        if task == "eigs":
            figure = eigenvector_figure(image, found, max_height=FIGURE_MAX_HEIGHT)
            row = [eigenvector_figure(image, found, max_height=DISPLAY_HEIGHT)]
            files += [_write(out_dir / f"{name}.npz", npz_bytes(found)), _write(out_dir / f"{name}.eigs.png", png_bytes(figure))]
            record.update(eigenvalues=[round(float(v), 6) for v in found.eigenvalues], settings=settings.record())
        elif task == "localize":
            picture = image if found.box_xyxy is None else draw_box(image, found.box_xyxy)
            row = [image, picture]
            record.update(found.record(), seconds=found.seconds)
            files += [_write_json(out_dir / f"{name}.box.json", {"photo": name, **found.record()}), _write(out_dir / f"{name}.box.png", png_bytes(picture))]
        elif task == "segment":
            overlay = overlay_mask(image, found.mask)
            row = [image, overlay]
            record.update(score=found.score, empty=not bool(found.mask.any()), settings=found.settings, seconds=found.seconds)
            files += [_write(out_dir / f"{name}.mask.png", png_bytes(found.mask.astype("uint8") * 255)), _write(out_dir / f"{name}.overlay.png", png_bytes(overlay))]
        elif task == "discover":
            picture = _instances_picture(image, found.instances)
            row = [image, picture]
            record.update(
                instances=[{"box_xyxy": list(i.box), "area": i.area, "score": round(float(i.score), 6)} for i in found.instances],
                settings=found.settings, seconds=found.seconds,
            )  # fmt: skip
            coco = found.coco(Path(path).name, image.shape[:2])
            files += [_write_json(out_dir / f"{name}.instances.json", coco), _write(out_dir / f"{name}.instances.png", png_bytes(picture))]
        else:
            picture = found.picture
            row = [image, on_checkerboard(picture) if picture.ndim == 3 and picture.shape[2] == 4 else as_rgb(picture)]
            record.update(settings=found.settings, seconds=found.seconds)
            files.append(_write(out_dir / f"{name}.{_MATTE_SUFFIX[settings.output]}.png", png_bytes(picture)))
        rows.append(row)
        details.append(record)
    if details:
        files.append(_write_json(out_dir / "results.json", details))
    return rows, files, details


def _instances_picture(image, instances):
    """The photo with each instance laid over it and boxed, in the colours of
    ``deepspectral discover --save-viz``."""
    from ..cli.discover import PALETTE
    from ..viz import draw_box, overlay_mask

    canvas = image
    for index, instance in enumerate(instances):
        colour = PALETTE[index % len(PALETTE)]
        canvas = draw_box(overlay_mask(canvas, instance.mask, colour, alpha=0.45), instance.box, colour)
    return canvas


def _without_color(settings):
    from dataclasses import replace

    return replace(settings, color=None)


def _write(path: Path, data: bytes) -> str:
    from ..files import atomic_write_bytes

    return str(atomic_write_bytes(path, data))


def _write_json(path: Path, obj) -> str:
    from ..files import atomic_write_json

    return str(atomic_write_json(path, obj))


def build_page(service: Service, *, max_upload_bytes: int, examples: list | None = None, work_dir: str | Path | None = None):
    """The Gradio Blocks of the page (not yet mounted).

    Parameters
    ----------
    service : Service
    max_upload_bytes : int
        Largest photo accepted.
    examples : list of path, optional
        Photos offered as examples.
    work_dir : path, optional
        Folder of the result files (default: Gradio's temporary folder).
    """
    import gradio as gr

    from ..viz import picture_grid

    server = service.server_defaults
    work_dir = Path(work_dir) if work_dir is not None else None
    info = service.info()

    def run(files, label, method, knn_lambda, n_eigenvectors, tau, eps, min_score, refine, radius, max_objects, color, background):
        paths = [f if isinstance(f, str) else getattr(f, "name", str(f)) for f in (files or [])]
        if not paths:
            raise gr.Error("Upload a photo (or pick an example) first.")
        task = PAGE_TASKS[label][0]
        given: dict = {}
        if task == "discover":  # MaskCut's own tau, eps; its refinements are crf and none
            given["max_objects"] = max_objects
            if min_score:
                given["min_score"] = min_score
            if refine in defaults.DISCOVER_REFINEMENTS:
                given["refine"] = refine
        elif task == "matte" or method == defaults.METHOD:
            given.update(knn_lambda=knn_lambda, n_eigenvectors=n_eigenvectors)
        else:
            given.update(tau=tau, eps=eps)
        if task not in ("matte", "discover"):
            given["method"] = method
        if task in ("localize", "segment"):
            given["min_score"] = min_score
        if task == "segment" and refine != "default":
            given["refine"] = refine
        if task == "matte":
            given["radius"] = radius
            if label == "composite" and color:
                given["color"] = color
        given = {key: "" if value is None else str(value) for key, value in given.items()}
        if work_dir is not None:
            sweep_results(work_dir, CACHE_SWEEP[1])
        out_dir = Path(tempfile.mkdtemp(prefix="results-", dir=work_dir))
        background_path = background if isinstance(background, str) or background is None else getattr(background, "name", None)
        try:
            rows, written, details = run_page_task(
                service, paths, label, given, out_dir=out_dir, max_bytes=max_upload_bytes, background=background_path
            )
        except SettingError as error:
            raise gr.Error(str(error)) from None
        for record in details:
            if "error" in record:
                gr.Warning(f"{record['photo']}: {record['error']}")
        if not rows:
            raise gr.Error("No photo could be processed: " + "; ".join(f"{r['photo']}: {r['error']}" for r in details))
        return picture_grid(rows, row_height=min(DISPLAY_HEIGHT, min(row[0].shape[0] for row in rows))), written, details

    def recipe_visibility(method):
        dsm = method == defaults.METHOD
        return gr.update(visible=dsm), gr.update(visible=dsm), gr.update(visible=not dsm), gr.update(visible=not dsm)

    title = "deepspectral"
    with gr.Blocks(title=title, analytics_enabled=False, delete_cache=CACHE_SWEEP) as page:
        gr.Markdown(
            f"# {title}\n"
            f"Deep Spectral Methods on your photos: boxes, masks, mattes and the Laplacian eigenvectors "
            f"of the main object, and instances of several objects. Backbone **{info['backbone']}** on **{info['device']}**, photos up to "
            f"{max_upload_bytes / 1e6:.0f} MB, worked on at {service.max_size or 'full'} px at most. "
            f"The same tasks as a REST API: [/docs](/docs)."
        )
        with gr.Row():
            with gr.Column(scale=1):
                photos = gr.File(label="Photos", file_count="multiple", file_types=["image"], elem_id="photos")
                if examples:
                    gr.Examples(
                        examples=[[[str(path)]] for path in examples], inputs=[photos],
                        example_labels=[Path(path).name for path in examples], label="Example photos",
                    )  # fmt: skip
                task = gr.Radio(list(PAGE_TASKS), value=PAGE_TASK, label="Task", elem_id="task")
                method = gr.Radio(
                    list(defaults.METHOD_NAMES), value=server.method, elem_id="method",
                    label="Recipe (matting: dsm; instances: MaskCut, TokenCut's cut repeated)",
                )  # fmt: skip
                with gr.Accordion("Settings", open=False):
                    dsm = server.method == defaults.METHOD
                    knn_lambda = gr.Slider(0, 50, value=server.knn_lambda, step=0.5, label="knn_lambda: weight of the colour affinity (dsm)", visible=dsm)
                    n_eigenvectors = gr.Slider(2, MAX_EIGENVECTORS, value=server.n_eigenvectors, step=1, label="n_eigenvectors (dsm)", visible=dsm)
                    tau = gr.Slider(-1, 0.99, value=server.tau, step=0.01, label="tau: cosine threshold (tokencut)", visible=not dsm)
                    eps = gr.Number(value=server.eps, label="eps: weight of the other pairs (tokencut)", visible=not dsm)
                    min_score = gr.Slider(0, 1, value=server.min_score, step=0.01, label="min_score: below it, no object (box, mask)")
                    refine = gr.Radio(["default", *defaults.REFINEMENTS], value="default", label="Mask refinement (default: crf for dsm, bilateral for tokencut)")
                    radius = gr.Slider(0, MAX_RADIUS, value=8, step=1, label="Matte: guided-filter radius (pixels)")
                    max_objects = gr.Dropdown(
                        ["auto", *map(str, range(1, defaults.AUTO_MAX_OBJECTS + 1))], value=str(defaults.MAX_OBJECTS),
                        label="Instances: objects per photo (MaskCut; auto: until a cut scores below min_score)",
                    )  # fmt: skip
                with gr.Accordion("Composite background", open=False):
                    color = gr.ColorPicker(value="#00b140", label="Colour")
                    background = gr.File(label="…or a second photo", file_count="single", file_types=["image"])
                button = gr.Button("Run", variant="primary", elem_id="run")
            with gr.Column(scale=2):
                results = gr.Image(label="Results: each photo and its result", type="numpy", format="png", interactive=False, elem_id="results")
                downloads = gr.File(label="Downloads", file_count="multiple", interactive=False, elem_id="downloads")
                table = gr.JSON(label="Scores, boxes, timings", elem_id="details")
        method.change(recipe_visibility, inputs=[method], outputs=[knn_lambda, n_eigenvectors, tau, eps], api_name=False)
        button.click(
            run,
            inputs=[photos, task, method, knn_lambda, n_eigenvectors, tau, eps, min_score, refine, radius, max_objects, color, background],
            outputs=[results, downloads, table],
            api_name=False,
        )
    return page


def mount_page(app, service: Service, *, max_upload_bytes: int, examples: list | None = None, work_dir: str | Path | None = None) -> None:
    """Mount :func:`build_page` on ``app`` at ``/``, uploads limited to ``max_upload_bytes``
    a file."""
    import inspect

    import gradio as gr

    page = build_page(service, max_upload_bytes=max_upload_bytes, examples=examples, work_dir=work_dir)
    options = dict(
        max_file_size=max_upload_bytes, show_error=True, ssr_mode=False,
        allowed_paths=[str(Path(p).resolve()) for p in (examples or [])] or None,
        # off where this Gradio has them: no footer links, no run history kept in the
        # browser, no MCP server
        footer_links=[], run_history=False, mcp_server=False,
    )  # fmt: skip
    accepted = inspect.signature(gr.mount_gradio_app).parameters
    gr.mount_gradio_app(app, page, path="/", **{name: value for name, value in options.items() if name in accepted})
