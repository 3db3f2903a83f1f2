"""Fixtures shared by the unit tests, built on the production and local/ pieces.

AWS is moto's in-process ``mock_aws``; stores are provisioned by ``local.aws.provision`` from the
description the stack deploys; models are the real default bundles (``bundles_dir``, tests/conftest.py).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from moto import mock_aws

from batch_support import Pipeline
from functions.core import auth
from functions.core.aws.base import reset_clients
from functions.core.batch import job_store as jobs
from functions.core.inference import model_store
from functions.core.inference.generator import OnnxGenerator
from functions.core.inference.model_store import ModelStore
from functions.core.settings import Settings, get_settings
from generation_support import TINY
from local.aws import provision
from local.config import LocalConfig


@pytest.fixture(scope="session")
def local_store(bundles_dir: Path) -> ModelStore:
    """One store over the local bundles for the whole session: each model is loaded once."""
    return ModelStore(Settings(model_dir=str(bundles_dir)))


def _reset_all() -> None:
    get_settings.cache_clear()
    model_store.reset()
    auth.reset()
    reset_clients()


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch):
    """Set CIRRUS_* variables for one test; settings, stores and clients are rebuilt around it."""
    for var in [k for k in __import__("os").environ if k.startswith("CIRRUS_")]:
        monkeypatch.delenv(var)
    _reset_all()

    def set_env(**values: Any) -> Settings:
        for name, value in Settings(**values).env(only=values).items():  # the stack's own encoding
            monkeypatch.setenv(name, value)
        get_settings.cache_clear()
        return get_settings()

    yield set_env
    _reset_all()


@pytest.fixture
def light_api(env, local_store: ModelStore, bundles_dir: Path, monkeypatch: pytest.MonkeyPatch):
    """The API over the local bundles, with the session's already-loaded models."""
    env(model_dir=str(bundles_dir))
    monkeypatch.setattr(model_store, "_store", local_store)
    return local_store


@pytest.fixture
def aws(aws_env):
    """moto in-process for S3, DynamoDB and KMS (fake credentials from conftest), fresh clients."""
    reset_clients()
    with mock_aws():
        yield
    reset_clients()



@pytest.fixture
def pipeline(aws, env, local_store, bundles_dir: Path, monkeypatch: pytest.MonkeyPatch):
    """Stores on moto, settings pointing at them, the session's loaded models; small chunks."""
    made = provision(None, LocalConfig(stage="unit", visibility_timeout_s=60))
    env(model_dir=str(bundles_dir), data_bucket=made.buckets["Data"], jobs_table=made.tables["Jobs"],
        work_queue_url=made.queues["Work"].url, batch_chunk_lines=100,
        max_receive_count=made.queues["Work"].max_receive_count)
    monkeypatch.setattr(model_store, "_store", local_store)
    jobs.reset()
    yield Pipeline(bucket=made.buckets["Data"], table=made.tables["Jobs"], events=made.queues["JobEvents"],
                   work=made.queues["Work"])
    jobs.reset()


@pytest.fixture(scope="session")
def tiny_bundle(bundles_dir: Path) -> Path:
    """The demo generator bundle from the session's default bundles (tests/conftest.py)."""
    return bundles_dir / TINY


@pytest.fixture(scope="session")
def tiny_generator(tiny_bundle: Path) -> OnnxGenerator:
    return OnnxGenerator(tiny_bundle, intra_op_threads=1)
