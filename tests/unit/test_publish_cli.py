"""publish / list / rollback through the CLI against a moto S3+KMS server on 127.0.0.1 (--endpoint-url)."""
from __future__ import annotations

import shutil

import boto3
import pytest
from moto.server import ThreadedMotoServer

from functions.core.inference.manifest import Manifest
from export_support import run_cli

BUCKET = "cirrus-artifacts-cli"
NAME = "cirrus-intent-minilm"


@pytest.fixture
def moto_server(aws_env):
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        yield f"http://{host}:{port}"
    finally:
        server.stop()


def test_cli_publishes_lists_and_rolls_back_against_an_s3_endpoint(moto_server, bundles_dir, tmp_path):
    kms = boto3.client("kms", endpoint_url=moto_server, region_name="us-east-1")
    key_id = kms.create_key()["KeyMetadata"]["KeyId"]
    s3 = boto3.client("s3", endpoint_url=moto_server, region_name="us-east-1")
    s3.create_bucket(Bucket=BUCKET)
    v2 = tmp_path / "v2"
    shutil.copytree(bundles_dir / NAME, v2)
    manifest = Manifest.read(v2)
    v1_version = manifest.version
    manifest.version = "v2"
    manifest.write(v2)
    s3_args = ["--bucket", BUCKET, "--endpoint-url", moto_server, "--kms-key-id", key_id, "--json"]

    code, first, err = run_cli("publish", str(bundles_dir / NAME), *s3_args)
    assert code == 0, err
    assert first["pointer_moved"] and "[publish] done in" in err
    code, second, _ = run_cli("publish", str(v2), *s3_args)
    assert code == 0 and second["version"] == "v2"

    code, rows, _ = run_cli("list", NAME, *s3_args)
    assert code == 0
    assert {(r["version"], r["current"]) for r in rows} == {(v1_version, False), ("v2", True)}

    code, back, _ = run_cli("rollback", NAME, *s3_args)
    assert code == 0 and back["version"] == v1_version
    for obj in s3.list_objects_v2(Bucket=BUCKET)["Contents"]:
        head = s3.head_object(Bucket=BUCKET, Key=obj["Key"])
        assert head["ServerSideEncryption"] == "aws:kms" and head["SSEKMSKeyId"].endswith(key_id)

    code, _, err = run_cli("rollback", NAME, *s3_args)
    assert code == 4 and err.strip() == f"model_export rollback: error: {NAME}@{v1_version} has no earlier version to roll back to"


def test_cli_reports_a_missing_bucket_on_one_line(moto_server, bundles_dir):
    code, _, err = run_cli("publish", str(bundles_dir / NAME), "--bucket", "no-such-bucket",
                           "--endpoint-url", moto_server)
    assert code == 4
    lines = [line for line in err.strip().splitlines() if not line.startswith("[publish]")]
    assert lines == [lines[0]] and "NoSuchBucket" in lines[0]


def test_cli_reports_a_malformed_endpoint_url_on_one_line(aws_env, bundles_dir):
    code, _, err = run_cli("publish", str(bundles_dir / NAME), "--bucket", BUCKET, "--endpoint-url", "notaurl")
    assert (code, err) == (4, "model_export publish: error: Invalid endpoint: notaurl\n")


def test_cli_publishes_a_gpu_model_copy_and_prints_the_pin_for_cdk_json(moto_server, tmp_path):
    from infra.settings import parse_stage

    s3 = boto3.client("s3", endpoint_url=moto_server, region_name="us-east-1")
    s3.create_bucket(Bucket=BUCKET)
    src = tmp_path / "qwen"
    src.mkdir()
    (src / "config.json").write_text('{"model_type": "qwen2"}')
    (src / "model.safetensors").write_bytes(b"\1" * 100_000)
    args = ["--name", "qwen2.5-1.5b-instruct", "--version", "989aa79", "--bucket", BUCKET,
            "--endpoint-url", moto_server, "--json"]
    code, out, err = run_cli("publish-weights", str(src), *args)
    assert code == 0, err
    assert out["files"] == 2 and out["model_s3_prefix"] == "models/qwen2.5-1.5b-instruct/989aa79/"
    # What it prints is exactly what a stage takes.
    heavy = parse_stage({"s": {"heavy": {"enabled": True, "model_s3_prefix": out["model_s3_prefix"],
                                         "model_manifest_sha256": out["model_manifest_sha256"]}}}, "s").heavy
    assert heavy.isolated
    (src / "config.json").write_text("{}")
    code, _, err = run_cli("publish-weights", str(src), *args)
    assert code != 0 and "versions are immutable" in err
