"""The OpenAI Files and Batch API on top of the batch pipeline (data, no HTTP).

A batch is one pipeline job: ``POST /v1/batches`` converts the uploaded OpenAI batch file into the
pipeline's input format (openai_lines.py) and hands it to the same S3-event pipeline as any job,
so a batch has the pipeline's guarantees (every request ends as exactly one output or error line,
nothing runs twice). Batch ``batch_<hex>`` is job ``job_<hex>``; its output and error files are
``file-<hex>-results`` / ``file-<hex>-errors``, converted to OpenAI's batch output format once, on
first read. Files and batches carry the creating API key id and are visible to that key only
(``caller=None``, no authorizer in front, sees everything), as jobs are.
"""
from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any, Literal

from botocore.exceptions import BotoCoreError, ClientError
from pydantic import BaseModel, ConfigDict, Field, StrictStr

from functions.core.aws import s3
from functions.core.aws.base import translate
from functions.core.batch import openai_lines
from functions.core.batch.job import FINAL, Defaults, Job, Status, input_key
from functions.core.batch.job_store import job_store, require
from functions.core.batch.objects import (JSONL, StreamWriter, delete_versions, iter_lines, presigned_get,
                                         read_blocks, upload_form)
from functions.core.batch.service import abandon_unstored
from functions.core.contract import OPENAI_BATCHES_PREFIX, OPENAI_FILES_PREFIX
from functions.core.errors import BadRequest, Conflict, NotFound, PayloadTooLarge, ValidationFailed
from functions.core.observability import logger
from functions.core.settings import Settings

FILE_ID = re.compile(r"^file-([0-9a-f]{24})(?:-(results|errors))?$")
BATCH_ID = re.compile(r"^batch_([0-9a-f]{24})$")
PURPOSES = ("batch",)


class FileUpload(BaseModel):
    """``POST /v1/files`` with a JSON body: a file too large for one request, uploaded with a presigned POST."""

    model_config = ConfigDict(extra="forbid")
    purpose: Literal["batch"]
    filename: StrictStr = Field("batch.jsonl", min_length=1, max_length=256)


class CreateBatch(BaseModel):
    """``POST /v1/batches``."""

    model_config = ConfigDict(extra="forbid")
    input_file_id: StrictStr
    endpoint: StrictStr
    completion_window: Literal["24h"]
    metadata: dict[StrictStr, StrictStr] | None = Field(None, max_length=16)


# --- stored records --------------------------------------------------------------------------------
def _bucket(settings: Settings) -> str:
    return require(settings.data_bucket, "data_bucket")


def _content_key(file_id: str) -> str:
    return f"{OPENAI_FILES_PREFIX}{file_id}/content"


def _meta_key(file_id: str) -> str:
    return f"{OPENAI_FILES_PREFIX}{file_id}/meta.json"


def _batch_key(batch_id: str) -> str:
    return f"{OPENAI_BATCHES_PREFIX}{batch_id}.json"


def _read_json(bucket: str, key: str) -> dict | None:
    try:
        return json.loads(s3.get_bytes(bucket, key))
    except s3.ObjectNotFound:
        return None


def _put_json(bucket: str, key: str, obj: dict) -> None:
    s3.put_bytes(bucket, key, json.dumps(obj).encode(), content_type="application/json")


def _visible(record: dict, caller: str | None) -> bool:
    return caller is None or record.get("owner") == caller


def _epoch(iso: str | None) -> int | None:
    return int(datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()) if iso else None


@contextmanager
def _aws(what: str) -> Iterator[None]:
    """Storage failures while ``what``: the one translation (503/429), never a 500."""
    try:
        yield
    except (ClientError, BotoCoreError) as exc:
        raise translate(exc, what) from exc


# --- files -----------------------------------------------------------------------------------------
def _file_view(meta: dict) -> dict[str, Any]:
    return {"id": meta["id"], "object": "file", "bytes": meta.get("bytes"), "created_at": meta["created_at"],
            "filename": meta["filename"], "purpose": meta["purpose"], "status": meta["status"],
            "status_details": meta.get("status_details")}


