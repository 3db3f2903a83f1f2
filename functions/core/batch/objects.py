"""S3 operations of the batch pipeline: streamed line reads, write-once chunk objects, streamed outputs.

Built on the container's S3 client (functions/core/aws/base.py); whole-object helpers live in
functions/core/aws/s3.py and are not repeated here.
"""
from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from typing import Any

from botocore.exceptions import ClientError

from functions.core.aws import s3
from functions.core.aws.base import client, error_code

READ_BLOCK = 1024 * 1024
PART_BYTES = 8 * 1024 * 1024   # S3 multipart parts must be >= 5 MiB (all but the last)

JSONL = "application/x-ndjson"  # every batch object is JSON Lines


class ObjectChanged(RuntimeError):
    """The input object is gone or no longer the one the job was split from (ETag mismatch)."""


def quoted(etag: str) -> str:
    # S3 event notifications carry the ETag unquoted; HTTP If-Match wants the quoted form.
    return etag if etag.startswith('"') else f'"{etag}"'


def read_blocks(bucket: str, key: str, *, etag: str, start: int = 0, end: int | None = None,
                block: int = READ_BLOCK) -> Iterator[bytes]:
    """Stream bytes [start, end) of the object, refusing any version other than ``etag``."""
    kwargs: dict[str, Any] = {"Bucket": bucket, "Key": key, "IfMatch": quoted(etag)}
    if start or end is not None:
        kwargs["Range"] = f"bytes={start}-{'' if end is None else end - 1}"
    try:
        body = client("s3").get_object(**kwargs)["Body"]
    except ClientError as exc:
        # A deleted input can answer 403 to a reader that lists only its prefix (s3.is_missing).
        if error_code(exc) == "PreconditionFailed" or s3.is_missing(exc, bucket, key):
            raise ObjectChanged(f"input object changed or deleted ({error_code(exc)})") from exc
        raise
    try:
        yield from body.iter_chunks(block)
    finally:
        body.close()


def iter_lines(blocks: Iterable[bytes], max_line_bytes: int) -> Iterator[tuple[bytes | None, int]]:
    """Split a byte stream into lines: (content, bytes consumed incl. the newline).

    Content has no "\\n" and no trailing "\\r"; it is None when the line is longer than
    ``max_line_bytes`` (never buffered, so one huge line cannot exhaust memory). A final line
    without a newline is still a line; a trailing newline does not start an empty one.
    """
    pending: list[bytes] = []
    pending_len = 0
    overflow = False
    for chunk in blocks:
        pos = 0
        while True:
            nl = chunk.find(b"\n", pos)
            if nl < 0:
                rest = chunk[pos:]
                pending_len += len(rest)
                if not overflow:
                    if pending_len > max_line_bytes:
                        overflow, pending = True, []
                    elif rest:
                        pending.append(rest)
                break
            piece = chunk[pos:nl]
            size = pending_len + len(piece)
            yield _finish(pending, piece, size, overflow, max_line_bytes), size + 1
            pending, pending_len, overflow = [], 0, False
            pos = nl + 1
    if pending_len:
        yield _finish(pending, b"", pending_len, overflow, max_line_bytes), pending_len


def _finish(pending: list[bytes], piece: bytes, size: int, overflow: bool, limit: int) -> bytes | None:
    if overflow or size > limit:
        return None
    line = b"".join(pending) + piece if pending else piece
    return line[:-1] if line.endswith(b"\r") else line


def put_if_absent(bucket: str, key: str, body: bytes) -> bool:
    """Write-once: True if written, False if the key already existed (a retry's earlier write)."""
    try:
        client("s3").put_object(Bucket=bucket, Key=key, Body=body, ContentType=JSONL, IfNoneMatch="*")
        return True
    except ClientError as exc:
        # 409 ConditionalRequestConflict: a concurrent writer of the same key is mid-upload.
        if error_code(exc) in ("PreconditionFailed", "ConditionalRequestConflict"):
            return False
        raise


