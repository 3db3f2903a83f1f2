"""Shared fixtures for the generation tests: the cirrus-tiny-gpt2 bundle and a loaded generator."""
from __future__ import annotations

from pathlib import Path

import pytest

from functions.core.generation.onnx_generator import OnnxGenerator

TINY = "cirrus-tiny-gpt2"


@pytest.fixture(scope="session")
def tiny_bundle() -> Path:
    """The demo generator bundle, built once into the shared .cache/bundles (only this one)."""
    from conftest import BUNDLES_DIR
    from model_export.defaults import ensure_default_bundles

    return ensure_default_bundles(BUNDLES_DIR, [TINY])[TINY]


@pytest.fixture(scope="session")
def tiny_generator(tiny_bundle: Path) -> OnnxGenerator:
    return OnnxGenerator(tiny_bundle, intra_op_threads=1)