def _new_file(filename: str, purpose: str, owner: str | None, **fields: Any) -> dict[str, Any]:
    return {"id": f"file-{uuid.uuid4().hex[:24]}", "filename": filename, "purpose": purpose,
            "created_at": int(time.time()), "owner": owner, **fields}


def create_file(purpose: str | None, filename: str | None, data: bytes | None, settings: Settings, *,
                owner: str | None) -> dict[str, Any]:
    """A file sent in the request (the multipart form's ``purpose`` and ``file``)."""
    if purpose not in PURPOSES:
        raise ValidationFailed("purpose must be 'batch' (the only purpose this server stores files for)",
                               param="purpose")
    if not data:
        raise ValidationFailed("file is missing or empty", param="file")
    bucket = _bucket(settings)
    meta = _new_file((filename or "upload.jsonl")[:256], "batch", owner, bytes=len(data), status="processed")
    with _aws("storing the file"):
        s3.put_bytes(bucket, _content_key(meta["id"]), data, content_type=JSONL)
        _put_json(bucket, _meta_key(meta["id"]), meta)
    logger.info("file stored", extra={"file_id": meta["id"], "bytes": meta["bytes"]})
    return _file_view(meta)


def create_file_upload(req: FileUpload, settings: Settings, *, owner: str | None) -> dict[str, Any]:
    """A file record whose bytes come with a presigned POST form (past API Gateway's 10 MB body
    limit); S3 refuses a file past the batch file limit."""
    bucket = _bucket(settings)
    meta = _new_file(req.filename, req.purpose, owner, bytes=None, status="uploaded")
    with _aws("creating the file"):
        _put_json(bucket, _meta_key(meta["id"]), meta)
        upload = upload_form(bucket, _content_key(meta["id"]), max_bytes=settings.batch_max_file_bytes,
                             expires_s=settings.batch_upload_expiry_s)
    return {**_file_view(meta), "upload": upload}


def _uploaded_meta(file_id: str, bucket: str, caller: str | None) -> dict:
    meta = _read_json(bucket, _meta_key(file_id))
    if meta is None or not _visible(meta, caller):
        raise NotFound(f"No such file: '{file_id}'", param="file_id", code="file_not_found")
    if meta.get("bytes") is None:  # a presigned upload: its size once the upload has landed
        found = s3.head(bucket, _content_key(file_id))
        if found is not None:
            meta = {**meta, "bytes": found[0], "status": "processed"}
    return meta


def get_file(file_id: str, settings: Settings, *, caller: str | None) -> dict[str, Any]:
    m = FILE_ID.match(file_id)
    if not m:
        raise NotFound(f"No such file: '{file_id[:64]}'", param="file_id", code="file_not_found")
    bucket = _bucket(settings)
    with _aws("reading the file"):
        if m.group(2) is None:
            return _file_view(_uploaded_meta(file_id, bucket, caller))
        return _file_view(_output_meta(m.group(1), m.group(2), settings, caller))


def file_content_url(file_id: str, settings: Settings, *, caller: str | None) -> str:
    """Where the file's bytes can be read (a presigned GET): the API answers with a redirect to it,
    since a Lambda response cannot carry more than 6 MB."""
    get_file(file_id, settings, caller=caller)  # exists, visible, and (for outputs) converted
    bucket = _bucket(settings)
    if s3.head(bucket, _content_key(file_id)) is None:
        raise NotFound(f"File '{file_id}' has no content yet (upload pending)", param="file_id",
                       code="file_not_ready")
    return presigned_get(bucket, _content_key(file_id), expires_s=settings.batch_url_expiry_s)


