"""Shared test fixtures: the default bundles (built once, cached on disk) and fake AWS credentials."""
from __future__ import annotations

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
BUNDLES_DIR = REPO_ROOT / ".cache" / "bundles"

FAKE_AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_SECURITY_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_REGION": "us-east-1",
}


@pytest.fixture(scope="session")
def bundles_dir() -> Path:
    """``.cache/bundles`` holding every default bundle (``<name>/``), built on first use.

    A bundle already there that verifies (sha256) and matches its recipe is reused, so only the
    first session on a machine pays for the export and the classifier's fine-tuning.
    """
    from model_export.defaults import ensure_default_bundles

    ensure_default_bundles(BUNDLES_DIR)
    return BUNDLES_DIR


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Fake credentials and a region, and no real endpoint/profile, so nothing can reach AWS."""
    for key, value in FAKE_AWS_ENV.items():
        monkeypatch.setenv(key, value)
    for key in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(key, raising=False)
    return dict(FAKE_AWS_ENV)
