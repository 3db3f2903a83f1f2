"""Publishing bundles to the S3 registry on moto: SSE-KMS on every object, pointer moves last,
idempotent re-publish, rollback, list."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import boto3
import pytest
from botocore.exceptions import ClientError
from moto import mock_aws

from functions.core.errors import BundleError
from functions.core.inference.manifest import Manifest, sha256_file
from model_export.errors import PublishError
from model_export.publish import list_models, publish_bundle, read_pointer, rollback

BUCKET = "cirrus-artifacts-test"
NAME = "all-minilm-l6-v2"


@pytest.fixture
def s3_kms(aws_env):
    with mock_aws():
        kms = boto3.client("kms", region_name="us-east-1")
        key_id = kms.create_key(Description="cirrus test")["KeyMetadata"]["KeyId"]
        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket=BUCKET)
        yield s3, key_id


@pytest.fixture
def two_versions(bundles_dir, tmp_path) -> tuple[Path, Path]:
    """The real default bundle as v1, and the same files re-versioned as v2."""
    v1, v2 = tmp_path / "v1", tmp_path / "v2"
    for target, version in ((v1, "v1"), (v2, "v2")):
        shutil.copytree(bundles_dir / NAME, target)
        manifest = Manifest.read(target)
        manifest.version = version
        manifest.write(target)
    return v1, v2


def _keys(s3) -> list[str]:
    return sorted(o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET).get("Contents", []))


def test_publish_uploads_every_file_with_sse_kms_then_points_current_at_it(s3_kms, two_versions):
    s3, key_id = s3_kms
    v1, _ = two_versions
    result = publish_bundle(v1, BUCKET, kms_key_id=key_id, s3_client=s3)
    assert result["pointer_moved"] and result["version"] == "v1"
    manifest = Manifest.read(v1)
    expected = sorted([f"models/{NAME}/v1/{rel}" for rel in [*manifest.files, "manifest.json"]]
                      + [f"models/{NAME}/current.json"])
    assert _keys(s3) == expected
    for key in expected:
        head = s3.head_object(Bucket=BUCKET, Key=key)
        assert head["ServerSideEncryption"] == "aws:kms", key
        assert head["SSEKMSKeyId"].endswith(key_id), key
    for rel, entry in manifest.files.items():
        head = s3.head_object(Bucket=BUCKET, Key=f"models/{NAME}/v1/{rel}")
        assert head["Metadata"]["sha256"] == entry.sha256 and head["ContentLength"] == entry.bytes
    pointer = read_pointer(s3, BUCKET, NAME).model_dump()
    assert pointer["version"] == "v1" and pointer["history"] == []
    assert pointer["manifest_sha256"] == sha256_file(v1 / "manifest.json")


def test_publishing_the_same_bundle_again_uploads_nothing_and_keeps_the_pointer(s3_kms, two_versions):
    s3, key_id = s3_kms
    v1, _ = two_versions
    publish_bundle(v1, BUCKET, kms_key_id=key_id, s3_client=s3)
    before = read_pointer(s3, BUCKET, NAME).model_dump()
    again = publish_bundle(v1, BUCKET, kms_key_id=key_id, s3_client=s3)
    assert again["uploaded"] == [] and again["pointer_moved"] is False
    assert read_pointer(s3, BUCKET, NAME).model_dump() == before


def test_rollback_moves_the_pointer_back_and_forward(s3_kms, two_versions):
    s3, key_id = s3_kms
    v1, v2 = two_versions
    publish_bundle(v1, BUCKET, kms_key_id=key_id, s3_client=s3)
    publish_bundle(v2, BUCKET, kms_key_id=key_id, s3_client=s3)
    assert read_pointer(s3, BUCKET, NAME).model_dump()["version"] == "v2"
    assert [h["version"] for h in read_pointer(s3, BUCKET, NAME).model_dump()["history"]] == ["v1"]

    back = rollback(NAME, BUCKET, kms_key_id=key_id, s3_client=s3)
    assert (back["from"], back["version"]) == ("v2", "v1")
    pointer = read_pointer(s3, BUCKET, NAME).model_dump()
    assert pointer["version"] == "v1" and pointer["manifest_sha256"] == sha256_file(v1 / "manifest.json")
    with pytest.raises(PublishError, match="no earlier version"):
        rollback(NAME, BUCKET, s3_client=s3)

    rollback(NAME, BUCKET, to_version="v2", kms_key_id=key_id, s3_client=s3)
    assert read_pointer(s3, BUCKET, NAME).model_dump()["version"] == "v2"
    head = s3.head_object(Bucket=BUCKET, Key=f"models/{NAME}/current.json")
    assert head["ServerSideEncryption"] == "aws:kms" and head["SSEKMSKeyId"].endswith(key_id)

    rows = list_models(BUCKET, s3_client=s3)
    assert [(r["version"], r["current"], r["complete"]) for r in rows] == [("v1", False, True), ("v2", True, True)]


def test_rollback_to_an_unpublished_version_is_refused(s3_kms, two_versions):
    s3, key_id = s3_kms
    publish_bundle(two_versions[0], BUCKET, kms_key_id=key_id, s3_client=s3)
    with pytest.raises(PublishError, match="v9 is not published"):
        rollback(NAME, BUCKET, to_version="v9", s3_client=s3)
    assert read_pointer(s3, BUCKET, NAME).model_dump()["version"] == "v1"


def test_pointer_does_not_move_when_an_upload_fails(s3_kms, two_versions):
    s3, key_id = s3_kms
    v1, v2 = two_versions
    publish_bundle(v1, BUCKET, kms_key_id=key_id, s3_client=s3)

    class FailingModelUpload:
        """The real client, except that uploading model.onnx fails as S3 would on a 500."""

        def __getattr__(self, name):
            return getattr(s3, name)

        def put_object(self, **kw):
            if kw["Key"].endswith("/model.onnx"):
                raise ClientError({"Error": {"Code": "InternalError", "Message": "boom"}}, "PutObject")
            return s3.put_object(**kw)

    with pytest.raises(PublishError, match="InternalError"):
        publish_bundle(v2, BUCKET, kms_key_id=key_id, s3_client=FailingModelUpload())
    assert read_pointer(s3, BUCKET, NAME).model_dump()["version"] == "v1"
    assert not any(k.startswith(f"models/{NAME}/v2/manifest.json") for k in _keys(s3))
    # Re-running after the fault finishes the job, re-using the files already up.
    result = publish_bundle(v2, BUCKET, kms_key_id=key_id, s3_client=s3)
    assert result["skipped"] == ["config.json"] and "model.onnx" in result["uploaded"]
    assert read_pointer(s3, BUCKET, NAME).model_dump()["version"] == "v2"


def test_a_tampered_bundle_is_not_published(s3_kms, two_versions):
    s3, key_id = s3_kms
    v1, _ = two_versions
    with open(v1 / "tokenizer.json", "r+b") as fh:
        fh.seek(100)
        fh.write(b"X")
    with pytest.raises(BundleError, match="sha256 mismatch for tokenizer.json"):
        publish_bundle(v1, BUCKET, kms_key_id=key_id, s3_client=s3)
    assert _keys(s3) == []


def test_a_published_version_cannot_be_overwritten_with_other_bytes(s3_kms, two_versions, tmp_path):
    s3, key_id = s3_kms
    v1, _ = two_versions
    publish_bundle(v1, BUCKET, kms_key_id=key_id, s3_client=s3)
    config = json.loads((v1 / "config.json").read_text())
    config["note"] = "changed"
    (v1 / "config.json").write_text(json.dumps(config))
    manifest = Manifest.read(v1)
    from functions.core.inference.manifest import file_entry

    manifest.files["config.json"] = file_entry(v1 / "config.json")
    manifest.write(v1)
    with pytest.raises(PublishError, match="versions are immutable"):
        publish_bundle(v1, BUCKET, kms_key_id=key_id, s3_client=s3)


def test_a_bundle_whose_gate_failed_is_not_published(s3_kms, two_versions):
    s3, key_id = s3_kms
    v1, _ = two_versions
    manifest = Manifest.read(v1)
    manifest.gate.passed = False
    manifest.write(v1)
    with pytest.raises(PublishError, match="has not passed the accuracy gate"):
        publish_bundle(v1, BUCKET, kms_key_id=key_id, s3_client=s3)