def _output_meta(hex_id: str, kind: str, settings: Settings, caller: str | None) -> dict:
    batch_id = f"batch_{hex_id}"
    record, job = _batch(batch_id, settings, caller)
    file_id = f"file-{hex_id}-{kind}"
    if job is None or job.results_key is None:
        raise NotFound(f"No such file: '{file_id}' (the batch has not completed)", param="file_id",
                       code="file_not_found")
    bucket = _bucket(settings)
    size = _ensure_output(batch_id, job, kind, bucket, file_id)
    return {"id": file_id, "filename": f"{batch_id}_{'output' if kind == 'results' else 'error'}.jsonl",
            "purpose": "batch_output", "created_at": _epoch(job.completed_at) or record["created_at"],
            "bytes": size, "status": "processed"}


def _ensure_output(batch_id: str, job: Job, kind: str, bucket: str, file_id: str) -> int:
    """Convert the job's results/errors to OpenAI's batch output format, once (a pure function of the
    job's outputs, so two concurrent first reads write the same bytes)."""
    found = s3.head(bucket, _content_key(file_id))
    if found is not None:
        return found[0]

    def lines(key: str | None) -> Any:
        size = s3.head(bucket, key or "")
        if size is None:
            return iter(())
        return (line for line, _ in iter_lines(read_blocks(bucket, key or "", etag=size[1]), 1 << 30)
                if line)

    failed = openai_lines.failed_requests(lines(job.errors_key))
    with StreamWriter(bucket, _content_key(file_id)) as out:
        rows = (openai_lines.output_lines(batch_id, lines(job.results_key), failed) if kind == "results"
                else openai_lines.error_lines(batch_id, failed))
        for row in rows:
            out.write(row)
    found = s3.head(bucket, _content_key(file_id))
    return found[0] if found else 0


# --- batches ---------------------------------------------------------------------------------------
def _batch(batch_id: str, settings: Settings, caller: str | None) -> tuple[dict, Job | None]:
    m = BATCH_ID.match(batch_id)
    record = _read_json(_bucket(settings), _batch_key(batch_id)) if m else None
    if record is None or not _visible(record, caller):
        raise NotFound(f"No such batch: '{batch_id[:64]}'", param="batch_id", code="batch_not_found")
    return record, job_store().get(record["job_id"])


_STATUS = {Status.AWAITING_UPLOAD: "validating", Status.SPLITTING: "validating", Status.RUNNING: "in_progress",
           Status.FINALISING: "finalizing", Status.SUCCEEDED: "completed",
           Status.SUCCEEDED_WITH_ERRORS: "completed"}


def _batch_view(record: dict, job: Job | None) -> dict[str, Any]:
    hex_id = record["id"].removeprefix("batch_")
    status = _STATUS.get(job.status, "failed") if job else "validating"
    errors = None
    if job and job.upload_expired():  # its input was never copied in (e.g. storage failed mid-create)
        status = "failed"
        errors = {"object": "list", "data": [{"code": "upload_expired", "message": "the batch's input never "
                                              "reached the pipeline", "param": None, "line": None}]}
    elif job and job.status == Status.FAILED:
        if job.error and job.error.code == "cancelled":
            status = "cancelled"
        elif job.results_key:
            status = "completed"  # some requests failed; they are in the error file
        else:
            errors = {"object": "list", "data": [{"code": job.error.code if job.error else "failed",
                                                  "message": job.error.message if job.error else "",
                                                  "param": None, "line": None}]}
    done = bool(job and job.results_key)
    lines_failed = job.lines_failed if job else 0
    return {
        "id": record["id"], "object": "batch", "endpoint": record["endpoint"], "errors": errors,
        "input_file_id": record["input_file_id"], "completion_window": record["completion_window"],
        "status": status, "output_file_id": f"file-{hex_id}-results" if done else None,
        "error_file_id": f"file-{hex_id}-errors" if done and lines_failed else None,
        "created_at": record["created_at"],
        "in_progress_at": record["created_at"] if status != "validating" else None,
        "expires_at": record["created_at"] + 24 * 3600,
        "finalizing_at": None, "completed_at": _epoch(job.completed_at) if job and status == "completed" else None,
        "failed_at": _epoch(job.updated_at) if status == "failed" and job else None, "expired_at": None,
        "cancelling_at": None, "cancelled_at": _epoch(job.updated_at) if status == "cancelled" and job else None,
        # Counted per request, as OpenAI does: the pipeline counts texts, known per request only at the end.
        "request_counts": {"total": record["requests"],
                           "completed": record["requests"] - _failed_requests(job) if done else 0,
                           "failed": _failed_requests(job) if done else 0},
        "metadata": record.get("metadata"),
    }


