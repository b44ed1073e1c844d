"""``deepspectral serve`` (issue #16): the REST API, the web page, the limits.

Fast tests check the pieces (settings, uploads, the size limit, the queue, the CLI's
refusals). The slow ones start the server as a user would, ``python -m deepspectral serve``
in a subprocess on a free port with random-weight ViT-S/16 weights, and talk to it with a
real HTTP client (every endpoint against the library's own functions on the same photo,
bad uploads, 50 requests from 4 clients with the memory watched) and with a headless
Chromium (Selenium): upload a photo, run "mask", the result appears. The browser test
skips with a reason where Chromium or its driver is absent; its screenshot goes to
``$DEEPSPECTRAL_SERVE_SCREENSHOT`` when set (``docs/serve.png`` is made that way).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from deepspectral.cli import main

pytest.importorskip("fastapi", reason='the serve extra is not installed (pip install "deepspectral[serve]")')
pytest.importorskip("httpx", reason="httpx (the test extra) is not installed")

sys.path.insert(0, str(Path(__file__).parent))
from oracle import shared_data_dir  # noqa: E402

#: --max-size of the test server: small, so that each request takes a fraction of a second.
MAX_SIZE = 128
#: --max-upload-mb of the test server.
MAX_UPLOAD_MB = 1.0
#: Seconds the server may take to start (imports of torch and Gradio on a loaded 2-core VM).
START_TIMEOUT = 300


# ---------------------------------------------------------------------------------------
# Photos and broken uploads
# ---------------------------------------------------------------------------------------


def _photo(seed: int = 0, size=(120, 160)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    image = np.full((*size, 3), rng.integers(0, 255, 3), np.uint8)
    image[30:90, 50:120] = rng.integers(0, 255, 3)
    return np.clip(image + rng.normal(0, 6, image.shape), 0, 255).astype(np.uint8)


def _encode(image: np.ndarray, fmt: str = "PNG", **options) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _bomb_png(side: int = 20_000) -> bytes:
    """A PNG whose header claims side × side pixels (400 million for 20,000): refused
    from the header, nothing decoded."""
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)  # 8-bit greyscale
    row = b"\x00" * (side + 1)
    data = zlib.compress(row * 4)  # a few rows: the rest is missing, it is never read
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", data) + _png_chunk(b"IEND", b"")


def _bad_uploads() -> dict[str, tuple[bytes, int, str]]:
    """name → (body, expected status, a word of the message)."""
    jpeg = _encode(_photo(1), "JPEG", quality=90)
    return {
        "empty": (b"", 400, "empty"),
        "truncated jpeg": (jpeg[: len(jpeg) // 2], 400, "truncated"),
        "text": (b"this is not a photo\n" * 20, 400, "not an image"),
        "1x1 pixel": (_encode(np.zeros((1, 1, 3), np.uint8)), 400, "smaller than one patch"),
        "decompression bomb": (_bomb_png(), 400, "pixels"),
    }


# ---------------------------------------------------------------------------------------
# The pieces (fast)
# ---------------------------------------------------------------------------------------


def test_settings_are_completed_with_the_server_defaults():
    from deepspectral.serve.settings import ServerDefaults, resolve

    server = ServerDefaults(method="tokencut", tau=0.3)
    settings = resolve("localize", {"min_score": "0.25"}, server)
    assert (settings.method, settings.method_params, settings.min_score) == ("tokencut", {"tau": 0.3, "eps": 1e-5}, 0.25)
    settings = resolve("segment", {"method": "dsm", "knn_lambda": "4", "n_eigenvectors": "3"}, server)
    assert (settings.method, settings.method_params, settings.knn_lambda, settings.n_eigenvectors) == ("dsm", {}, 4.0, 3)
    assert settings.refine == "crf"  # the paper's recipe's own refinement
    assert resolve("segment", {"method": "tokencut"}).refine == "bilateral"
    assert resolve("segment", {"refine": ""}).refine == "crf"  # an empty field is absent
    assert resolve("matte", {}).method == "dsm"  # matting works on the paper's decomposition
    found = resolve("discover", {}, server)  # MaskCut's defaults, not the server's TokenCut ones
    assert (found.method, found.method_params, found.max_objects, found.min_score, found.refine, found.resize) == (
        "tokencut", {"tau": 0.15, "eps": 1e-5}, 3, None, "crf", 0)
    found = resolve("discover", {"max_objects": "auto", "min_score": "0.6", "tau": "0.3", "refine": "none", "resize": "64"})
    assert (found.max_objects, found.min_score, found.method_params["tau"], found.refine, found.resize) == ("auto", 0.6, 0.3, "none", 64)


@pytest.mark.parametrize(
    "task, given, word",
    [
        ("localize", {"colour": "1"}, "not a parameter"),
        ("localize", {"refine": "crf"}, "not a parameter"),
        ("localize", {"method": "lost"}, "expected one of"),
        ("localize", {"tau": "0.3"}, "tokencut only"),
        ("localize", {"method": "tokencut", "knn_lambda": "3"}, "dsm only"),
        ("localize", {"min_score": "1.5"}, "[0, 1]"),
        ("localize", {"min_score": "nan"}, "[0, 1]"),
        ("eigs", {"n_eigenvectors": "1"}, "[2, 16]"),
        ("eigs", {"n_eigenvectors": "100"}, "[2, 16]"),
        ("eigs", {"n_eigenvectors": "2.5"}, "integer"),
        ("segment", {"method": "tokencut", "tau": "1"}, "tau"),
        ("segment", {"method": "tokencut", "eps": "0"}, "eps"),
        ("matte", {"output": "jpeg"}, "alpha, cutout, composite"),
        ("matte", {"color": "300,0,0"}, "R,G,B"),
        ("matte", {"radius": "-1"}, "radius"),
        ("matte", {"decontaminate": "maybe"}, "true or false"),
        ("discover", {"method": "dsm"}, "not a parameter"),
        ("discover", {"max_objects": "11"}, "[1, 10]"),
        ("discover", {"max_objects": "many"}, "[1, 10]"),
        ("discover", {"refine": "bilateral"}, "none, crf"),
        ("discover", {"resize": "5000"}, "[0, 1024]"),
    ],
)
def test_bad_settings_are_refused_naming_the_parameter(task, given, word):
    from deepspectral.serve.settings import SettingError, resolve

    with pytest.raises(SettingError) as error:
        resolve(task, given)
    name = list(given)[-1]  # the parameter at fault is the last one given
    assert str(error.value).startswith(f"{name}: ") and word in str(error.value)


@pytest.mark.parametrize("text", ["0,177,64", "#00b140", "00B140", "rgb(0, 177, 64)", "rgba(0, 177, 64, 1)", "rgba(0.4, 177.2, 63.7, 0.5)"])
def test_colours_as_browsers_and_people_write_them(text):
    from deepspectral.serve.settings import parse_color

    assert parse_color(text) == (0, 177, 64)


def test_checkerboard():
    from deepspectral.serve.pictures import CHECKER_SQUARE, on_checkerboard

    rng = np.random.default_rng(0)
    rgba = rng.integers(0, 256, (40, 50, 4)).astype(np.uint8)
    out = on_checkerboard(rgba)
    for y, x in [(0, 0), (0, CHECKER_SQUARE), (CHECKER_SQUARE, CHECKER_SQUARE), (39, 49), (17, 3)]:
        board = 255 if (y // CHECKER_SQUARE + x // CHECKER_SQUARE) % 2 == 0 else 204
        a = rgba[y, x, 3] / 255
        expected = np.rint(rgba[y, x, :3] * a + board * (1 - a))
        np.testing.assert_array_equal(out[y, x], expected)


@pytest.mark.parametrize("name", list(_bad_uploads()))
def test_bad_upload_is_refused_and_leaves_no_file(name, tmp_path, monkeypatch):
    import tempfile

    from deepspectral.serve.uploads import UploadRejected, decode_upload

    body, status, word = _bad_uploads()[name]
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    if name == "1x1 pixel":  # a valid image: the pipeline refuses it (see the API tests)
        assert decode_upload(body).shape == (1, 1, 3)
    else:
        with pytest.raises(UploadRejected) as error:
            decode_upload(body, max_bytes=10**7)
        assert error.value.status == status and word in error.value.message
    assert list(tmp_path.iterdir()) == []


def test_upload_over_the_limit_is_413():
    from deepspectral.serve.uploads import UploadRejected, decode_upload

    with pytest.raises(UploadRejected) as error:
        decode_upload(_encode(_photo()), max_bytes=100)
    assert error.value.status == 413 and "--max-upload-mb" in error.value.message


def test_body_limit_refuses_large_bodies_declared_or_chunked():
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route
    from starlette.testclient import TestClient

    from deepspectral.serve.limits import BodyLimit

    async def echo(request):
        return PlainTextResponse(str(len(await request.body())))

    app = BodyLimit(Starlette(routes=[Route("/api/x", echo, methods=["POST"]), Route("/page", echo, methods=["POST"])]), 1000, prefix="/api/")
    with TestClient(app) as client:
        assert client.post("/api/x", content=b"a" * 1000).text == "1000"
        refused = client.post("/api/x", content=b"a" * 1001)
        assert refused.status_code == 413 and "limit" in refused.json()["detail"]
        chunks = (b"a" * 300 for _ in range(5))  # no Content-Length: counted as it comes
        assert client.post("/api/x", content=chunks).status_code == 413
        assert client.post("/page", content=b"a" * 5000).text == "5000"  # another prefix


def test_the_queue_runs_one_job_at_a_time():
    from deepspectral.serve.service import Service

    service = Service(object(), max_size=64)
    running, overlaps, lock = [0], [], threading.Lock()

    def job(index):
        with lock:
            running[0] += 1
            overlaps.append(running[0])
        time.sleep(0.01)
        with lock:
            running[0] -= 1
        return index

    with ThreadPoolExecutor(8) as clients:
        futures = [clients.submit(lambda i=i: service.submit(job, i).result()) for i in range(24)]
        assert [f.result() for f in futures] == list(range(24))
    service.close()
    assert max(overlaps) == 1 and service.served == 24 and service.queued == 0


@pytest.mark.parametrize(
    "argv, word",
    [
        (["--port", "70000"], "--port"),
        (["--n-eigenvectors", "20"], "--n-eigenvectors"),
        (["--tau", "0.3"], "--tau"),
        (["--method", "tokencut", "--knn-lambda", "3"], "--knn-lambda"),
        (["--examples", "/no/such/folder"], "--examples"),
        (["--weights", "/no/such/file.pth"], "--weights"),
        (["--host", "no.such.host.invalid"], "--host"),
    ],
)
def test_serve_refuses_bad_options_before_loading_anything(argv, word, capsys):
    code = main(["serve", *argv])
    err = capsys.readouterr().err
    assert code == 2 and word in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_serve_refuses_a_port_in_use(capsys):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        code = main(["serve", "--port", str(busy.getsockname()[1]), "--no-page"])
    err = capsys.readouterr().err
    assert code == 2 and "--port" in err


def test_missing_serve_extra_names_it(monkeypatch, capsys):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "gradio" else real(name, *a))
    code = main(["serve"])
    err = capsys.readouterr().err
    assert code == 2 and 'pip install "deepspectral[serve]"' in err and "gradio" in err
    from deepspectral.serve import require_serve

    require_serve(page=False)  # the API alone does not need Gradio


def test_api_in_process(random_weights):
    """The API without a server process (fast): a box, and a broken photo answered 400."""
    from starlette.testclient import TestClient

    from deepspectral import Backbone, decompose, detect
    from deepspectral.serve.app import create_app
    from deepspectral.serve.service import Service

    backbone = Backbone("dino_vits16", weights=random_weights, device="cpu")
    photo = _photo(3)
    app = create_app(Service(backbone, max_size=64), max_upload_bytes=10**6, page=False)
    with TestClient(app) as client:
        answer = client.post("/api/localize", content=_encode(photo)).json()
        assert client.post("/api/localize", content=b"GIF89a broken").status_code == 400
    found = detect(decompose(backbone.extract(photo, max_size=64), photo))
    assert answer["box_xyxy"] == list(found.box) and answer["score"] == pytest.approx(found.score, abs=1e-6)
    assert answer["image_size"] == [160, 120]


# ---------------------------------------------------------------------------------------
# The server in a subprocess (slow)
# ---------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


class Server:
    def __init__(self, process, url: str, workdir: Path, tmpdir: Path, log: Path) -> None:
        self.process, self.url, self.workdir, self.tmpdir, self.log = process, url, workdir, tmpdir, log

    def client(self, **kwargs):
        import httpx

        return httpx.Client(base_url=self.url, timeout=120, **kwargs)


@pytest.fixture(scope="module")
def examples(tmp_path_factory) -> Path:
    """The photos of the page's examples: a DAVIS frame when the shared data is there."""
    folder = tmp_path_factory.mktemp("examples")
    frame = shared_data_dir() / "davis2016-val" / "JPEGImages" / "blackswan" / "00000.jpg"
    if frame.is_file():
        shutil.copy(frame, folder / "blackswan.jpg")
    else:
        Image.fromarray(_photo(5, (240, 320))).save(folder / "shapes.png")
    return folder


