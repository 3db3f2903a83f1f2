"""Publish bundles to the S3 model registry (SSE-KMS), roll the pointer back, list versions.

Layout (docs/ARCHITECTURE.md): ``models/<name>/<version>/<file>`` and the pointer
``models/<name>/current.json``. Versions are immutable: a file that already exists with the
same sha256 is skipped (so publishing twice is a no-op), one with different bytes is refused.
The pointer moves only after every file of the version is present, the right size, carries
its sha256 and is KMS-encrypted.
"""
from __future__ import annotations

import base64
import hashlib
import json
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from functions.core.aws.base import error_code, error_message, make_client
from functions.core.aws.s3 import NOT_FOUND_CODES
from functions.core.inference.manifest import MANIFEST_NAME, Manifest, sha256_file, verify_bundle
from functions.core.contract import MODELS_PREFIX, Pointer, bundle_key, bundle_prefix, pointer_key
from model_export.errors import PublishError
from model_export.progress import SILENT, Progress
from model_export.weights_check import MANIFEST as WEIGHTS_MANIFEST, WeightsError, check_weights

HISTORY_LIMIT = 50
SHA_META = "sha256"  # object metadata key holding the file's hex sha256


def make_s3_client(endpoint_url: str | None = None, region: str | None = None):
    """An S3 client with Cirrus's timeouts/retries; endpoint from the flag or AWS_ENDPOINT_URL."""
    try:
        return make_client("s3", endpoint_url=endpoint_url, region_name=region)
    except ValueError as exc:  # botocore: "Invalid endpoint: <url>" for a malformed --endpoint-url
        raise PublishError(str(exc)) from None


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _aws(what: str, exc: Exception) -> PublishError:
    if isinstance(exc, ClientError):
        return PublishError(f"{what}: {error_code(exc) or 'error'}: {error_message(exc)}".rstrip(": "))
    return PublishError(f"{what}: {exc.__class__.__name__}: {exc}")


def _head(s3, bucket: str, key: str) -> dict | None:
    try:
        return s3.head_object(Bucket=bucket, Key=key)
    except ClientError as exc:
        if error_code(exc) in NOT_FOUND_CODES:
            return None
        raise


def _encryption(kms_key_id: str | None) -> dict[str, str]:
    out = {"ServerSideEncryption": "aws:kms"}
    if kms_key_id:
        out["SSEKMSKeyId"] = kms_key_id
    return out


def _check_object(head: dict, key: str, size: int, sha: str, kms_key_id: str | None) -> None:
    if head["ContentLength"] != size or head.get("Metadata", {}).get(SHA_META) != sha:
        raise PublishError(f"verification failed for {key}: size or sha256 differs from the bundle")
    if head.get("ServerSideEncryption") != "aws:kms":
        raise PublishError(f"verification failed for {key}: not encrypted with SSE-KMS")
    if kms_key_id and not str(head.get("SSEKMSKeyId", "")).endswith(kms_key_id.split("/")[-1]):
        raise PublishError(f"verification failed for {key}: encrypted with another KMS key")


def read_pointer(s3, bucket: str, name: str) -> Pointer | None:
    try:
        body = s3.get_object(Bucket=bucket, Key=pointer_key(name))["Body"].read()
    except ClientError as exc:
        if error_code(exc) in NOT_FOUND_CODES:
            return None
        raise
    return Pointer.model_validate_json(body)


def _write_pointer(s3, bucket: str, pointer: Pointer, kms_key_id: str | None) -> None:
    s3.put_object(Bucket=bucket, Key=pointer_key(pointer.name), Body=pointer.json_bytes(),
                  ContentType="application/json", CacheControl="no-cache", **_encryption(kms_key_id))