def _failed_requests(job: Job | None) -> int:
    if job is None or not job.lines_failed or not job.errors_key:
        return 0
    data = s3.get_bytes(job.input_bucket, job.errors_key)  # error files are small next to results
    return len(openai_lines.failed_requests(line for line in data.splitlines() if line))


def create_batch(req: CreateBatch, settings: Settings, *, owner: str | None) -> dict[str, Any]:
    """Validate and convert the input file, then start its pipeline job."""
    if req.endpoint not in openai_lines.ENDPOINTS:
        raise ValidationFailed(f"endpoint {req.endpoint[:64]!r} is not supported for batches; supported: "
                               f"{', '.join(openai_lines.ENDPOINTS)}",
                               param="endpoint", code="unsupported_endpoint")
    bucket = _bucket(settings)
    if not FILE_ID.match(req.input_file_id) or FILE_ID.match(req.input_file_id).group(2):  # type: ignore[union-attr]
        raise NotFound(f"No such file: '{req.input_file_id[:64]}'", param="input_file_id", code="file_not_found")
    hex_id = uuid.uuid4().hex[:24]
    batch_id, job_id = f"batch_{hex_id}", f"job_{hex_id}"
    staged = f"{OPENAI_BATCHES_PREFIX}{batch_id}.input.jsonl"
    with _aws("creating the batch"):
        meta = _uploaded_meta(req.input_file_id, bucket, owner)
        if meta["status"] == "error":
            raise BadRequest(f"the input file was rejected: {meta.get('status_details')}", param="input_file_id",
                             code="file_rejected")
        found = s3.head(bucket, _content_key(req.input_file_id))
        if found is None:
            raise ValidationFailed("the input file has no content yet (upload pending)", param="input_file_id",
                                   code="file_not_ready")
        if found[0] > settings.batch_max_file_bytes:
            message = f"the input file has {found[0]} bytes, the limit is {settings.batch_max_file_bytes}"
            _discard_content(bucket, meta, message)
            raise PayloadTooLarge(message, param="input_file_id", code="file_too_large")
        requests, first_model = _convert(bucket, _content_key(req.input_file_id), found[1], staged, req.endpoint,
                                         settings)
        record = {"id": batch_id, "job_id": job_id, "input_file_id": meta["id"], "endpoint": req.endpoint,
                  "completion_window": req.completion_window, "metadata": req.metadata,
                  "created_at": int(time.time()), "owner": owner, "requests": requests}
        _put_json(bucket, _batch_key(batch_id), record)
        store = job_store()
        task = "chat" if req.endpoint == openai_lines.CHAT else "embed"
        job = store.new_job(job_id, status=Status.AWAITING_UPLOAD, input_bucket=bucket, input_key=input_key(job_id),
                            model=None, task=task, owner=owner,
                            defaults=Defaults(task=task, model=first_model if task == "chat" else None))
        store.create(job)
        # One copy into jobs/input/: one S3 event, after the job record exists (the splitter claims it).
        try:
            s3.copy(bucket, staged, input_key(job_id))
        except (ClientError, BotoCoreError):
            abandon_unstored(job_id)  # the batch shows failed instead of validating forever
            raise
    logger.info("batch created", extra={"batch_id": batch_id, "job_id": job_id, "requests": requests})
    return _batch_view(record, job)


