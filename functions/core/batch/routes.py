"""Job API routes (a Powertools Router in the API app): create a job, read one, list recent ones.

``POST /v1/jobs`` either takes small inline inputs (written to jobs/input/<id>.jsonl here) or returns
a presigned PUT URL for that key; either way the S3 event starts the same pipeline as a dropped
file. Jobs carry the API key id that created them; a key sees only its own jobs (ones dropped
straight into the bucket have no owner: visible to keys only with CIRRUS_BATCH_UNOWNED_JOBS_VISIBLE);
without an authorizer (direct/admin invocation) every job is visible.
"""
from __future__ import annotations

import json
from typing import Any

from aws_lambda_powertools.event_handler import Response, content_types
from aws_lambda_powertools.event_handler.router import APIGatewayRouter
from botocore.exceptions import BotoCoreError, ClientError
from pydantic import BaseModel, ConfigDict, Field, field_validator

from functions.core.adapters import s3
from functions.core.adapters.base import translate
from functions.core.batch import jobs
from functions.core.batch.objects import presigned_url
from functions.core.batch.schema import Status, Task
from functions.core.errors import ModelNotFound, NotFound, PayloadTooLarge, ValidationFailed
from functions.core.model_store import store as model_store
from functions.core.observability import logger
from functions.core.rest import caller_key_id, parse
from functions.core.settings import get_settings

router = APIGatewayRouter()
JSONL = "application/x-ndjson"


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


def _json(body: dict[str, Any], status: int = 200) -> Response:
    return Response(status_code=status, content_type=content_types.APPLICATION_JSON, body=body)


def view(job: dict[str, Any], *, with_urls: bool) -> dict[str, Any]:
    """The public shape of a job record (no internal keys, no claim tokens)."""
    settings = get_settings()
    out: dict[str, Any] = {
        "id": job["id"], "object": "batch_job", "status": job["status"],
        "created_at": job["created_at"], "completed_at": job.get("completed_at"),
        "model": job.get("model"), "task": job.get("task"), "model_versions": job.get("model_versions", []),
        "input": {"key": job.get("input_key"), "bytes": job.get("input_bytes")},
        "counts": {"total": job.get("lines_total"), "succeeded": job.get("lines_ok", 0),
                   "failed": job.get("lines_failed", 0)},
        "chunks": {"total": job.get("chunks_total"), "done": job.get("chunks_done", 0),
                   "failed": job.get("chunks_failed", 0)},
        "error": job.get("error"),
        "output": None,
    }
    if job.get("results_key"):
        out["output"] = {"results_key": job["results_key"], "errors_key": job["errors_key"]}
        if with_urls:
            for kind in ("results", "errors"):
                out["output"][f"{kind}_url"] = presigned_url("GET", job["input_bucket"], job[f"{kind}_key"],
                                                             expires_s=settings.batch_url_expiry_s)
    return out


@router.post("/v1/jobs")
def create_job() -> Response:
    req = parse(CreateJob, router)
    settings = get_settings()
    bucket = jobs.require(settings.data_bucket, "data_bucket")
    if req.inputs is not None and len(req.inputs) > settings.batch_max_lines:
        raise PayloadTooLarge(f"too many inputs: {len(req.inputs)} > {settings.batch_max_lines}",
                              param="inputs", code="too_many_inputs")
    if req.model is not None and req.model not in model_store().names():
        raise ModelNotFound(f"The model '{req.model}' does not exist", param="model")
    store = jobs.job_store(settings)
    job_id = jobs.new_job_id()
    key = jobs.input_key(job_id)
    record = store.new_job(job_id, status=Status.AWAITING_UPLOAD.value, input_bucket=bucket, input_key=key,
                           model=req.model, task=req.task, owner=caller_key_id(router),
                           defaults={k: v for k, v in (("model", req.model), ("task", req.task)) if v}, chunks_done=0, chunks_failed=0,
                           lines_ok=0, lines_failed=0)
    try:
        store.create(record)
        body = view(record, with_urls=False)
        if req.inputs is None:
            body["upload"] = {"method": "PUT", "url": presigned_url("PUT", bucket, key,
                                                                    expires_s=settings.batch_url_expiry_s),
                              "expires_in": settings.batch_url_expiry_s}
        else:
            lines = [json.dumps({"input": i} if isinstance(i, str) else i, ensure_ascii=False) for i in req.inputs]
            s3.put_bytes(bucket, key, ("\n".join(lines) + "\n").encode("utf-8"), content_type=JSONL)
    except (ClientError, BotoCoreError) as exc:
        raise translate(exc, "creating the job") from exc
    logger.info("batch job requested", extra={"job_id": job_id, "inline": req.inputs is not None,
                                              "inputs": len(req.inputs or [])})
    return _json(body, 201)


def _get_visible(job_id: str) -> dict[str, Any]:
    if not jobs.JOB_ID.match(job_id):
        raise NotFound(f"No job '{job_id[:64]}'", param="job_id", code="job_not_found")
    try:
        job = jobs.job_store().get(job_id)
    except (ClientError, BotoCoreError) as exc:
        raise translate(exc, "reading the job") from exc
    # None: no authorizer in front (direct/admin invocation) - everything is visible.
    owner = caller_key_id(router)
    visible = (None, owner) if get_settings().batch_unowned_jobs_visible else (owner,)
    if job is None or (owner is not None and job.get("owner") not in visible):
        raise NotFound(f"No job '{job_id}'", param="job_id", code="job_not_found")
    return job


@router.get("/v1/jobs/<job_id>")
def get_job(job_id: str) -> Response:
    return _json(view(_get_visible(job_id), with_urls=True))


@router.get("/v1/jobs")
def list_jobs() -> Response:
    raw = router.current_event.get_query_string_value("limit", "20") or "20"
    # isascii(): str.isdigit() also accepts "²" and other digits int() refuses (would be a 500).
    if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= 100:
        raise ValidationFailed("limit must be an integer from 1 to 100", param="limit")
    try:
        found = jobs.job_store().recent(limit=int(raw), owner=caller_key_id(router),
                                        with_unowned=get_settings().batch_unowned_jobs_visible)
    except (ClientError, BotoCoreError) as exc:
        raise translate(exc, "listing jobs") from exc
    return _json({"object": "list", "data": [view(j, with_urls=False) for j in found]})
