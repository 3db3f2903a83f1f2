"""Shared pieces of the batch pipeline: the container's job store, job ids, keys, and failing a job."""
from __future__ import annotations

import hashlib
import re
import threading
import uuid
from typing import Any

from functions.core.batch.schema import Status
from functions.core.batch.store import JobStore, now_iso
from functions.core.observability import logger
from functions.core.settings import Settings, get_settings

# Same as infra.resources.RESOURCES.jobs_*_prefix (functions cannot import infra).
INPUT_PREFIX = "jobs/input/"
WORK_PREFIX = "jobs/work/"
OUTPUT_PREFIX = "jobs/output/"
INPUT_SUFFIX = ".jsonl"
JOB_ID = re.compile(r"^job_[0-9a-f]{24}$")


def new_job_id() -> str:
    """Id of a job created through the API (its input key is derived from it)."""
    return "job_" + uuid.uuid4().hex[:24]


def job_id_for(bucket: str, key: str, etag: str) -> str:
    """Id of a job started by a dropped file: the same object (key + ETag) always maps to the same job,
    so a duplicate S3 event or a re-upload of identical bytes cannot start a second job."""
    digest = hashlib.sha256(f"{bucket}\n{key}\n{etag.strip(chr(34))}".encode()).hexdigest()
    return "job_" + digest[:24]


def input_key(job_id: str) -> str:
    return f"{INPUT_PREFIX}{job_id}{INPUT_SUFFIX}"


def work_key(job_id: str, chunk: int, kind: str) -> str:
    return f"{WORK_PREFIX}{job_id}/chunk-{chunk:06d}.{kind}.jsonl"


def output_key(job_id: str, kind: str) -> str:
    return f"{OUTPUT_PREFIX}{job_id}/{kind}.jsonl"


def require(value: str | None, name: str) -> str:
    if not value:
        raise RuntimeError(f"batch jobs need CIRRUS_{name.upper()} (not set in this function's environment)")
    return value


_store: JobStore | None = None
_lock = threading.Lock()


def job_store(settings: Settings | None = None) -> JobStore:
    """The container's job store, built from settings on first use."""
    global _store
    if _store is None:
        with _lock:
            if _store is None:
                s = settings or get_settings()
                _store = JobStore(require(s.jobs_table, "jobs_table"), ttl_days=s.batch_job_ttl_days)
    return _store


def reset() -> None:
    """Forget the store (tests switch tables and settings)."""
    global _store
    with _lock:
        _store = None


ACTIVE = (Status.AWAITING_UPLOAD, Status.SPLITTING, Status.RUNNING, Status.FINALISING)


def fail_job(store: JobStore, job_id: str, code: str, message: str, *, unsent_only: bool = False,
             **fields: Any) -> dict[str, Any] | None:
    """Mark a job failed with a clear reason, unless it already ended (the first ending wins).

    ``unsent_only``: only while its chunk messages are not all known sent (waiting, splitting, or
    running without ``chunks_sent``), so a job whose workers are under way is left to them.
    """
    statuses = (Status.AWAITING_UPLOAD, Status.SPLITTING) if unsent_only else ACTIVE
    values = {f":s{i}": s.value for i, s in enumerate(statuses)}
    condition = f"#status IN ({', '.join(values)})"
    if unsent_only:
        values[":run"] = Status.RUNNING.value
        condition += " OR (#status = :run AND attribute_not_exists(chunks_sent))"
    job = store.update(job_id, {"status": Status.FAILED.value, "error": {"code": code, "message": message},
                                "completed_at": now_iso(), **fields},
                       condition=condition, values=values)
    if job is not None:
        logger.warning("batch job failed", extra={"job_id": job_id, "code": code})
    return job