def publish_bundle(bundle_dir: Path | str, bucket: str, *, kms_key_id: str | None = None, s3_client=None,
                   endpoint_url: str | None = None, progress: Progress = SILENT) -> dict[str, Any]:
    """Upload a verified bundle as ``models/<name>/<version>/`` and make it current.

    Idempotent: re-publishing the current version uploads nothing and leaves the pointer alone.
    Returns ``{"name","version","uploaded","skipped","pointer_moved","manifest_sha256"}``.
    """
    bundle_dir = Path(bundle_dir)
    manifest = verify_bundle(bundle_dir)  # never publish bytes that do not match their manifest
    if manifest.gate is None or not (manifest.gate.passed or manifest.gate.forced):
        raise PublishError(f"{bundle_dir}: the bundle has not passed the accuracy gate")
    s3 = s3_client or make_s3_client(endpoint_url)
    files = {rel: (entry.bytes, entry.sha256) for rel, entry in manifest.files.items()}
    manifest_sha = sha256_file(bundle_dir / MANIFEST_NAME)
    files[MANIFEST_NAME] = ((bundle_dir / MANIFEST_NAME).stat().st_size, manifest_sha)  # last: marks complete
    uploaded, skipped = [], []
    try:
        with progress.stage("publish", f"s3://{bucket}/{bundle_key(manifest.name, manifest.version, '')}"):
            for rel, (size, sha) in files.items():
                key = bundle_key(manifest.name, manifest.version, rel)
                head = _head(s3, bucket, key)
                if head is not None:
                    if head.get("Metadata", {}).get(SHA_META) != sha:
                        raise PublishError(f"{manifest.name}@{manifest.version} is already published with "
                                           f"different {rel}; versions are immutable, use a new --version")
                    skipped.append(rel)
                    continue
                with open(bundle_dir / rel, "rb") as body:
                    # ChecksumSHA256: S3 itself rejects the upload if the bytes arrive damaged.
                    s3.put_object(Bucket=bucket, Key=key, Body=body, Metadata={SHA_META: sha},
                                  ChecksumSHA256=base64.b64encode(bytes.fromhex(sha)).decode(),
                                  **_encryption(kms_key_id))
                uploaded.append(rel)
            for rel, (size, sha) in files.items():
                key = bundle_key(manifest.name, manifest.version, rel)
                head = _head(s3, bucket, key)
                if head is None:
                    raise PublishError(f"verification failed for {key}: missing after upload")
                _check_object(head, key, size, sha, kms_key_id)
            current = read_pointer(s3, bucket, manifest.name)
            moved = not (current and current.version == manifest.version
                         and current.manifest_sha256 == manifest_sha)
            if moved:
                history = (current.history + [current.entry()]) if current else []
                _write_pointer(s3, bucket, Pointer(name=manifest.name, version=manifest.version,
                                                   manifest_sha256=manifest_sha, updated_at=_now(),
                                                   history=history[-HISTORY_LIMIT:]), kms_key_id)
    except (ClientError, BotoCoreError) as exc:
        raise _aws(f"publishing {manifest.name}@{manifest.version} to s3://{bucket}", exc) from None
    progress.info(f"[publish] {manifest.name}@{manifest.version}: {len(uploaded)} uploaded, "
                  f"{len(skipped)} already there, pointer {'moved' if moved else 'unchanged'}")
    return {"name": manifest.name, "version": manifest.version, "uploaded": uploaded, "skipped": skipped,
            "pointer_moved": moved, "manifest_sha256": manifest_sha}


