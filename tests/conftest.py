"""Fixtures shared by the test files."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def random_weights(tmp_path_factory) -> Path:
    """A random-initialised ViT-S/16 state dict on disk, for ``--weights`` (the name has a
    space on purpose)."""
    from deepspectral.backbones import save_random_weights

    return save_random_weights(tmp_path_factory.mktemp("weights") / "random vit_s16.pth", "dino_vits16", seed=0)
