"""Shared fixtures for the generation tests: the cirrus-tiny-gpt2 bundle and a loaded generator."""
from __future__ import annotations

from pathlib import Path

import pytest

from functions.core.generation.onnx_generator import OnnxGenerator

TINY = "cirrus-tiny-gpt2"


@pytest.fixture(scope="session")
def tiny_bundle(bundles_dir: Path) -> Path:
    """The demo generator bundle from the session's default bundles (tests/conftest.py)."""
    return bundles_dir / TINY


@pytest.fixture(scope="session")
def tiny_generator(tiny_bundle: Path) -> OnnxGenerator:
    return OnnxGenerator(tiny_bundle, intra_op_threads=1)
