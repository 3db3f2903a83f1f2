"""Batch job use cases behind the job routes: create a job, read one, list recent ones (data, no HTTP).

``create_job`` either takes small inline inputs (written to jobs/input/<id>.jsonl here) or returns
a presigned POST form for that key (S3 refuses files past the batch file limit); either way the S3
event starts the same pipeline as a dropped file. A job never uploaded is shown as expired once its
upload deadline passes, and the table's TTL removes it. Jobs carry the API key id that created them; a key sees only its own jobs (ones dropped
straight into the bucket have no owner: visible to keys only with CIRRUS_BATCH_UNOWNED_JOBS_VISIBLE);
without an authorizer (direct/admin invocation, ``caller=None``) every job is visible.
"""
from __future__ import annotations

import json
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError
from pydantic import BaseModel, ConfigDict, Field, field_validator

from functions.core.aws import s3
from functions.core.aws.base import translate
from functions.core.batch.job import EXPIRED, JOB_ID, Defaults, Job, Status, Task, input_key, new_job_id
from functions.core.batch.job_store import job_store, require
from functions.core.batch.objects import JSONL, presigned_get, upload_form
from functions.core.errors import ModelNotFound, NotFound, PayloadTooLarge, ValidationFailed
from functions.core.inference.model_store import store as model_store
from functions.core.observability import logger
from functions.core.settings import Settings



class CreateJob(BaseModel):
    """POST /v1/jobs body. Inline ``inputs`` are strings or line objects ({"id"?, "input", ...})."""

    model_config = ConfigDict(extra="forbid")
    model: str | None = Field(None, min_length=1, max_length=128)
    task: Task | None = None
    inputs: list[str | dict[str, Any]] | None = Field(None, min_length=1)

    @field_validator("inputs")
    @classmethod
    def _no_header(cls, inputs: list[str | dict[str, Any]] | None) -> list[str | dict[str, Any]] | None:
        # Written as line 1 of the file, {"defaults": ...} would be read as the file header and the
        # input would vanish without a result or error line; the body's model/task are the defaults.
        for i, item in enumerate(inputs or []):
            if isinstance(item, dict) and "defaults" in item:
                raise ValueError(f"inputs[{i}] has 'defaults': give defaults as the body's model and task")
        return inputs


def view(job: Job, settings: Settings, *, with_urls: bool) -> dict[str, Any]:
    """The public shape of a job record (no internal keys, no claim tokens)."""
    expired = job.upload_expired()
    out: dict[str, Any] = {
        "id": job.id, "object": "batch_job", "status": EXPIRED if expired else job.status.value,
        "created_at": job.created_at, "completed_at": job.completed_at,
        "model": job.model, "task": job.task, "model_versions": job.model_versions,
        "input": {"key": job.input_key, "bytes": job.input_bytes},
        "counts": {"total": job.lines_total, "succeeded": job.lines_ok, "failed": job.lines_failed},
        "chunks": {"total": job.chunks_total, "done": job.chunks_done, "failed": job.chunks_failed},
        "error": job.error.model_dump() if job.error else None,
        "output": None,
    }
    if job.status == Status.AWAITING_UPLOAD:
        out["upload_deadline"] = job.upload_deadline
    if expired:
        out["error"] = {"code": "upload_expired",
                        "message": "no input was uploaded before the upload deadline; create a new job"}
    if job.results_key:
        out["output"] = {"results_key": job.results_key, "errors_key": job.errors_key}
        if with_urls:
            for kind, key in (("results", job.results_key), ("errors", job.errors_key)):
                out["output"][f"{kind}_url"] = presigned_get(job.input_bucket, key or "",
                                                             expires_s=settings.batch_url_expiry_s)
    return out