class StreamWriter:
    """Write one object from many pieces without holding it in memory (multipart past 8 MiB)."""

    def __init__(self, bucket: str, key: str) -> None:
        self.bucket, self.key = bucket, key
        self._buf: list[bytes] = []
        self._buf_len = 0
        self._upload_id: str | None = None
        self._parts: list[dict[str, Any]] = []

    def write(self, data: bytes) -> None:
        if not data:
            return
        self._buf.append(data)
        self._buf_len += len(data)
        if self._buf_len >= PART_BYTES:
            self._flush_part()

    def _flush_part(self) -> None:
        s3 = client("s3")
        if self._upload_id is None:
            self._upload_id = s3.create_multipart_upload(Bucket=self.bucket, Key=self.key,
                                                         ContentType=JSONL)["UploadId"]
        number = len(self._parts) + 1
        resp = s3.upload_part(Bucket=self.bucket, Key=self.key, UploadId=self._upload_id,
                              PartNumber=number, Body=b"".join(self._buf))
        self._parts.append({"PartNumber": number, "ETag": resp["ETag"]})
        self._buf, self._buf_len = [], 0

    def close(self) -> None:
        s3 = client("s3")
        if self._upload_id is None:
            s3.put_object(Bucket=self.bucket, Key=self.key, Body=b"".join(self._buf),
                          ContentType=JSONL)
            return
        if self._buf_len:
            self._flush_part()
        s3.complete_multipart_upload(Bucket=self.bucket, Key=self.key, UploadId=self._upload_id,
                                     MultipartUpload={"Parts": self._parts})

    def abort(self) -> None:
        if self._upload_id is not None:
            client("s3").abort_multipart_upload(Bucket=self.bucket, Key=self.key, UploadId=self._upload_id)

    def __enter__(self) -> "StreamWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def copy_into(writer: StreamWriter, bucket: str, key: str) -> None:
    """Append a whole object to ``writer``, streamed."""
    body = client("s3").get_object(Bucket=bucket, Key=key)["Body"]
    try:
        for block in body.iter_chunks(READ_BLOCK):
            writer.write(block)
    finally:
        body.close()


def presigned_get(bucket: str, key: str, *, expires_s: int) -> str:
    """A presigned GET URL (results, file contents); signing makes no network call."""
    return client("s3").generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": key},
                                               ExpiresIn=expires_s)


def upload_form(bucket: str, key: str, *, max_bytes: int, expires_s: int) -> dict[str, Any]:
    """A presigned POST form for exactly ``key``, refused by S3 past ``max_bytes`` (the public
    ``upload`` shape of the job and file APIs). Unlike a presigned PUT, S3 itself enforces the size;
    the form can still be reused until it expires, hence the short expiry."""
    form = client("s3").generate_presigned_post(
        bucket, key, Conditions=[["content-length-range", 1, max_bytes]], ExpiresIn=expires_s)
    # boto3 adds the bucket and exact-key conditions itself; the bucket's default SSE-KMS encrypts
    # the object, so the form needs no encryption field.
    return {"method": "POST", "url": form["url"], "fields": form["fields"], "max_bytes": max_bytes,
            "expires_in": expires_s, "expires_at": int(time.time()) + expires_s}


def delete_versions(bucket: str, key: str, *, etag: str | None = None) -> int:
    """Delete every version (and delete marker) of ``key``, or only the versions with ``etag``; the
    number deleted. A rejected input must not stay behind as a noncurrent version."""
    s3 = client("s3")
    doomed: list[dict[str, str]] = []
    for page in s3.get_paginator("list_object_versions").paginate(Bucket=bucket, Prefix=key):
        for v in page.get("Versions", []):
            if v["Key"] == key and (etag is None or v.get("ETag", "").strip('"') == etag.strip('"')):
                doomed.append({"Key": key, "VersionId": v["VersionId"]})
        if etag is None:
            doomed += [{"Key": key, "VersionId": m["VersionId"]} for m in page.get("DeleteMarkers", [])
                       if m["Key"] == key]
    for start in range(0, len(doomed), 1000):
        s3.delete_objects(Bucket=bucket, Delete={"Objects": doomed[start:start + 1000], "Quiet": True})
    return len(doomed)
