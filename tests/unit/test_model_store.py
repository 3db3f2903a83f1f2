"""Model store: bundles from the S3 registry (moto, SSE-KMS) verified by sha256, refused and retried cleanly."""
from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys

import boto3
import pytest
from botocore.stub import Stubber

from functions.core.inference import model_store
from functions.core.aws import base
from functions.core.errors import BundleError, ModelNotFound
from functions.core.inference.manifest import Manifest
from light_support import (EMBEDDER, REGION, api_event, artifacts_bucket, assert_error, call_api, move_pointer,
                           overwrite, publish)


@pytest.fixture
def s3_env(env, aws, tmp_path):
    """Settings pointing at an SSE-KMS artifacts bucket on moto, with an empty /tmp cache."""
    bucket = artifacts_bucket()
    env(artifacts_bucket=bucket, cache_dir=str(tmp_path / "cache"), models=[EMBEDDER])
    return bucket


def embed(text: str = "hello"):
    return call_api(api_event("POST", "/v1/embeddings", {"model": EMBEDDER, "input": text}))


def corrupt(data: bytes) -> bytes:
    mid = len(data) // 2
    return data[:mid] + bytes([data[mid] ^ 0xFF]) + data[mid + 1:]


def test_model_loads_from_the_registry_pointer_once_per_container(s3_env, bundles_dir, tmp_path):
    pointer = publish(s3_env, bundles_dir / EMBEDDER)
    status, body, headers = embed()
    assert status == 200, body
    assert headers["X-Cirrus-Model-Version"] == pointer["version"]
    cached = tmp_path / "cache" / EMBEDDER / pointer["version"]
    assert (cached / "model.onnx").is_file()
    first = model_store.get_model(EMBEDDER)
    # Warm: the same object, and S3 is not asked again (the objects could even vanish).
    boto3.client("s3", region_name=REGION).delete_object(Bucket=s3_env, Key=f"models/{EMBEDDER}/current.json")
    assert model_store.get_model(EMBEDDER) is first
    assert embed()[0] == 200


def test_corrupted_bundle_is_refused_with_503_then_the_next_request_retries_cleanly(s3_env, bundles_dir, tmp_path):
    bundle = bundles_dir / EMBEDDER
    published = publish(s3_env, bundle)
    good = (bundle / "model.onnx").read_bytes()
    overwrite(s3_env, EMBEDDER, published["version"], "model.onnx", corrupt(good))
    status, body, _ = embed()
    err = assert_error(status, body, 503, "bundle_invalid")
    assert "sha256 mismatch for model.onnx" in err["message"]
    # Nothing of the refused bundle stays in the cache: no partial or final folder.
    assert not any((tmp_path / "cache" / EMBEDDER).iterdir())
    assert model_store.loaded_versions() == {}

    overwrite(s3_env, EMBEDDER, published["version"], "model.onnx", good)  # the operator repairs it
    status, body, _ = embed()
    assert status == 200, body
    assert model_store.loaded_versions() == {EMBEDDER: published["version"]}


def test_manifest_not_matching_the_pointer_digest_is_refused(s3_env, bundles_dir):
    published = publish(s3_env, bundles_dir / EMBEDDER)
    manifest = json.loads((bundles_dir / EMBEDDER / "manifest.json").read_text())
    manifest["normalize"] = not manifest["normalize"]  # tampered after publishing
    overwrite(s3_env, EMBEDDER, published["version"], "manifest.json", json.dumps(manifest).encode())
    with pytest.raises(BundleError, match="manifest sha256 does not match"):
        model_store.get_model(EMBEDDER)


def test_file_missing_from_s3_is_a_bundle_error(s3_env, bundles_dir):
    published = publish(s3_env, bundles_dir / EMBEDDER)
    boto3.client("s3", region_name=REGION).delete_object(
        Bucket=s3_env, Key=f"models/{EMBEDDER}/{published['version']}/tokenizer.json")
    assert_error(*embed()[:2], 503, "bundle_invalid")


def test_pointer_to_a_version_whose_manifest_names_another_is_refused(s3_env, bundles_dir):
    published = publish(s3_env, bundles_dir / EMBEDDER)
    manifest = (bundles_dir / EMBEDDER / "manifest.json").read_bytes()
    overwrite(s3_env, EMBEDDER, "v-other", "manifest.json", manifest)  # copied under another version
    move_pointer(s3_env, EMBEDDER, "v-other", published["manifest_sha256"])
    with pytest.raises(BundleError, match="manifest names"):
        model_store.get_model(EMBEDDER)


def test_malformed_pointer_is_a_bundle_error(s3_env):
    boto3.client("s3", region_name=REGION).put_object(
        Bucket=s3_env, Key=f"models/{EMBEDDER}/current.json", Body=b'{"version": "../../etc"}')
    with pytest.raises(BundleError, match="malformed"):
        model_store.get_model(EMBEDDER)


def test_model_without_registry_entry_is_404(s3_env):
    assert_error(*embed()[:2], 404, "model_not_found")


def test_unknown_model_names_leave_no_lock_behind(s3_env):
    store = model_store.store()
    for i in range(50):
        with pytest.raises(ModelNotFound):
            store.get(f"no-such-model-{i}")
    assert store.lock_count == 0


def test_damaged_cache_is_downloaded_again(s3_env, bundles_dir, tmp_path):
    pointer = publish(s3_env, bundles_dir / EMBEDDER)
    assert embed()[0] == 200
    cached = tmp_path / "cache" / EMBEDDER / pointer["version"] / "model.onnx"
    cached.write_bytes(corrupt(cached.read_bytes()))
    model_store.reset()  # a new handler instance in the same sandbox: /tmp survives, memory does not
    assert embed()[0] == 200
    assert cached.read_bytes() == (bundles_dir / EMBEDDER / "model.onnx").read_bytes()