SINGLE_PUT_MAX_BYTES = 5 * 1024 ** 3   # one PutObject: S3 stores the whole-object SHA-256 the check reads
_SAFE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def publish_weights(src_dir: Path | str, bucket: str, *, name: str, version: str, kms_key_id: str | None = None,
                    s3_client=None, endpoint_url: str | None = None, progress: Progress = SILENT) -> dict[str, Any]:
    """Copy a model folder for the GPU endpoint (what TGI / DJL-LMI load: config, tokenizer, safetensors)
    to ``models/<name>/<version>/`` with its hashes recorded, and check the copy.

    Every file but dot-files gets its sha256 in ``cirrus-weights.json`` (uploaded last) and is
    uploaded with ``ChecksumSHA256``, so S3 refuses damaged bytes and keeps the digest, which
    ``weights_check.check_weights`` (also the stack's deploy-time check) compares without downloading.
    Versions are immutable: the same version with other bytes is refused. Returns the prefix and
    the manifest's sha256, the value of ``heavy.model_manifest_sha256`` in cdk.json.
    """
    src = Path(src_dir)
    if not src.is_dir():
        raise PublishError(f"{src}: not a folder")
    if not (_SAFE.match(name) and _SAFE.match(version)):
        raise PublishError("name and version must be letters, digits, '.', '_' or '-'")
    files: dict[str, dict[str, Any]] = {}
    for path in sorted(p for p in src.rglob("*") if p.is_file()):
        rel = path.relative_to(src).as_posix()
        if any(part.startswith(".") for part in rel.split("/")):
            continue   # .git*, .cache/ of hub downloads: not part of the model
        if path.stat().st_size > SINGLE_PUT_MAX_BYTES:
            raise PublishError(f"{rel} is over 5 GiB; re-shard the weights (save_pretrained(max_shard_size='4GB'))")
        files[rel] = {"sha256": sha256_file(path), "bytes": path.stat().st_size}
    if not files:
        raise PublishError(f"{src}: no files to publish")
    if WEIGHTS_MANIFEST in files:
        raise PublishError(f"{src}: {WEIGHTS_MANIFEST} is the manifest's own name")
    manifest = json.dumps({"format": "cirrus-weights/1", "name": name, "version": version, "files": files,
                           "created_at": _now()}, indent=2, sort_keys=True).encode()
    prefix = bundle_prefix(name, version)
    s3 = s3_client or make_s3_client(endpoint_url)

    def put(key: str, body, sha: str) -> None:
        # S3 checks the bytes against this digest and keeps it with the object (ChecksumMode reads it back).
        s3.put_object(Bucket=bucket, Key=key, Body=body, Metadata={SHA_META: sha}, ChecksumAlgorithm="SHA256",
                      ChecksumSHA256=base64.b64encode(bytes.fromhex(sha)).decode(), **_encryption(kms_key_id))

    try:
        with progress.stage("publish-weights", f"s3://{bucket}/{prefix}"):
            existing = _head(s3, bucket, prefix + WEIGHTS_MANIFEST)
            if existing is not None:
                published = s3.get_object(Bucket=bucket, Key=prefix + WEIGHTS_MANIFEST)["Body"].read()
                if json.loads(published)["files"] != files:
                    raise PublishError(f"{name}@{version} is already published with other files; versions "
                                       "are immutable, use a new --version")
                manifest = published   # republishing: nothing to upload, same pin
            else:
                for rel, entry in files.items():
                    head = _head(s3, bucket, prefix + rel)
                    if head is not None and head.get("Metadata", {}).get(SHA_META) == entry["sha256"]:
                        continue   # an earlier, interrupted run uploaded it
                    with open(src / rel, "rb") as body:
                        put(prefix + rel, body, entry["sha256"])
                    progress.info(f"[publish-weights] {rel} ({entry['bytes'] / 1e6:.1f} MB)")
                put(prefix + WEIGHTS_MANIFEST, manifest, hashlib.sha256(manifest).hexdigest())
            checked = check_weights(s3, bucket, prefix, hashlib.sha256(manifest).hexdigest())
    except WeightsError as exc:
        raise PublishError(f"verification failed: {exc}") from None
    except (ClientError, BotoCoreError) as exc:
        raise _aws(f"publishing {name}@{version} to s3://{bucket}", exc) from None
    return {"name": name, "version": version, "model_s3_prefix": prefix, **checked,
            "model_manifest_sha256": hashlib.sha256(manifest).hexdigest()}