def _discard_content(bucket: str, meta: dict, why: str) -> None:
    """Delete an uploaded file's bytes that no batch may use (every version); its record stays,
    with status ``error`` and the reason."""
    try:
        _put_json(bucket, _meta_key(meta["id"]), {**meta, "bytes": 0, "status": "error", "status_details": why})
        delete_versions(bucket, _content_key(meta["id"]))
    except (ClientError, BotoCoreError):
        logger.exception("could not delete a rejected file's content", extra={"file_id": meta["id"]})


def _convert(bucket: str, key: str, etag: str, dest: str, endpoint: str, settings: Settings) -> tuple[int, str]:
    """OpenAI batch lines -> pipeline lines at ``dest``; 400 naming the first bad line (nothing started).
    Returns the number of requests and the first request's model (a chat job's default)."""
    seen: set[str] = set()
    first_model = ""
    try:
        with StreamWriter(bucket, dest) as out:
            number = 0
            for number, (raw, _) in enumerate(iter_lines(read_blocks(bucket, key, etag=etag),
                                                         settings.batch_max_line_bytes), start=1):
                if raw is None:
                    raise openai_lines.BadLine(number, f"longer than {settings.batch_max_line_bytes} bytes")
                if not raw.strip():
                    continue
                req = openai_lines.parse_request(number, raw, endpoint, settings.default_embedding_model)
                if req.custom_id in seen:
                    raise openai_lines.BadLine(number, f"duplicate custom_id {req.custom_id[:64]!r}")
                seen.add(req.custom_id)
                first_model = first_model or req.model
                if len(seen) > openai_lines.MAX_REQUESTS:
                    raise openai_lines.BadLine(number, f"more than {openai_lines.MAX_REQUESTS} requests")
                for line in openai_lines.pipeline_lines(req):
                    out.write(line)
    except openai_lines.BadLine as exc:
        raise BadRequest(f"input file {exc}", param="input_file_id", code="invalid_batch_line") from None
    if not seen:
        raise BadRequest("the input file holds no requests", param="input_file_id", code="invalid_batch_line")
    return len(seen), first_model


def get_batch(batch_id: str, settings: Settings, *, caller: str | None) -> dict[str, Any]:
    with _aws("reading the batch"):
        return _batch_view(*_batch(batch_id, settings, caller))


def list_batches(limit: int, after: str | None, settings: Settings, *, caller: str | None) -> dict[str, Any]:
    """The caller's batches, newest first (the pipeline's job index; plain jobs are skipped)."""
    bucket = _bucket(settings)
    out: list[dict] = []
    with _aws("listing batches"):
        jobs = job_store().recent(limit=100, owner=caller, with_unowned=False)
        skipping = after is not None
        for job in jobs:
            batch_id = "batch_" + job.id.removeprefix("job_")
            if skipping:
                skipping = batch_id != after
                continue
            record = _read_json(bucket, _batch_key(batch_id))
            if record is not None and _visible(record, caller):
                out.append(_batch_view(record, job))
            if len(out) > limit:
                break
    page = out[:limit]
    return {"object": "list", "data": page, "first_id": page[0]["id"] if page else None,
            "last_id": page[-1]["id"] if page else None, "has_more": len(out) > limit}


def cancel_batch(batch_id: str, settings: Settings, *, caller: str | None) -> dict[str, Any]:
    """Stop a batch that has not finished: its job fails with code ``cancelled``; workers skip its
    remaining chunks. A cancelled batch has no output file."""
    with _aws("cancelling the batch"):
        record, job = _batch(batch_id, settings, caller)
        if job is not None and job.status in FINAL:
            if job.error and job.error.code == "cancelled":
                return _batch_view(record, job)
            raise Conflict(f"Cannot cancel a batch with status '{_batch_view(record, job)['status']}'",
                           param="batch_id", code="batch_not_cancellable")
        job = job_store().fail(record["job_id"], "cancelled", "cancelled by request") or job_store().get(
            record["job_id"])
        logger.info("batch cancelled", extra={"batch_id": batch_id})
        return _batch_view(record, job)