def test_s3_throttling_is_429_with_retry_after(s3_env, monkeypatch):
    client = base.client("s3")
    stubber = Stubber(client)
    for _ in range(3):  # the standard retry mode tries three times before giving up
        stubber.add_client_error("get_object", service_error_code="SlowDown", http_status_code=503)
    with stubber:
        status, body, headers = embed()
    assert_error(status, body, 429, "rate_limited")
    assert headers.get("Retry-After") == "1"


def test_s3_outage_is_503_dependency_unavailable(s3_env):
    stubber = Stubber(base.client("s3"))
    for _ in range(3):
        stubber.add_client_error("get_object", service_error_code="InternalError", http_status_code=500)
    with stubber:
        assert_error(*embed()[:2], 503, "dependency_unavailable")


def test_models_route_lists_registry_models_from_s3(env, aws, bundles_dir, tmp_path):
    bucket = artifacts_bucket()
    env(artifacts_bucket=bucket, cache_dir=str(tmp_path))
    publish(bucket, bundles_dir / EMBEDDER)
    boto3.client("s3", region_name=REGION).put_object(Bucket=bucket, Key="models/broken/current.json", Body=b"{}")
    status, body, _ = call_api(api_event("GET", "/v1/models"))
    assert status == 200
    by_id = {m["id"]: m for m in body["data"]}
    assert by_id[EMBEDDER]["cirrus"]["version"] == Manifest.read(bundles_dir / EMBEDDER).version
    assert by_id[EMBEDDER]["cirrus"]["status"] == "available"  # listed without downloading the model
    assert by_id["broken"]["cirrus"] == {"path": "light", "status": "unavailable", "error": "bundle_invalid"}
    assert not any(tmp_path.iterdir())


def test_local_bundle_with_a_bad_file_is_refused(env, bundles_dir, tmp_path):
    import shutil
    local = tmp_path / EMBEDDER
    shutil.copytree(bundles_dir / EMBEDDER, local)
    (local / "tokenizer.json").write_text("{}")
    env(model_dir=str(tmp_path))
    with pytest.raises(BundleError, match="tokenizer.json"):
        model_store.get_model(EMBEDDER)
    with pytest.raises(ModelNotFound):
        model_store.get_model("absent")


def test_store_needs_a_model_source(env):
    env()
    with pytest.raises(RuntimeError, match="no model source"):
        model_store.store()



def test_a_registry_manifest_that_leaves_out_a_runtime_file_is_refused(s3_env, bundles_dir):
    # The manifest's sha256 matches the pointer, but it does not list tokenizer.json: the runtime
    # would open a file nothing vouches for, so the bundle is refused before a session is built.
    published = publish(s3_env, bundles_dir / EMBEDDER)
    manifest = json.loads((bundles_dir / EMBEDDER / "manifest.json").read_text())
    del manifest["files"]["tokenizer.json"]
    raw = json.dumps(manifest).encode()
    overwrite(s3_env, EMBEDDER, published["version"], "manifest.json", raw)
    move_pointer(s3_env, EMBEDDER, published["version"], hashlib.sha256(raw).hexdigest())
    err = assert_error(*embed()[:2], 503, "bundle_invalid")
    assert "does not list tokenizer.json" in err["message"]
    assert model_store.loaded_versions() == {}


def test_staging_folders_left_by_a_killed_process_are_removed_on_the_next_download(s3_env, bundles_dir, tmp_path):
    published = publish(s3_env, bundles_dir / EMBEDDER)
    cache = tmp_path / "cache" / EMBEDDER
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()                                   # a pid that no longer runs: its download died
    running = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        stale = [cache / f".partial-{published['version']}-{gone.pid}-0123abcd",
                 cache / ".partial-20260101-deadbeef-89abcdef"]     # the old naming (no pid)
        legacy = cache / ".partial-20260101-1a2b3c4d"
        live = cache / f".partial-{published['version']}-{running.pid}-fedcba98"
        for folder in (*stale, legacy, live):
            folder.mkdir(parents=True)
            (folder / "model.onnx").write_bytes(b"\0" * 1024)
        assert embed()[0] == 200
        left = sorted(p.name for p in cache.iterdir())
        # Another running process may still be downloading into its folder: that one stays.
        assert left == sorted([published["version"], live.name])
    finally:
        running.kill()
        running.wait()
    # Once that process is gone too, the next download (a new container on the same /tmp) removes it.
    model_store.reset()
    shutil.rmtree(cache / published["version"])
    assert embed()[0] == 200
    assert sorted(p.name for p in cache.iterdir()) == [published["version"]]


def test_a_download_in_progress_in_this_process_survives_another_stores_sweep(s3_env, tmp_path):
    import os

    cache = tmp_path / "cache" / EMBEDDER
    ours = cache / f".partial-v1-{os.getpid()}-0a0b0c0d"
    ours.mkdir(parents=True)
    with model_store._IN_PROGRESS_LOCK:
        model_store._IN_PROGRESS.add(ours)
    try:
        assert model_store.store().remove_stale_staging(cache) == []    # a rebuilt store: still in progress
    finally:
        with model_store._IN_PROGRESS_LOCK:
            model_store._IN_PROGRESS.discard(ours)
    assert model_store.store().remove_stale_staging(cache) == [ours.name]   # finished or dead: a leftover
