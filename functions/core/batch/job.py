"""The batch job: its typed record, its statuses, its S3 keys, and the S3-object -> job-id derivation.

A job moves awaiting_upload -> splitting -> running -> finalising -> succeeded | succeeded_with_errors,
and to failed from any non-final status. The transitions are the intent methods of
``functions.core.batch.job_store.JobStore``; nothing else writes a job. An awaiting_upload job whose
upload deadline passed is shown as ``expired`` (never stored: its record is reaped by the table's TTL).
"""
from __future__ import annotations

import hashlib
import re
import time
import uuid
from enum import Enum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from functions.core.contract import JOBS_INPUT_PREFIX, JOBS_INPUT_SUFFIX, JOBS_OUTPUT_PREFIX, JOBS_WORK_PREFIX

Task = Literal["embed", "classify", "chat"]
JOB_ID = re.compile(r"^job_[0-9a-f]{24}$")


class Status(str, Enum):
    AWAITING_UPLOAD = "awaiting_upload"   # created by POST /v1/jobs, waiting for the file
    SPLITTING = "splitting"
    RUNNING = "running"
    FINALISING = "finalising"
    SUCCEEDED = "succeeded"
    SUCCEEDED_WITH_ERRORS = "succeeded_with_errors"
    FAILED = "failed"


FINAL = (Status.SUCCEEDED, Status.SUCCEEDED_WITH_ERRORS, Status.FAILED)
ACTIVE = tuple(s for s in Status if s not in FINAL)
EXPIRED = "expired"  # the shown status of an awaiting_upload job past its upload deadline
# An upload that started just before its form expired may still be arriving: it is accepted if S3
# stored it within this long after the form's expiry.
UPLOAD_SLACK_S = 3600
# An unclaimed job's record lives this long past its upload deadline (shown as expired), then the
# table's TTL removes it; long enough that a backlogged S3 event still finds the record it names.
UNCLAIMED_RETENTION_S = 24 * 3600


class Defaults(BaseModel):
    """Per-file defaults (header line or POST /v1/jobs); a line's own fields win."""

    model_config = ConfigDict(extra="forbid")
    model: str | None = Field(None, min_length=1, max_length=128)
    task: Task | None = None


class JobError(BaseModel):
    code: str
    message: str


class Job(BaseModel):
    """One job record (``pk=JOB#<id>, sk=JOB`` in the Jobs table)."""

    model_config = ConfigDict(extra="ignore")  # the table's own keys (pk, sk, kind) stay in the store
    id: str
    status: Status
    created_at: str
    updated_at: str
    expires_at: int                       # the table's TTL attribute (epoch seconds)
    upload_deadline: int | None = None    # awaiting_upload only: the latest accepted upload time
    input_bucket: str
    input_key: str | None = None
    input_etag: str | None = None
    input_bytes: int | None = None
    owner: str | None = None              # API key id that created it; None: dropped into the bucket
    defaults: Defaults = Field(default_factory=Defaults)
    model: str | None = None
    task: str | None = None
    split_by: str | None = None           # the notification message that claimed the split
    chunks_total: int | None = None
    lines_total: int | None = None
    chunks_sent: int | None = None        # set once every chunk message left: workers own the job
    chunks_done: int = 0
    chunks_failed: int = 0
    lines_ok: int = 0
    lines_failed: int = 0
    finaliser: str | None = None          # the message that moved it to finalising
    results_key: str | None = None
    errors_key: str | None = None
    completed_at: str | None = None
    model_versions: list[str] = Field(default_factory=list)
    error: JobError | None = None

    @property
    def final(self) -> bool:
        return self.status in FINAL

    def upload_expired(self, now: float | None = None) -> bool:
        """Still waiting for an input that can no longer arrive (its upload deadline passed)."""
        return (self.status == Status.AWAITING_UPLOAD and self.upload_deadline is not None
                and (time.time() if now is None else now) > self.upload_deadline)


class Chunk(BaseModel):
    """One finished chunk (``pk=JOB#<id>, sk=CHUNK#<n>``), counted into its job exactly once."""

    model_config = ConfigDict(extra="ignore")
    chunk: int
    first_line: int
    lines: int
    ok: int
    errors: int
    status: Literal["done", "failed"]
    finished_at: str
    expires_at: int
    models: list[str] = Field(default_factory=list)   # "name@version" used
    reason: str | None = None                          # why a failed chunk failed


def new_job_id() -> str:
    """Id of a job created through the API (its input key is derived from it)."""
    return "job_" + uuid.uuid4().hex[:24]


def job_id_for(bucket: str, key: str, etag: str) -> str:
    """Id of a job started by a dropped file: the same object (key + ETag) always maps to the same job,
    so a duplicate S3 event or a re-upload of identical bytes cannot start a second job."""
    digest = hashlib.sha256(f"{bucket}\n{key}\n{etag.strip(chr(34))}".encode()).hexdigest()
    return "job_" + digest[:24]


def api_job_id(key: str) -> str | None:
    """The id of the POST /v1/jobs job whose input key ``key`` is, or None for any other key."""
    stem = key[len(JOBS_INPUT_PREFIX):].removesuffix(JOBS_INPUT_SUFFIX) if key.startswith(JOBS_INPUT_PREFIX) else ""
    return stem if JOB_ID.match(stem) else None


def job_ids_for(bucket: str, key: str, etag: str) -> list[str]:
    """The ids a created object may belong to, in the order to try: the API job it was uploaded
    for (if its key names one), then the job a dropped file of these bytes would be."""
    api = api_job_id(key)
    return ([api] if api else []) + [job_id_for(bucket, key, etag)]


def input_key(job_id: str) -> str:
    return f"{JOBS_INPUT_PREFIX}{job_id}{JOBS_INPUT_SUFFIX}"


def work_key(job_id: str, chunk: int, kind: str) -> str:
    return f"{JOBS_WORK_PREFIX}{job_id}/chunk-{chunk:06d}.{kind}.jsonl"


def output_key(job_id: str, kind: str) -> str:
    return f"{JOBS_OUTPUT_PREFIX}{job_id}/{kind}.jsonl"