@pytest.fixture(scope="module")
def server(random_weights, examples, tmp_path_factory):
    """``deepspectral serve`` in a subprocess, its working folder and temporary folder
    empty folders of their own (checked when it stops: nothing written outside the
    temporary folder, the temporary folder removed)."""
    workdir = tmp_path_factory.mktemp("cwd")
    tmpdir = tmp_path_factory.mktemp("tmp")
    log = tmp_path_factory.mktemp("log") / "server.log"
    port = _free_port()
    env = {**os.environ, "TMPDIR": str(tmpdir), "PYTHONUNBUFFERED": "1"}
    src = Path(__file__).resolve().parents[1] / "src"
    env["PYTHONPATH"] = os.pathsep.join([str(src), env.get("PYTHONPATH", "")]).strip(os.pathsep)
    argv = [
        sys.executable, "-m", "deepspectral", "serve", "--weights", str(random_weights), "--device", "cpu",
        "--max-size", str(MAX_SIZE), "--port", str(port), "--max-upload-mb", str(MAX_UPLOAD_MB),
        "--examples", str(examples),
    ]  # fmt: skip
    with open(log, "wb") as output:
        process = subprocess.Popen(argv, cwd=workdir, env=env, stdout=output, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    started = Server(process, url, workdir, tmpdir, log)
    import httpx

    deadline = time.monotonic() + START_TIMEOUT
    while True:
        if process.poll() is not None:
            pytest.fail(f"the server exited with {process.returncode}:\n{log.read_text()}")
        try:
            if httpx.get(url + "/api/health", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"the server did not start in {START_TIMEOUT} s:\n{log.read_text()}")
        time.sleep(0.5)
    yield started
    process.send_signal(signal.SIGINT)
    try:
        code = process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        raise
    assert code == 0, log.read_text()
    assert list(workdir.iterdir()) == [], "the server wrote in its working folder"
    assert [p.name for p in tmpdir.iterdir() if p.name.startswith("deepspectral")] == [], "temporary folder left"


@pytest.fixture(scope="module")
def library(random_weights):
    """The library's own results, to compare the server's with."""
    from deepspectral import Backbone

    return Backbone("dino_vits16", weights=random_weights, device="cpu")


@pytest.mark.slow
def test_health_and_docs(server):
    with server.client() as client:
        health = client.get("/api/health").json()
        assert health["status"] == "ok" and health["backbone"] == "dino_vits16" and health["max_size"] == MAX_SIZE
        assert health["max_upload_mb"] == MAX_UPLOAD_MB
        schema = client.get("/openapi.json").json()
        assert client.get("/docs").status_code == 200
        page = client.get("/")
    assert set(schema["paths"]) == {"/api/localize", "/api/segment", "/api/matte", "/api/eigs", "/api/discover", "/api/health"}
    params = {p["name"] for p in schema["paths"]["/api/segment"]["post"]["parameters"]}
    assert params == {"method", "knn_lambda", "n_eigenvectors", "tau", "eps", "min_score", "refine"}
    assert "multipart/form-data" in schema["paths"]["/api/matte"]["post"]["requestBody"]["content"]
    assert page.status_code == 200 and "<html" in page.text.lower()


@pytest.mark.slow
@pytest.mark.parametrize("method", ["dsm", "tokencut"])
def test_localize_matches_the_library(server, library, method):
    from deepspectral import decompose, detect
    from deepspectral.recipes import get_recipe

    photo = _photo(7)
    with server.client() as client:
        multipart = client.post("/api/localize", params={"method": method}, files={"file": ("p.png", _encode(photo), "image/png")})
        raw = client.post(f"/api/localize?method={method}", content=_encode(photo), headers={"content-type": "image/png"})
        form = client.post("/api/localize", data={"method": method}, files={"file": ("p.png", _encode(photo))})
    assert multipart.status_code == 200, multipart.text
    assert multipart.json() == raw.json() == form.json()
    fit = get_recipe(method).fit_for("boxes")
    found = detect(decompose(library.extract(photo, max_size=MAX_SIZE, fit=fit), photo, method=method))
    answer = multipart.json()
    assert answer["box_xyxy"] == [int(v) for v in found.box]
    assert answer["score"] == pytest.approx(found.score, abs=1e-6)
    assert answer["image_size"] == [160, 120] and answer["settings"]["method"] == method
    assert "features;dur=" in multipart.headers["server-timing"]


@pytest.mark.slow
def test_segment_matches_the_library(server, library):
    from deepspectral import decompose, segment_object

    photo = _photo(8)
    with server.client() as client:
        answer = client.post("/api/segment", params={"refine": "none"}, files={"file": ("p.png", _encode(photo))})
        high = client.post("/api/segment", params={"refine": "none", "min_score": "1"}, content=_encode(photo))
    assert answer.status_code == 200 and answer.headers["content-type"] == "image/png"
    mask = np.asarray(Image.open(io.BytesIO(answer.content)))
    expected = segment_object(decompose(library.extract(photo, max_size=MAX_SIZE), photo), photo, refine="none")
    assert mask.shape == (120, 160) and set(np.unique(mask)) <= {0, 255}
    np.testing.assert_array_equal(mask == 255, expected)
    assert 0 <= float(answer.headers["x-deepspectral-score"]) <= 1
    assert not np.asarray(Image.open(io.BytesIO(high.content))).any()  # below min_score: empty


@pytest.mark.slow
def test_matte_outputs(server):
    photo, back = _photo(9), _photo(10, (60, 90))
    with server.client() as client:
        def post(params, files=None):
            files = {"file": ("p.jpg", _encode(photo, "JPEG", quality=95)), **(files or {})}
            answer = client.post("/api/matte", params=params, files=files)
            assert answer.status_code == 200, answer.text
            return np.asarray(Image.open(io.BytesIO(answer.content)))

        cutout, alpha = post({}), post({"output": "alpha"})
        green = post({"output": "composite", "color": "#00ff00", "decontaminate": "false"})
        on_photo = post({"output": "composite"}, {"background": ("b.png", _encode(back))})
        both = client.post("/api/matte", params={"output": "composite", "color": "1,2,3"},
                           files={"file": ("p.png", _encode(photo)), "background": ("b.png", _encode(back))})  # fmt: skip
        wrong = client.post("/api/matte", files={"file": ("p.png", _encode(photo)), "background": ("b.png", _encode(back))})
    assert cutout.shape == (120, 160, 4) and alpha.shape == (120, 160) and green.shape == on_photo.shape == (120, 160, 3)
    np.testing.assert_array_equal(cutout[..., 3], alpha)
    clear = alpha == 0
    assert clear.any()
    np.testing.assert_array_equal(green[clear], np.broadcast_to([0, 255, 0], green[clear].shape))
    assert both.status_code == 400 and "not both" in both.json()["detail"]
    assert wrong.status_code == 400 and "output=composite" in wrong.json()["detail"]


@pytest.mark.slow
def test_eigs_npz_matches_the_library(server, library, tmp_path):
    from deepspectral import decompose
    from deepspectral.store import load_decomposition

    photo = _photo(11)
    with server.client() as client:
        answer = client.post("/api/eigs", params={"n_eigenvectors": "4"}, files={"file": ("my photo.png", _encode(photo))})
    assert answer.status_code == 200 and 'filename="my_photo.npz"' in answer.headers["content-disposition"]
    (tmp_path / "e.npz").write_bytes(answer.content)
    got = load_decomposition(tmp_path / "e.npz")
    expected = decompose(library.extract(photo, max_size=MAX_SIZE), photo, n_eigenvectors=4)
    assert got.image_size == (120, 160) and got.eigenvectors.shape == expected.eigenvectors.shape
    np.testing.assert_allclose(got.eigenvalues, expected.eigenvalues, atol=1e-6)


@pytest.mark.slow
def test_discover_matches_the_library(server, library):
    from deepspectral import defaults
    from deepspectral.instances import decode_rle
    from deepspectral.tasks.discover import discover

    photo = _photo(12)
    with server.client() as client:
        answer = client.post("/api/discover", params={"max_objects": "2", "refine": "none"}, files={"file": ("shop/p 1.png", _encode(photo))})
        square = client.post("/api/discover", params={"resize": "64", "max_objects": "auto"}, content=_encode(photo))
    assert answer.status_code == 200, answer.text
    coco = answer.json()
    features = library.extract(photo, max_size=min(MAX_SIZE, defaults.DISCOVER_MAX_SIZE), fit="resize")
    expected = discover(features, photo, max_objects=2, refine="none")
    assert coco["images"] == [{"id": 1, "file_name": "p 1.png", "width": 160, "height": 120}]
    assert len(coco["annotations"]) == len(expected) >= 1
    for got, instance in zip(coco["annotations"], expected):
        np.testing.assert_array_equal(decode_rle(got["segmentation"]), instance.mask)
        x1, y1, x2, y2 = instance.box
        assert got["bbox"] == [x1, y1, x2 - x1, y2 - y1] and got["score"] == pytest.approx(instance.score, abs=1e-6)
    assert coco["settings"]["method"] == "maskcut" and coco["settings"]["max_objects"] == 2
    assert square.status_code == 200, square.text
    assert square.json()["images"][0]["width"] == 160  # the square is MaskCut's input; masks come back


@pytest.mark.slow
@pytest.mark.parametrize("name", list(_bad_uploads()))
def test_bad_upload_gets_400_and_the_server_stays_up(server, name):
    body, status, word = _bad_uploads()[name]
    with server.client() as client:
        raw = client.post("/api/segment", content=body)
        multipart = client.post("/api/localize", files={"file": ("x.jpg", body, "image/jpeg")})
        health = client.get("/api/health")
    for answer in (raw, multipart):
        assert answer.status_code == status, answer.text
        assert word in answer.json()["detail"]
    assert health.status_code == 200


@pytest.mark.slow
def test_oversize_upload_gets_413_and_the_server_stays_up(server):
    big = os.urandom(int(MAX_UPLOAD_MB * 1e6) + 200_000)
    with server.client() as client:
        raw = client.post("/api/localize", content=big)
        multipart = client.post("/api/matte", files={"file": ("big.jpg", big)})
        chunked = client.post("/api/eigs", content=(big[i : i + 65536] for i in range(0, len(big), 65536)))
        other = client.post("/api/localize", files={"other": ("x.png", _encode(_photo()))})
        no_photo = client.post("/api/localize", data={"method": "dsm"})
        health = client.get("/api/health")
    for answer in (raw, multipart, chunked):
        assert answer.status_code == 413 and "limit" in answer.json()["detail"], answer.text
    assert other.status_code == 400 and "not a file field" in other.json()["detail"]
    assert no_photo.status_code == 400 and "'file'" in no_photo.json()["detail"]
    assert health.status_code == 200


@pytest.mark.slow
def test_bad_setting_gets_400(server):
    with server.client() as client:
        answer = client.post("/api/localize", params={"tau": "0.5"}, content=_encode(_photo()))
    assert answer.status_code == 400 and answer.json()["detail"].startswith("tau: applies to method tokencut only")


@pytest.mark.slow
def test_concurrent_clients_all_answered_and_memory_stays_flat(server):
    """50 requests from 4 clients: every one answered right, the health check answered
    meanwhile, and the server's RSS after them within 10 % of its RSS after the first 5."""
    photos = [_encode(_photo(100 + i)) for i in range(5)]
    tasks = ["localize", "segment", "eigs", "localize", "segment"]

    def request(index: int):
        with server.client() as client:
            answer = client.post(
                f"/api/{tasks[index % 5]}", params={"refine": "none"} if tasks[index % 5] == "segment" else {},
                files={"file": (f"{index}.png", photos[index % 5])},
            )  # fmt: skip
            return answer.status_code, len(answer.content)

    first = [request(i) for i in range(5)]
    rss_first = _rss_kb(server.process.pid)
    with ThreadPoolExecutor(4) as clients:
        futures = [clients.submit(request, i) for i in range(5, 50)]
        with server.client() as client:
            health = client.get("/api/health", timeout=10)
        answers = first + [f.result() for f in futures]
    rss_after = _rss_kb(server.process.pid)
    assert [code for code, _ in answers] == [200] * 50 and all(size > 0 for _, size in answers)
    assert health.status_code == 200
    assert abs(rss_after - rss_first) <= 0.10 * rss_first, (rss_first, rss_after)


def _browser():
    """A headless Chromium driven by Selenium, or a skip saying what is missing."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium (the test extra) is not installed")
    browser = next((shutil.which(name) for name in ("chromium", "chromium-browser", "google-chrome") if shutil.which(name)), None)
    driver = shutil.which("chromedriver")
    if browser is None or driver is None:
        pytest.skip("no Chromium and chromedriver on this machine (Debian: apt-get install chromium chromium-driver)")
    from selenium.webdriver.chrome.service import Service as DriverService

    options = webdriver.ChromeOptions()
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1000", "--disable-gpu"):
        options.add_argument(argument)
    options.binary_location = browser
    return webdriver.Chrome(service=DriverService(driver), options=options)


@pytest.mark.slow
def test_page_in_a_real_browser(server, examples, tmp_path):
    """Open the page, upload a photo, run "mask": the result picture and its downloads appear."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as seen
    from selenium.webdriver.support.ui import WebDriverWait

    photo = next(examples.iterdir())
    browser = _browser()
    try:
        browser.get(server.url + "/")
        wait = WebDriverWait(browser, 120)
        upload = wait.until(seen.presence_of_element_located((By.CSS_SELECTOR, "#photos input[type=file]")))
        upload.send_keys(str(photo))
        wait.until(seen.text_to_be_present_in_element((By.CSS_SELECTOR, "#photos"), photo.stem))
        choice = wait.until(seen.presence_of_element_located((By.CSS_SELECTOR, '#task label[data-testid="mask-radio-label"] input')))
        browser.execute_script("arguments[0].click()", choice)  # (the label's text may take a plain click)
        assert choice.is_selected()
        wait.until(seen.element_to_be_clickable((By.CSS_SELECTOR, "#run"))).click()
        result = wait.until(seen.visibility_of_element_located((By.CSS_SELECTOR, "#results img")))
        wait.until(seen.text_to_be_present_in_element((By.CSS_SELECTOR, "#downloads"), f"{photo.stem}.mask"))
        wait.until(seen.text_to_be_present_in_element((By.CSS_SELECTOR, "#details"), "score"))
        # the picture is served from the server's own temporary folder
        assert f"/gradio_api/file={server.tmpdir}/deepspectral-serve-" in result.get_attribute("src")
        assert browser.execute_script("return arguments[0].naturalWidth", result) > 0
        time.sleep(1)  # let the picture settle before the screenshot
        shot = Path(os.environ.get("DEEPSPECTRAL_SERVE_SCREENSHOT") or tmp_path / "serve.png")
        shot.parent.mkdir(parents=True, exist_ok=True)
        assert browser.save_screenshot(str(shot))
    finally:
        browser.quit()


def test_every_page_task_without_a_browser(random_weights, tmp_path):
    """What the page's *Run* does, for each task, two photos and a broken one: a row of
    pictures per photo, the result files, the error of the broken one."""
    from deepspectral import Backbone
    from deepspectral.serve.page import PAGE_TASKS, run_page_task
    from deepspectral.serve.service import Service

    service = Service(Backbone("dino_vits16", weights=random_weights, device="cpu"), max_size=64)
    paths = []
    for index, data in enumerate([_encode(_photo(20)), _encode(_photo(21), "JPEG"), b"broken"]):
        paths.append(tmp_path / f"photo {index}.png")
        paths[-1].write_bytes(data)
    expected_files = {
        "eigenvectors": [".npz", ".eigs.png"], "box": [".box.json", ".box.png"], "mask": [".mask.png", ".overlay.png"],
        "matte": [".alpha.png"], "cut-out": [".fg.png"], "composite": [".composite.png"],
        "instances": [".instances.json", ".instances.png"],
    }  # fmt: skip
    for label in PAGE_TASKS:
        out = tmp_path / label
        out.mkdir()
        given = {"refine": "none"} if label == "mask" else {}
        rows, files, details = run_page_task(service, [str(p) for p in paths], label, given, out_dir=out, max_bytes=10**6)
        assert len(rows) == 2 and all(panel.ndim == 3 and panel.shape[2] == 3 for row in rows for panel in row)
        names = sorted(Path(f).name for f in files)
        assert names == sorted([f"photo_{i}{suffix}" for i in (0, 1) for suffix in expected_files[label]] + ["results.json"])
        assert "cannot be used" in details[2]["error"] and details[2]["photo"] == "photo_2"
        assert json.loads((out / "results.json").read_text()) == json.loads(json.dumps(details))
    service.close()


def test_old_result_folders_are_swept(tmp_path):
    from deepspectral.serve.page import sweep_results

    old, new, other = tmp_path / "results-old", tmp_path / "results-new", tmp_path / "gradio"
    for folder in (old, new, other):
        folder.mkdir()
        (folder / "a.png").write_bytes(b"x")
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    os.utime(other, (time.time() - 7200, time.time() - 7200))
    assert sweep_results(tmp_path, 3600) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gradio", "results-new"]