def create_job(req: CreateJob, settings: Settings, *, owner: str | None) -> dict[str, Any]:
    """A new job waiting for its input: written here when inline, else the body has an upload URL."""
    bucket = require(settings.data_bucket, "data_bucket")
    if req.inputs is not None and len(req.inputs) > settings.batch_max_lines:
        raise PayloadTooLarge(f"too many inputs: {len(req.inputs)} > {settings.batch_max_lines}",
                              param="inputs", code="too_many_inputs")
    if req.model is not None and req.model not in model_store().names():
        raise ModelNotFound(f"The model '{req.model}' does not exist", param="model")
    store = job_store()
    job_id = new_job_id()
    key = input_key(job_id)
    job = store.new_job(job_id, status=Status.AWAITING_UPLOAD, input_bucket=bucket, input_key=key,
                        model=req.model, task=req.task, owner=owner,
                        defaults=Defaults(model=req.model, task=req.task))
    # The record goes first: the input's S3 event must find it (a job-named key without a record
    # would start an ownerless job). If the input then cannot be written, the record is failed so
    # nothing waits for an input that will not come (and if even that fails, its short TTL reaps it).
    try:
        store.create(job)
    except (ClientError, BotoCoreError) as exc:
        raise translate(exc, "creating the job") from exc
    body = view(job, settings, with_urls=False)
    if req.inputs is None:
        body["upload"] = upload_form(bucket, key, max_bytes=settings.batch_max_file_bytes,
                                     expires_s=settings.batch_upload_expiry_s)
    else:
        lines = [json.dumps({"input": i} if isinstance(i, str) else i, ensure_ascii=False) for i in req.inputs]
        try:
            s3.put_bytes(bucket, key, ("\n".join(lines) + "\n").encode("utf-8"), content_type=JSONL)
        except (ClientError, BotoCoreError) as exc:
            abandon_unstored(job_id)
            raise translate(exc, "storing the job's inputs") from exc
    logger.info("batch job requested", extra={"job_id": job_id, "inline": req.inputs is not None,
                                              "inputs": len(req.inputs or [])})
    return body


def abandon_unstored(job_id: str) -> None:
    """Fail a just-created job whose input could not be written (best effort: else its TTL reaps it)."""
    try:
        job_store().abandon_upload(job_id, "input_not_stored", "the job's input could not be stored; "
                                                                "create the job again")
    except (ClientError, BotoCoreError):
        logger.warning("could not mark an unstored job failed (its TTL removes it)", extra={"job_id": job_id})


def get_job(job_id: str, settings: Settings, *, caller: str | None) -> dict[str, Any]:
    """One job as ``caller`` may see it (with result URLs once finished); 404 otherwise."""
    if not JOB_ID.match(job_id):
        raise NotFound(f"No job '{job_id[:64]}'", param="job_id", code="job_not_found")
    try:
        job = job_store().get(job_id)
    except (ClientError, BotoCoreError) as exc:
        raise translate(exc, "reading the job") from exc
    # None: no authorizer in front (direct/admin invocation) - everything is visible.
    visible = (None, caller) if settings.batch_unowned_jobs_visible else (caller,)
    if job is None or (caller is not None and job.owner not in visible):
        raise NotFound(f"No job '{job_id}'", param="job_id", code="job_not_found")
    return view(job, settings, with_urls=True)


def parse_limit(raw: str | None) -> int:
    raw = raw or "20"
    # isascii(): str.isdigit() also accepts "²" and other digits int() refuses (would be a 500).
    if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= 100:
        raise ValidationFailed("limit must be an integer from 1 to 100", param="limit")
    return int(raw)


def list_jobs(limit: int, settings: Settings, *, caller: str | None) -> dict[str, Any]:
    """The newest jobs ``caller`` may see."""
    try:
        found = job_store().recent(limit=limit, owner=caller, with_unowned=settings.batch_unowned_jobs_visible)
    except (ClientError, BotoCoreError) as exc:
        raise translate(exc, "listing jobs") from exc
    return {"object": "list", "data": [view(j, settings, with_urls=False) for j in found]}
