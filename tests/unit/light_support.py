"""Shared helpers for the light-path tests: API, runtime, model store, auth (fixtures: conftest.py).

Events are the real API Gateway REST proxy events in tests/events/; AWS is moto's in-process
``mock_aws``; models are the real default bundles from the session fixture ``bundles_dir``.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import boto3
import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

from functions.core.inference.manifest import Manifest
from functions.core.contract import Pointer, bundle_key, pointer_key
from local.aws import Provisioned, provision
from local.config import LocalConfig
from local.lambdas import LambdaContext

EVENTS = Path(__file__).resolve().parents[1] / "events"
EMBEDDER = "all-minilm-l6-v2"
CLASSIFIER = "cirrus-intent-minilm"
REGION = "us-east-1"


def lambda_context(name: str = "cirrus-api", memory_mb: int = 2048) -> LambdaContext:
    """The context object the local system hands a handler (local/lambdas.py), as Lambda would."""
    return LambdaContext(function_name=name, memory_limit_in_mb=memory_mb, timeout_s=30,
                         aws_request_id="52fdfc07-2182-154f-163f-5f0f9a621d72")


def load_event(name: str) -> dict[str, Any]:
    return json.loads((EVENTS / name).read_text())


def api_event(method: str, path: str, body: Any = None, *, raw: str | None = None) -> dict[str, Any]:
    """A REST proxy event (from the embeddings fixture) for another method/path/body."""
    event = copy.deepcopy(load_event("embeddings_post.json"))
    event["httpMethod"] = event["requestContext"]["httpMethod"] = method
    event["path"] = path
    event["requestContext"]["path"] = f"/{event['requestContext']['stage']}{path}"
    event["pathParameters"] = {"proxy": path.lstrip("/")}
    event["body"] = raw if raw is not None else (None if body is None else json.dumps(body))
    return event


def call_api(event: dict[str, Any]) -> tuple[int, Any, dict[str, str]]:
    from functions.handlers.api import handler

    resp = handler(event, lambda_context())
    body = json.loads(resp["body"]) if resp.get("body") else None
    headers = {**(resp.get("headers") or {}),
               **{k: v[-1] for k, v in (resp.get("multiValueHeaders") or {}).items()}}
    return resp["statusCode"], body, headers


def assert_error(status: int, body: Any, expected_status: int, code: str | None = None) -> dict:
    """The OpenAI error shape, with no trace of Python internals."""
    assert status == expected_status, body
    err = body["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert "Traceback" not in err["message"] and ".py" not in err["message"]
    if code is not None:
        assert err["code"] == code, err
    return err


def _direct_outputs(bundle_dir: Path, texts: list[str]) -> tuple[Manifest, list[np.ndarray]]:
    """The bundle's own ONNX output for each text, run one at a time (no padding).

    Written independently of functions.core.inference.encoder so the handler is checked against it.
    """
    manifest = Manifest.read(bundle_dir)
    tok = Tokenizer.from_file(str(bundle_dir / "tokenizer.json"))
    tok.no_padding()
    tok.enable_truncation(manifest.max_length)
    sess = ort.InferenceSession(str(bundle_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    names = {i.name for i in sess.get_inputs()}
    outputs = []
    for text in texts:
        ids = np.array([tok.encode(text).ids], dtype=np.int64)
        feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
        if "token_type_ids" in names:
            feeds["token_type_ids"] = np.zeros_like(ids)
        outputs.append(sess.run([manifest.output_name], feeds)[0][0])
    return manifest, outputs


def direct_embeddings(bundle_dir: Path, texts: list[str]) -> np.ndarray:
    """The bundle's own ONNX output per text, pooled and normalised as the manifest says."""
    manifest, outputs = _direct_outputs(bundle_dir, texts)
    out = []
    for h in outputs:
        if h.ndim == 1:
            v = h
        elif manifest.pooling == "mean":
            v = h.mean(axis=0)
        elif manifest.pooling == "cls":
            v = h[0]
        elif manifest.pooling == "max":
            v = h.max(axis=0)
        else:
            raise AssertionError(f"unexpected pooling {manifest.pooling}")
        if manifest.normalize:
            v = v / np.linalg.norm(v)
        out.append(v.astype(np.float32))
    return np.stack(out)


def direct_probabilities(bundle_dir: Path, texts: list[str]) -> np.ndarray:
    """The bundle's own ONNX logits per text, softmaxed."""
    _, outputs = _direct_outputs(bundle_dir, texts)
    out = []
    for logits in outputs:
        logits = logits.astype(np.float64)
        e = np.exp(logits - logits.max())
        out.append(e / e.sum())
    return np.stack(out)


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


def provisioned() -> Provisioned:
    """The stack's stores (infra.resources) on the in-process moto, made by the local system's own
    ``provision``: KMS-encrypted with one customer key, as deployed. Idempotent within a test."""
    return provision(None, LocalConfig(stage="unit"))


def artifacts_bucket() -> str:
    """The artifacts bucket (SSE-KMS default encryption), as the stack creates it."""
    return provisioned().buckets["Artifacts"]


def publish(bucket: str, bundle_dir: Path) -> dict[str, Any]:
    """Publish with the real publisher (model_export.publish): files, then the registry pointer."""
    from model_export.publish import publish_bundle

    return publish_bundle(bundle_dir, bucket, s3_client=boto3.client("s3", region_name=REGION))


def overwrite(bucket: str, name: str, version: str, rel: str, data: bytes) -> None:
    """Replace one published object behind the publisher's back (damage in S3, or its repair)."""
    boto3.client("s3", region_name=REGION).put_object(Bucket=bucket, Key=bundle_key(name, version, rel), Body=data)


def move_pointer(bucket: str, name: str, version: str, manifest_sha256: str) -> None:
    body = Pointer(name=name, version=version, manifest_sha256=manifest_sha256,
                   updated_at="2026-01-01T00:00:00+00:00")
    boto3.client("s3", region_name=REGION).put_object(Bucket=bucket, Key=pointer_key(name), Body=body.json_bytes())


def keys_table() -> str:
    """The API keys table, KMS-encrypted with a customer key, as the stack creates it."""
    return provisioned().tables["ApiKeys"]
