"""The splitter: an S3 ObjectCreated notification becomes one job record and its chunk messages.

One pass over the file finds line boundaries (for chunk byte ranges and line numbers), the optional
header and the file-level limits; nothing is sent until the whole file passed, so a rejected file
never produces partial work. Duplicate events are recognised by the job id (bucket + key + ETag)
and the SQS message that claimed the job, so only the claimer's own retry resumes a half-done split.
An input that can never run (past the file size limit, late for its job, or other bytes sent again
to an API job's key) is deleted with its versions, so nothing rejected stays in the bucket.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import datetime
from urllib.parse import unquote_plus

from botocore.exceptions import BotoCoreError, ClientError

from functions.core.aws import sqs
from functions.core.batch.formats import TASK_FOR_MANIFEST, ChunkMessage, parse_header, resolve_task
from functions.core.batch.job import Defaults, Job, Status, api_job_id, job_id_for
from functions.core.batch.job_store import JobStore, job_store, require
from functions.core.batch.objects import ObjectChanged, delete_versions, iter_lines, read_blocks
from functions.core.contract import JOBS_INPUT_PREFIX, JOBS_INPUT_SUFFIX
from functions.core.inference.model_store import store as model_store
from functions.core.observability import logger, metrics
from functions.core.settings import Settings, get_settings


@dataclass(frozen=True)
class ObjectRef:
    bucket: str
    key: str
    size: int
    etag: str
    created_at: int = 0   # when S3 stored the object (the event's eventTime), epoch seconds


class JobRejected(Exception):
    """The file cannot become a job; ``code``/``message`` go into the job record."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


def objects_in(body: str) -> list[ObjectRef]:
    """The created objects named by an S3 notification (an SQS message body); test events name none."""
    event = json.loads(body)
    refs = []
    for rec in event.get("Records", []):
        if not str(rec.get("eventName", "")).startswith("ObjectCreated"):
            continue
        s3 = rec["s3"]
        # Keys arrive URL-encoded (spaces as '+') in S3 notifications.
        refs.append(ObjectRef(s3["bucket"]["name"], unquote_plus(s3["object"]["key"]),
                              int(s3["object"].get("size", 0)), s3["object"].get("eTag", ""),
                              _epoch(rec.get("eventTime"))))
    return refs


def _epoch(iso: object) -> int:
    try:
        return int(datetime.fromisoformat(str(iso).replace("Z", "+00:00")).timestamp())
    except ValueError:
        return int(time.time())  # no usable time in the event: judge it as arriving now


def discard(ref: ObjectRef, *, every_version: bool, why: str) -> None:
    """Delete a rejected input: all versions of an API job's own key, else just these bytes' versions
    (a dropped file's key may hold someone's earlier, valid files)."""
    try:
        deleted = delete_versions(ref.bucket, ref.key, etag=None if every_version else ref.etag)
    except (ClientError, BotoCoreError):
        # The job already says why it ended; the bucket's lifecycle rule removes the object later.
        logger.exception("could not delete a rejected input", extra={"key_bytes": len(ref.key), "reason": why})
        return
    logger.warning("rejected input deleted", extra={"key_bytes": len(ref.key), "bytes": ref.size,
                                                    "versions": deleted, "reason": why})
    metrics.add_metric(name="BatchInputsDeleted", unit="Count", value=1)


def handle_notification(body: str, *, message_id: str, receive_count: int) -> None:
    """Start (or resume) a job for every object in one notification message."""
    settings = get_settings()
    store = job_store()
    for ref in objects_in(body):
        job_id = None
        try:
            job_id = claim(ref, store, token=message_id)
            if job_id is not None:
                split(job_id, ref, store, settings, token=message_id)
        except Exception:
            if job_id is not None and receive_count >= settings.max_receive_count:
                # Last delivery: the message goes to the DLQ next, the job must not stay "splitting".
                store.fail(job_id, "split_failed", f"the input could not be split after {receive_count} attempts")
            raise


def claim(ref: ObjectRef, store: JobStore, *, token: str) -> str | None:
    """The id of the job this message should split, or None when another message owns it (duplicate)."""
    if not ref.key.startswith(JOBS_INPUT_PREFIX) or ref.key.endswith("/"):
        logger.warning("notification outside jobs/input/ ignored", extra={"key_bytes": len(ref.key)})
        return None
    stem = api_job_id(ref.key)
    if stem is not None:
        # Upload for a job made by POST /v1/jobs: take over its waiting record (once).
        claimed = store.claim_upload(stem, etag=ref.etag, size=ref.size, token=token, uploaded_at=ref.created_at)
        if claimed is not None:
            return stem
        existing = store.get(stem)
        if existing is not None:
            if existing.input_etag == ref.etag:
                return _resume_or_skip(existing, token)
            if existing.status == Status.AWAITING_UPLOAD:
                # Not claimable while waiting: the upload came after the job's upload deadline.
                store.abandon_upload(stem, "upload_expired", "the input arrived after the upload deadline; "
                                                             "create a new job")
                discard(ref, every_version=True, why="upload_expired")
                return None
            # Other bytes sent again through the job's upload form (or to a failed job's key): not a
            # job of their own (it would have no owner, its results visible to other keys). Deleting
            # these bytes makes the job's own upload current again, so a job still reading it goes on.
            logger.warning("re-upload to an API job's input key deleted",
                           extra={"job_id": stem, "status": existing.status.value})
            metrics.add_metric(name="BatchDuplicateEvents", unit="Count", value=1)
            discard(ref, every_version=False, why="reupload")
            return None
        # No such API job: a file dropped under a job-like name is a job of its own.
    job_id = job_id_for(ref.bucket, ref.key, ref.etag)
    record = store.new_job(job_id, status=Status.SPLITTING, input_bucket=ref.bucket, input_key=ref.key,
                           input_etag=ref.etag, input_bytes=ref.size, split_by=token)
    if store.create(record):
        logger.info("batch job created", extra={"job_id": job_id, "bytes": ref.size})
        return job_id
    existing = store.get(job_id)
    return _resume_or_skip(existing, token) if existing else None


