"""GPU model copies in S3 (model_export.publish.publish_weights) and the check the stack runs before the
SageMaker model is created (model_export/weights_check.py, the custom resource's code), on moto."""
from __future__ import annotations

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import boto3
import pytest

from model_export.errors import PublishError
from model_export.publish import publish_weights
from model_export.weights_check import MANIFEST, WeightsError, check_weights, handler

BUCKET = "cirrus-unit-artifacts"
NAME, VERSION = "qwen2.5-1.5b-instruct", "989aa79"


@pytest.fixture
def s3(aws):
    client = boto3.client("s3", region_name="us-east-1")
    client.create_bucket(Bucket=BUCKET)
    return client


@pytest.fixture
def folder(tmp_path):
    src = tmp_path / "model"
    (src / "sub").mkdir(parents=True)
    (src / "config.json").write_text(json.dumps({"model_type": "qwen2"}))
    (src / "tokenizer.json").write_text(json.dumps({"version": "1.0"}))
    (src / "model.safetensors").write_bytes(bytes(range(256)) * 4096)
    (src / "sub" / "extra.json").write_text("{}")
    (src / ".gitattributes").write_text("*.safetensors filter=lfs")
    (src / ".cache").mkdir()
    (src / ".cache" / "lock").write_text("x")
    return src


def publish(s3, folder, version=VERSION):
    return publish_weights(folder, BUCKET, name=NAME, version=version, s3_client=s3)


def test_a_published_copy_records_every_file_and_passes_the_deploy_check(s3, folder):
    out = publish(s3, folder)
    prefix = f"models/{NAME}/{VERSION}/"
    assert out["model_s3_prefix"] == prefix and out["files"] == 4
    raw = s3.get_object(Bucket=BUCKET, Key=prefix + MANIFEST)["Body"].read()
    assert out["model_manifest_sha256"] == hashlib.sha256(raw).hexdigest()
    files = json.loads(raw)["files"]
    assert sorted(files) == ["config.json", "model.safetensors", "sub/extra.json", "tokenizer.json"]  # no dot-files
    assert files["model.safetensors"]["sha256"] == hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()
    assert check_weights(s3, BUCKET, prefix, out["model_manifest_sha256"])["files"] == 4
    # Publishing again is a no-op with the same pin; other bytes under the same version are refused.
    assert publish(s3, folder)["model_manifest_sha256"] == out["model_manifest_sha256"]
    (folder / "config.json").write_text("{}")
    with pytest.raises(PublishError, match="versions are immutable"):
        publish(s3, folder)


def _published(s3, folder):
    out = publish(s3, folder)
    return out["model_s3_prefix"], out["model_manifest_sha256"]


def test_the_check_refuses_a_manifest_other_than_the_pinned_one(s3, folder):
    prefix, pin = _published(s3, folder)
    with pytest.raises(WeightsError, match="the stage pins"):
        check_weights(s3, BUCKET, prefix, "0" * 64)


def test_the_check_refuses_a_file_replaced_after_publishing(s3, folder):
    prefix, pin = _published(s3, folder)
    # Replaced with its own valid checksum, and replaced with none: both differ from the record.
    s3.put_object(Bucket=BUCKET, Key=prefix + "model.safetensors", Body=b"other weights", ChecksumAlgorithm="SHA256")
    with pytest.raises(WeightsError, match="model.safetensors: size or stored SHA-256"):
        check_weights(s3, BUCKET, prefix, pin)
    data = (folder / "model.safetensors").read_bytes()
    s3.put_object(Bucket=BUCKET, Key=prefix + "model.safetensors", Body=data)   # same bytes, no checksum kept
    with pytest.raises(WeightsError, match="stored SHA-256"):
        check_weights(s3, BUCKET, prefix, pin)


def test_the_check_refuses_extra_or_missing_files(s3, folder):
    prefix, pin = _published(s3, folder)
    s3.put_object(Bucket=BUCKET, Key=prefix + "adapter.safetensors", Body=b"x")   # SageMaker would copy it too
    with pytest.raises(WeightsError, match="adapter.safetensors"):
        check_weights(s3, BUCKET, prefix, pin)
    s3.delete_object(Bucket=BUCKET, Key=prefix + "adapter.safetensors")
    s3.delete_object(Bucket=BUCKET, Key=prefix + "tokenizer.json")
    with pytest.raises(WeightsError, match="missing \\['tokenizer.json'\\]"):
        check_weights(s3, BUCKET, prefix, pin)


def test_publishing_bad_input_is_a_clear_error(s3, tmp_path):
    with pytest.raises(PublishError, match="not a folder"):
        publish_weights(tmp_path / "absent", BUCKET, name=NAME, version=VERSION, s3_client=s3)
    (tmp_path / "empty").mkdir()
    with pytest.raises(PublishError, match="no files"):
        publish_weights(tmp_path / "empty", BUCKET, name=NAME, version=VERSION, s3_client=s3)
    with pytest.raises(PublishError, match="name and version"):
        publish_weights(tmp_path / "empty", BUCKET, name="../x", version=VERSION, s3_client=s3)


class _Responses(BaseHTTPRequestHandler):
    got: list = []

    def do_PUT(self):  # noqa: N802
        self.got.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def response_url():
    _Responses.got = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Responses)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/response", _Responses.got
    server.shutdown()


def _event(url: str, request: str, prefix: str, pin: str) -> dict:
    return {"RequestType": request, "ResponseURL": url, "StackId": "stack", "RequestId": "req",
            "LogicalResourceId": "HeavyWeightsCheck",
            "ResourceProperties": {"Bucket": BUCKET, "Prefix": prefix, "ManifestSha256": pin}}


def test_the_custom_resource_reports_success_and_failure_to_cloudformation(s3, folder, response_url):
    url, got = response_url
    prefix, pin = _published(s3, folder)
    handler(_event(url, "Create", prefix, pin), None)
    handler(_event(url, "Update", prefix, "f" * 64), None)
    handler(_event(url, "Delete", prefix, "f" * 64), None)   # deleting never fails the stack
    assert [r["Status"] for r in got] == ["SUCCESS", "FAILED", "SUCCESS"]
    assert got[0]["Data"]["files"] == 4 and "the stage pins" in got[1]["Reason"]
    assert {r["PhysicalResourceId"] for r in got} == {"weights-HeavyWeightsCheck"}
