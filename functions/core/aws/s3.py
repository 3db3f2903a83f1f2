"""S3 access for the functions: small, typed operations over the container's one S3 client."""
from __future__ import annotations

from pathlib import Path

from botocore.exceptions import ClientError

from functions.core.aws.base import client, error_code

NOT_FOUND_CODES = frozenset({"NoSuchKey", "404", "NotFound"})
DENIED_CODES = frozenset({"AccessDenied", "403", "Forbidden"})


class ObjectNotFound(LookupError):
    """The key (or the bucket) does not exist."""


def is_missing(exc: ClientError, bucket: str, key: str) -> bool:
    """Whether a failed GET/HEAD means "no such object".

    S3 answers 404 for a missing key only to a caller allowed to list the bucket *unconditionally*;
    the functions may list only their own prefixes (an ``s3:prefix`` condition, infra/stack.py), so a
    missing key can come back as 403. A listing of exactly that key, which the prefix condition
    allows, tells a missing object (nothing listed) from a real denial (it is there: re-raise).
    """
    code = error_code(exc)
    if code in NOT_FOUND_CODES:
        return True
    if code not in DENIED_CODES:
        return False
    try:
        found = client("s3").list_objects_v2(Bucket=bucket, Prefix=key, MaxKeys=1).get("Contents", [])
    except ClientError:
        return False      # not allowed to list there either: the denial stands
    return not any(obj["Key"] == key for obj in found)


def _raise_not_found(exc: ClientError, bucket: str, key: str) -> None:
    if is_missing(exc, bucket, key):
        raise ObjectNotFound(f"s3://{bucket}/{key}") from exc


def get_bytes(bucket: str, key: str) -> bytes:
    """The whole object (small objects: pointers, manifests, job chunks)."""
    try:
        return client("s3").get_object(Bucket=bucket, Key=key)["Body"].read()
    except ClientError as exc:
        _raise_not_found(exc, bucket, key)
        raise


def download_file(bucket: str, key: str, dest: Path) -> None:
    """Stream an object to ``dest`` (managed multipart transfer for large model files)."""
    try:
        client("s3").download_file(bucket, key, str(dest))
    except ClientError as exc:
        _raise_not_found(exc, bucket, key)
        raise


def put_bytes(bucket: str, key: str, body: bytes, *, content_type: str = "application/octet-stream") -> None:
    # The buckets enforce SSE-KMS by default encryption; nothing to pass per object.
    client("s3").put_object(Bucket=bucket, Key=key, Body=body, ContentType=content_type)


def list_prefixes(bucket: str, prefix: str) -> list[str]:
    """The immediate "sub-folders" of ``prefix`` (e.g. model names under ``models/``)."""
    out: list[str] = []
    paginator = client("s3").get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=bucket, Prefix=prefix, Delimiter="/"):
        out.extend(p["Prefix"][len(prefix):].rstrip("/") for p in page.get("CommonPrefixes", []))
    return out


def head(bucket: str, key: str) -> tuple[int, str] | None:
    """(size, ETag) of the object, or None when there is none."""
    try:
        meta = client("s3").head_object(Bucket=bucket, Key=key)
    except ClientError as exc:
        if is_missing(exc, bucket, key):
            return None
        raise
    return int(meta["ContentLength"]), meta["ETag"]


def copy(bucket: str, source_key: str, dest_key: str) -> None:
    """Server-side copy inside one bucket (one PUT event for the destination; objects up to 5 GB)."""
    client("s3").copy_object(Bucket=bucket, Key=dest_key, CopySource={"Bucket": bucket, "Key": source_key})