def _resume_or_skip(job: Job, token: str) -> str | None:
    if job.split_by == token and job.status in (Status.SPLITTING, Status.RUNNING):
        logger.info("resuming split after a retry", extra={"job_id": job.id})
        return job.id
    logger.info("duplicate notification ignored", extra={"job_id": job.id, "status": job.status.value})
    metrics.add_metric(name="BatchDuplicateEvents", unit="Count", value=1)
    return None


def split(job_id: str, ref: ObjectRef, store: JobStore, settings: Settings, *, token: str) -> None:
    job = store.get(job_id)
    try:
        # Defaults given to POST /v1/jobs; a header in the file overrides them.
        chunks, lines, defaults = plan(ref, settings, job.defaults if job else Defaults())
        model, task = resolve_defaults(defaults, settings)
    except JobRejected as exc:
        store.fail(job_id, exc.code, exc.message)
        if exc.code == "file_too_large":
            # Nothing of it will ever be read: do not keep it (nor its noncurrent versions) for weeks.
            discard(ref, every_version=api_job_id(ref.key) == job_id, why=exc.code)
        return
    messages = [ChunkMessage(job_id=job_id, chunk=i, bucket=ref.bucket, key=ref.key, etag=ref.etag,
                             start=start, end=end, first_line=first, lines=n, model=model,
                             # Only an explicit task is a default for lines naming another model.
                             task=defaults.task)
                for i, (start, end, first, n) in enumerate(chunks)]
    if store.start_running(job_id, token=token, chunks_total=len(messages), lines_total=lines,
                           model=model, task=task) is None:
        return
    sqs.send_messages(require(settings.work_queue_url, "work_queue_url"), [m.model_dump_json() for m in messages])
    # Only now is the job in the workers' hands: until chunks_sent is set, a splitter that died
    # mid-send (timeout) leaves a job the dead-letter handler fails instead of one running forever.
    store.record_chunks_sent(job_id, len(messages))
    logger.info("batch job split", extra={"job_id": job_id, "lines": lines, "chunks": len(messages)})
    metrics.add_metric(name="BatchJobsStarted", unit="Count", value=1)


def plan(ref: ObjectRef, settings: Settings, defaults: Defaults) -> tuple[list[tuple[int, int, int, int]], int, Defaults]:
    """Chunks as (start byte, end byte, first line, line count), the input line count, the defaults."""
    if not ref.key.endswith(JOBS_INPUT_SUFFIX):
        raise JobRejected("unsupported_file", f"input files must be JSON Lines named *{JOBS_INPUT_SUFFIX}")
    limit = settings.batch_max_file_bytes
    if ref.size > limit:
        raise JobRejected("file_too_large", f"file has {ref.size} bytes, the limit is {limit}")
    chunks: list[tuple[int, int, int, int]] = []
    offset = line_no = inputs = 0
    start = first = count = 0
    try:
        for content, size in iter_lines(read_blocks(ref.bucket, ref.key, etag=ref.etag),
                                        settings.batch_max_line_bytes):
            line_no += 1
            if line_no == 1 and content is not None:
                try:
                    header = parse_header(content)
                except ValueError as exc:
                    raise JobRejected("invalid_header", f"line 1: {exc}") from None
                if header is not None:
                    defaults = Defaults(model=header.model or defaults.model, task=header.task or defaults.task)
                    offset += size
                    continue
            if offset + size > limit:  # the event's size is S3's own; this guards events without one
                raise JobRejected("file_too_large", f"file has more than {limit} bytes, the limit is {limit}")
            inputs += 1
            if inputs > settings.batch_max_lines:
                raise JobRejected("too_many_lines", f"file has more than {settings.batch_max_lines} input lines")
            if count == 0:
                start, first = offset, line_no
            count += 1
            offset += size
            per_chunk = settings.batch_chat_chunk_lines if defaults.task == "chat" else settings.batch_chunk_lines
            if count >= per_chunk or offset - start >= settings.batch_chunk_bytes:
                chunks.append((start, offset, first, count))
                count = 0
    except ObjectChanged as exc:
        raise JobRejected("input_changed", f"the input file changed or was deleted while splitting: {exc}") from None
    if count:
        chunks.append((start, offset, first, count))
    if inputs == 0:
        raise JobRejected("empty_file", "the file has no input lines")
    return chunks, inputs, defaults


def resolve_defaults(defaults: Defaults, settings: Settings) -> tuple[str, str | None]:
    """The file's default model (checked to exist) and task (checked to match the model)."""
    name = defaults.model or settings.default_embedding_model
    models = model_store()
    if name not in models.names():  # registry unreachable: raises, and the notification is retried
        raise JobRejected("model_not_found", f"the model '{name[:128]}' does not exist")
    info = models.describe(name)
    if info.manifest is None:
        # Listed but unreadable right now (e.g. a bad bundle): the workers retry and report per line.
        return name, defaults.task
    task = resolve_task(info.manifest.task, defaults.task)
    if task is None and info.manifest.task not in TASK_FOR_MANIFEST:
        raise JobRejected("unsupported_task", f"model '{name}' is a {info.manifest.task} model; "
                                              f"batch jobs run embed, classify or chat")
    if task is None:
        raise JobRejected("model_task_mismatch", f"model '{name}' cannot {defaults.task}")
    return name, task
