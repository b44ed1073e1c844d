"""``deepspectral serve``: a local web page and REST API around one loaded backbone.

::

    deepspectral serve                                  # http://127.0.0.1:7860 (page), /docs (API)
    deepspectral serve --weights dino.pth --port 8000 --max-upload-mb 10
    deepspectral serve --method tokencut --examples photos/
    deepspectral serve --no-page                        # the REST API alone (no Gradio)

Needs the ``serve`` extra (``pip install "deepspectral[serve]"``). Nothing heavy is
imported at module level (the CLI's ``--help`` stays fast).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from .common import EXIT_OK, UsageError
from .options import add_backbone, add_decomposition, add_method, backbone_from_args, method_from_args, number_type, positive_float

__all__ = ["register", "run", "MAX_PORT"]

#: Largest TCP port number.
MAX_PORT = 65535


def register(commands, formatter) -> None:
    """Add the ``serve`` command (see :data:`deepspectral.cli.COMMAND_MODULES`)."""
    from ..serve import HOST, MAX_UPLOAD_MB, PORT  # constants only: imports nothing heavy

    parser = commands.add_parser(
        "serve",
        formatter_class=formatter,
        help="a local web page and REST API for every task (pip install \"deepspectral[serve]\")",
        description="Loads the backbone once and serves, on http://HOST:PORT, a web page (upload photos, "
        "choose the task and recipe, see and download the results) and a REST API: POST /api/localize "
        "(JSON box), /api/segment (PNG mask), /api/matte (RGBA PNG cut-out, alpha or composite), "
        "/api/eigs (.npz), /api/discover (COCO JSON, several objects), GET /api/health; OpenAPI documentation at /docs. Requests use the model one "
        "at a time (a queue). The recipe and decomposition options below are the defaults of the "
        "requests that do not set them.",
    )
    server = parser.add_argument_group("server")
    server.add_argument(
        "--host",
        default=HOST,
        help="address to listen on; the default answers this machine only, 0.0.0.0 every network "
        "interface (anyone who can reach the machine can then use the server: there is no login)",
    )
    server.add_argument("--port", type=number_type(int, 1), default=PORT, help=f"port to listen on (1..{MAX_PORT})")
    server.add_argument(
        "--max-upload-mb",
        type=positive_float,
        default=MAX_UPLOAD_MB,
        help="largest photo accepted, in MB; a larger upload gets HTTP 413",
    )
    server.add_argument(
        "--examples",
        type=Path,
        default=None,
        metavar="DIR",
        help="a folder of photos the web page offers as examples",
    )
    server.add_argument("--no-page", dest="page", action="store_false", help="serve the REST API only (no web page; Gradio not needed)")
    add_backbone(parser)
    add_decomposition(parser)
    add_method(parser)
    parser.set_defaults(run=run)


def _check_port_free(host: str, port: int) -> None:
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as error:
        raise UsageError(f"--host: cannot use '{host}': {error.strerror}") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as error:
            raise UsageError(f"--port: cannot listen on {host}:{port}: {error.strerror or error} (pick another --port)") from None


def _server_defaults(args: argparse.Namespace):
    from ..serve.settings import ServerDefaults

    method, params = method_from_args(args)
    try:
        return ServerDefaults(
            method=method,
            knn_lambda=args.knn_lambda,
            n_eigenvectors=args.n_eigenvectors,
            min_score=args.min_score,
            **params,
        )
    except ValueError as error:
        name, _, message = str(error).partition(": ")
        raise UsageError(f"--{name.replace('_', '-')}: {message}") from None


def run(args: argparse.Namespace) -> int:
    """Run ``deepspectral serve`` on parsed arguments; returns the exit status when the
    server stops (Ctrl-C)."""
    from ..serve import require_serve

    if args.port > MAX_PORT:
        raise UsageError(f"--port: expected a port number in 1..{MAX_PORT}, got {args.port}")
    try:
        require_serve(page=args.page)
    except ImportError as error:
        raise UsageError(str(error)) from None
    server_defaults = _server_defaults(args)
    if args.weights is not None and not args.weights.is_file():
        raise UsageError(f"--weights: no such file: '{args.weights}'")
    examples = []
    if args.examples is not None:
        if not args.page:
            raise UsageError("--examples: the examples are the web page's; leave out --no-page")
        from ..data.images import collect_inputs

        if not args.examples.is_dir():
            raise UsageError(f"--examples: '{args.examples}' is not a folder")
        try:
            examples = [item.path for item in collect_inputs([args.examples])]
        except ValueError as error:
            raise UsageError(f"--examples: {error}") from None
    _check_port_free(args.host, args.port)

    import tempfile
    import time

    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="deepspectral-serve-") as work:
        # every file Gradio writes (uploads, results) goes in this session's temporary folder
        os.environ["GRADIO_TEMP_DIR"] = str(Path(work) / "gradio")
        os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
        import uvicorn

        from ..serve.app import create_app
        from ..serve.service import Service

        backbone = backbone_from_args(args)
        try:
            service = Service(backbone, max_size=args.max_size or None, server_defaults=server_defaults, eigen_backend=args.eigen_backend)
        except ValueError as error:
            raise UsageError(str(error)) from None
        service.warm_up()
        max_bytes = int(args.max_upload_mb * 1e6)
        app = create_app(service, max_upload_bytes=max_bytes, page=args.page, examples=examples, work_dir=work)
        host = f"[{args.host}]" if ":" in args.host else args.host
        print(
            f"deepspectral serve: ready in {time.perf_counter() - start:.1f} s: "
            f"{'page http://' + host + ':' + str(args.port) + '/ , ' if args.page else ''}"
            f"API docs http://{host}:{args.port}/docs (Ctrl-C stops)",
            file=sys.stderr,
            flush=True,
        )
        if args.host not in ("127.0.0.1", "localhost", "::1"):
            print(f"deepspectral serve: listening on {args.host}: anyone who can reach this machine can use it", file=sys.stderr)
        uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return EXIT_OK
