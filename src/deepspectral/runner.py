"""TEMPORARY shim while the redesign of issue #11 is merged: use deepspectral.files / deepspectral.engine."""
from .engine import ERRORS_FILE, RunSummary, run_batch  # noqa: F401
from .files import (  # noqa: F401
    atomic_savez,
    atomic_write,
    atomic_write_bytes,
    atomic_write_json,
    save_image_atomic,
    save_png_atomic,
)
from .errors import FATAL_ERRORS, PER_IMAGE_ERRORS


def _expected_errors():
    return PER_IMAGE_ERRORS


def _fatal_errors():
    return FATAL_ERRORS