def _published_manifest(s3, bucket: str, name: str, version: str) -> tuple[Manifest, str]:
    """A published version's manifest and its sha256, after checking all its files are there."""
    key = bundle_key(name, version, MANIFEST_NAME)
    try:
        raw = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    except ClientError as exc:
        if error_code(exc) in NOT_FOUND_CODES:
            raise PublishError(f"{name}@{version} is not published in s3://{bucket}") from None
        raise
    manifest = Manifest.model_validate_json(raw)
    for rel, entry in manifest.files.items():
        head = _head(s3, bucket, bundle_key(name, version, rel))
        if head is None or head["ContentLength"] != entry.bytes:
            raise PublishError(f"{name}@{version} is incomplete in s3://{bucket}: {rel} missing or wrong size")
    return manifest, hashlib.sha256(raw).hexdigest()


def rollback(name: str, bucket: str, *, to_version: str | None = None, kms_key_id: str | None = None,
             s3_client=None, endpoint_url: str | None = None, progress: Progress = SILENT) -> dict[str, Any]:
    """Move ``current`` back: to the previous version (default) or to ``to_version``.

    Rolling back to the previous version pops it from the history, so repeated rollbacks walk
    further back; rolling to an explicit version pushes the current one onto the history.
    """
    s3 = s3_client or make_s3_client(endpoint_url)
    try:
        current = read_pointer(s3, bucket, name)
        if current is None:
            raise PublishError(f"{name} has no current version in s3://{bucket}")
        history = list(current.history)
        if to_version is None:
            if not history:
                raise PublishError(f"{name}@{current.version} has no earlier version to roll back to")
            target, history = history[-1].version, history[:-1]
        else:
            if to_version == current.version:
                raise PublishError(f"{name}@{to_version} is already current")
            target, history = to_version, history + [current.entry()]
        _, manifest_sha = _published_manifest(s3, bucket, name, target)
        pointer = Pointer(name=name, version=target, manifest_sha256=manifest_sha, updated_at=_now(),
                          history=history[-HISTORY_LIMIT:])
        _write_pointer(s3, bucket, pointer, kms_key_id)
    except (ClientError, BotoCoreError) as exc:
        raise _aws(f"rolling back {name} in s3://{bucket}", exc) from None
    progress.info(f"[rollback] {name}: {current.version} -> {target}")
    return {"name": name, "from": current.version, "version": target, "manifest_sha256": manifest_sha}


def list_models(bucket: str, name: str | None = None, *, s3_client=None,
                endpoint_url: str | None = None) -> list[dict[str, Any]]:
    """Every published version (per model), with its size and whether it is current."""
    s3 = s3_client or make_s3_client(endpoint_url)
    prefix = f"{MODELS_PREFIX}{name}/" if name else MODELS_PREFIX
    versions: dict[tuple[str, str], dict[str, Any]] = {}
    try:
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                parts = obj["Key"][len(MODELS_PREFIX):].split("/")
                if len(parts) < 3:
                    continue  # current.json
                item = versions.setdefault((parts[0], parts[1]), {"name": parts[0], "version": parts[1],
                                                                  "files": 0, "bytes": 0, "complete": False})
                item["files"] += 1
                item["bytes"] += obj["Size"]
                item["complete"] |= parts[-1] == MANIFEST_NAME
                item["uploaded_at"] = max(item.get("uploaded_at", ""), obj["LastModified"].isoformat())
        pointers = {n: read_pointer(s3, bucket, n) for n in {k[0] for k in versions}}
    except (ClientError, BotoCoreError) as exc:
        raise _aws(f"listing s3://{bucket}/{prefix}", exc) from None
    for (model, version), item in versions.items():
        item["current"] = bool(pointers.get(model) and pointers[model].version == version)
    return sorted(versions.values(), key=lambda v: (v["name"], v["uploaded_at"], v["version"]))
