"""The Jobs table: job and chunk records, and every job transition as one conditional write.

Layout (infra/resources.py "Jobs"): a job is ``pk=JOB#<id>, sk=JOB`` (``kind="job"`` and
``created_at`` feed the ``by_created`` index, ``owner`` + ``created_at`` the ``by_owner`` one); each finished chunk is ``pk=JOB#<id>,
sk=CHUNK#<n>``. A chunk is counted into the job in the same transaction that creates its record,
so a retried chunk can never be counted twice. Each intent method below names one transition of
``functions.core.batch.job.Status`` and hides its condition: it returns the new job, or None
when the job was not in a state that allows it (someone else got there first).
"""
from __future__ import annotations

import functools
import time
from datetime import datetime, timezone
from typing import Any

from botocore.exceptions import ClientError

from functions.core.aws import dynamodb
from functions.core.aws.base import client, error_code
from functions.core.batch.job import ACTIVE, UNCLAIMED_RETENTION_S, UPLOAD_SLACK_S, Chunk, Job, JobError, Status
from functions.core.observability import logger, metrics
from functions.core.settings import get_settings

JOB_SK = "JOB"
KIND = "job"
_CONDITION_FAILED = "ConditionalCheckFailedException"


@functools.cache
def _codec() -> tuple[Any, Any]:
    # Imported on first use: ``boto3.dynamodb`` pulls in all of boto3 (~0.15 s), and the API
    # function imports this module on every cold start, jobs route used or not.
    from boto3.dynamodb.types import TypeDeserializer, TypeSerializer

    return TypeSerializer(), TypeDeserializer()


def now_iso() -> str:
    # Fixed-width UTC with milliseconds so the GSI's string sort equals time order.
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _pk(job_id: str) -> str:
    return f"JOB#{job_id}"


def _chunk_sk(n: int) -> str:
    return f"CHUNK#{n:06d}"


def _to_item(data: dict[str, Any]) -> dict[str, Any]:
    ser = _codec()[0]
    return {k: ser.serialize(v) for k, v in data.items() if v is not None}


def _from_item(item: dict[str, Any]) -> dict[str, Any]:
    de = _codec()[1]
    out = {k: de.deserialize(v) for k, v in item.items()}
    # DynamoDB numbers come back as Decimal; job records only hold integers.
    return {k: (int(v) if type(v).__name__ == "Decimal" else v) for k, v in out.items()}


def _values(values: dict[str, Any]) -> dict[str, Any]:
    ser = _codec()[0]
    return {k: ser.serialize(v) for k, v in values.items()}


def _dump(value: Any) -> Any:
    return value.model_dump(mode="json", exclude_none=True) if hasattr(value, "model_dump") else (
        value.value if isinstance(value, Status) else value)


class JobStore:
    """Job and chunk records of one Jobs table."""

    def __init__(self, table: str, *, ttl_days: int, upload_window_s: int) -> None:
        self.table = table
        self.ttl_s = ttl_days * 86400
        self.upload_window_s = upload_window_s  # creation -> latest accepted upload of an API job

    # --- reading -----------------------------------------------------------------------------------
    def get(self, job_id: str) -> Job | None:
        item = dynamodb.get_item(self.table, self._job_key(job_id), consistent=True)
        return Job.model_validate(_from_item(item)) if item else None

    def recent(self, *, limit: int, owner: str | None = None, with_unowned: bool = False) -> list[Job]:
        """Newest jobs first. With ``owner``: that owner's, read from the by_owner index (no other
        tenant's record is read), plus, with ``with_unowned``, the jobs dropped into the bucket."""
        if owner is None:
            return self._query(limit, "by_created", "kind = :k", {":k": {"S": KIND}})
        mine = self._query(limit, "by_owner", "#o = :o", {":o": {"S": owner}}, names={"#o": "owner"})
        if not with_unowned:
            return mine
        unowned = self._query(limit, "by_created", "kind = :k", {":k": {"S": KIND}},
                              names={"#o": "owner"}, where="attribute_not_exists(#o)")
        return sorted(mine + unowned, key=lambda j: j.created_at, reverse=True)[:limit]

    def _query(self, limit: int, index: str, key: str, values: dict[str, Any], *,
               names: dict[str, str] | None = None, where: str | None = None) -> list[Job]:
        kwargs: dict[str, Any] = {"TableName": self.table, "IndexName": index, "KeyConditionExpression": key,
                                  "ScanIndexForward": False, "ExpressionAttributeValues": values}
        if names:
            kwargs["ExpressionAttributeNames"] = names
        if where:
            kwargs["FilterExpression"] = where
        out: list[Job] = []
        for page in client("dynamodb").get_paginator("query").paginate(**kwargs):
            out.extend(Job.model_validate(_from_item(i)) for i in page.get("Items", []))
            if len(out) >= limit:
                break
        return out[:limit]

    def get_chunk(self, job_id: str, n: int) -> Chunk | None:
        item = dynamodb.get_item(self.table, {"pk": {"S": _pk(job_id)}, "sk": {"S": _chunk_sk(n)}},
                                 consistent=True)
        return Chunk.model_validate(_from_item(item)) if item else None

    def chunks(self, job_id: str) -> list[Chunk]:
        """Every chunk record of the job, in chunk order."""
        out: list[Chunk] = []
        paginator = client("dynamodb").get_paginator("query")
        for page in paginator.paginate(TableName=self.table, ConsistentRead=True,
                                       KeyConditionExpression="pk = :p AND begins_with(sk, :c)",
                                       ExpressionAttributeValues={":p": {"S": _pk(job_id)},
                                                                  ":c": {"S": "CHUNK#"}}):
            out.extend(Chunk.model_validate(_from_item(i)) for i in page.get("Items", []))
        return sorted(out, key=lambda c: c.chunk)

    # --- creating ----------------------------------------------------------------------------------
    def new_job(self, job_id: str, **fields: Any) -> Job:
        """A job record not yet written (``create`` writes it).

        A job awaiting its upload gets an upload deadline and a short TTL, so one never uploaded is
        shown as expired and then reaped; claiming the upload gives it the full retention.
        """
        stamp, now = now_iso(), int(time.time())
        lifetime: dict[str, Any] = {"expires_at": now + self.ttl_s}
        if fields.get("status") == Status.AWAITING_UPLOAD:
            deadline = now + self.upload_window_s
            lifetime = {"upload_deadline": deadline, "expires_at": deadline + UNCLAIMED_RETENTION_S}
        return Job.model_validate({"id": job_id, "created_at": stamp, "updated_at": stamp, **lifetime, **fields})

    def create(self, job: Job) -> bool:
        """Insert a new job; False if one with this id exists already (duplicate event)."""
        item = {"pk": _pk(job.id), "sk": JOB_SK, "kind": KIND, **job.model_dump(mode="json", exclude_none=True)}
        try:
            dynamodb.put_item(self.table, _to_item(item), condition="attribute_not_exists(pk)")
            return True
        except ClientError as exc:
            if error_code(exc) == _CONDITION_FAILED:
                return False
            raise

    # --- transitions -------------------------------------------------------------------------------
    def claim_upload(self, job_id: str, *, etag: str, size: int, token: str, uploaded_at: int) -> Job | None:
        """awaiting_upload -> splitting: the upload for a POST /v1/jobs job, claimed by message ``token``,
        if S3 stored it (``uploaded_at``, epoch s) by the job's upload deadline. The job now lives as
        long as any job (the short TTL of an unclaimed one is replaced)."""
        return self._update(job_id, {"status": Status.SPLITTING, "input_etag": etag, "input_bytes": size,
                                     "split_by": token, "expires_at": int(time.time()) + self.ttl_s},
                            condition="#status = :w AND (attribute_not_exists(upload_deadline) OR "
                                      "upload_deadline >= :at)",
                            values={":w": Status.AWAITING_UPLOAD.value, ":at": uploaded_at})

    def abandon_upload(self, job_id: str, code: str, message: str) -> Job | None:
        """awaiting_upload -> failed: the input will never come (it could not be written, or came too
        late). The record keeps its short TTL."""
        return self._update(job_id, {"status": Status.FAILED, "error": JobError(code=code, message=message),
                                     "completed_at": now_iso()},
                            condition="#status = :w", values={":w": Status.AWAITING_UPLOAD.value})

    def start_running(self, job_id: str, *, token: str, chunks_total: int, lines_total: int, model: str,
                      task: str | None) -> Job | None:
        """splitting -> running, with the plan; also the claimer's own retry of a half-done split."""
        # chunks_total is set before any message leaves, so the last worker can always see it is last.
        return self._update(job_id, {"status": Status.RUNNING, "chunks_total": chunks_total,
                                     "lines_total": lines_total, "model": model, "task": task},
                            condition="#status = :split OR (#status = :run AND split_by = :tok)",
                            values={":split": Status.SPLITTING.value, ":run": Status.RUNNING.value, ":tok": token})

    def record_chunks_sent(self, job_id: str, count: int) -> Job | None:
        """Every chunk message left: from now on the workers own the job."""
        return self._update(job_id, {"chunks_sent": count})

    def complete_chunk(self, job_id: str, n: int, record: dict[str, Any], *, ok: int, errors: int,
                       failed: bool) -> bool:
        """Record chunk ``n`` as finished and count it into its job, atomically and at most once.

        False if the chunk was already recorded (a retry or a duplicate message): nothing changes.
        """
        chunk = {"pk": _pk(job_id), "sk": _chunk_sk(n), "chunk": n, "expires_at": int(time.time()) + self.ttl_s,
                 "finished_at": now_iso(), "ok": ok, "errors": errors,
                 "status": "failed" if failed else "done", **record}
        add = ("chunks_done :one, lines_ok :ok, lines_failed :err"
               + (", chunks_failed :one" if failed else ""))
        try:
            client("dynamodb").transact_write_items(TransactItems=[
                {"Put": {"TableName": self.table, "Item": _to_item(chunk),
                         "ConditionExpression": "attribute_not_exists(sk)"}},
                {"Update": {"TableName": self.table, "Key": self._job_key(job_id),
                            "UpdateExpression": f"SET updated_at = :now ADD {add}",
                            "ConditionExpression": "attribute_exists(pk)",
                            "ExpressionAttributeValues": _values({":one": 1, ":ok": ok, ":err": errors,
                                                                  ":now": now_iso()})}},
            ])
            return True
        except ClientError as exc:
            if error_code(exc) != "TransactionCanceledException":
                raise
            reasons = [r.get("Code") for r in exc.response.get("CancellationReasons", [])]
            if reasons and reasons[0] == "ConditionalCheckFailed":
                return False
            raise

    def fail_chunk(self, job_id: str, n: int, *, first_line: int, lines: int, reason: str) -> bool:
        """Count every line of chunk ``n`` as an error (the finaliser writes one error line for each).

        At most once, like ``complete_chunk``: False if the chunk was already recorded.
        """
        counted = self.complete_chunk(job_id, n, {"first_line": first_line, "lines": lines, "reason": reason},
                                      ok=0, errors=lines, failed=True)
        if counted:
            logger.error("chunk failed", extra={"job_id": job_id, "chunk": n, "reason": reason})
            metrics.add_metric(name="BatchChunksFailed", unit="Count", value=1)
        return counted

    def begin_finalising(self, job_id: str, *, token: str, takeover: bool = False) -> Job | None:
        """running -> finalising once every chunk is counted (or the same finaliser's retry).

        ``takeover`` (the dead-letter backstop) also takes a job left in ``finalising`` by a dead worker.
        """
        values: dict[str, Any] = {":run": Status.RUNNING.value, ":fin": Status.FINALISING.value}
        if takeover:
            condition = "#status IN (:run, :fin) AND chunks_done = chunks_total"
        else:
            condition = ("(#status = :run AND chunks_done = chunks_total) OR "
                         "(#status = :fin AND finaliser = :tok)")
            values[":tok"] = token
        return self._update(job_id, {"status": Status.FINALISING, "finaliser": token},
                            condition=condition, values=values)

    def finish(self, job_id: str, status: Status, *, error: JobError | None = None, **fields: Any) -> Job | None:
        """finalising -> ``status`` (a final one), with the outputs and counts; only once."""
        return self._update(job_id, {"status": status, "error": error, "completed_at": now_iso(), **fields},
                            condition="#status = :fin", values={":fin": Status.FINALISING.value})

    def fail(self, job_id: str, code: str, message: str, *, unsent_only: bool = False) -> Job | None:
        """Any active status -> failed with a clear reason, unless it already ended (the first ending wins).

        ``unsent_only``: only while its chunk messages are not all known sent (waiting, splitting, or
        running without ``chunks_sent``), so a job whose workers are under way is left to them.
        """
        statuses = (Status.AWAITING_UPLOAD, Status.SPLITTING) if unsent_only else ACTIVE
        values = {f":s{i}": s.value for i, s in enumerate(statuses)}
        condition = f"#status IN ({', '.join(values)})"
        if unsent_only:
            values[":run"] = Status.RUNNING.value
            condition += " OR (#status = :run AND attribute_not_exists(chunks_sent))"
        job = self._update(job_id, {"status": Status.FAILED, "error": JobError(code=code, message=message),
                                    "completed_at": now_iso()}, condition=condition, values=values)
        if job is not None:
            logger.warning("batch job failed", extra={"job_id": job_id, "code": code})
        return job

    # --- the one writer ------------------------------------------------------------------------------
    def _job_key(self, job_id: str) -> dict[str, Any]:
        return {"pk": {"S": _pk(job_id)}, "sk": {"S": JOB_SK}}

    def _update(self, job_id: str, changes: dict[str, Any], *, condition: str | None = None,
                values: dict[str, Any] | None = None) -> Job | None:
        """SET ``changes`` (None values skipped) if ``condition`` holds: the new job, or None if it did not."""
        changes = {k: _dump(v) for k, v in {**changes, "updated_at": now_iso()}.items() if v is not None}
        names = {f"#f{i}": k for i, k in enumerate(changes)}
        vals = {f":v{i}": v for i, v in enumerate(changes.values())}
        expr = "SET " + ", ".join(f"#f{i} = :v{i}" for i in range(len(changes)))
        if condition:
            names["#status"] = "status"
            vals.update(values or {})
        try:
            attrs = dynamodb.update_item(self.table, self._job_key(job_id), update=expr, values=_values(vals),
                                         names=names, condition=condition)
        except ClientError as exc:
            if error_code(exc) == _CONDITION_FAILED:
                return None
            raise
        return Job.model_validate(_from_item(attrs))


@functools.lru_cache(maxsize=1)
def job_store() -> JobStore:
    """The container's job store, built from settings on first use: the one way to reach it.

    Cheap to build (no I/O), so two threads racing at cold start may each build one; either serves.
    """
    s = get_settings()
    return JobStore(require(s.jobs_table, "jobs_table"), ttl_days=s.batch_job_ttl_days,
                    upload_window_s=s.batch_upload_expiry_s + UPLOAD_SLACK_S)


def reset() -> None:
    """Forget the store (tests switch tables and settings)."""
    job_store.cache_clear()


def require(value: str | None, name: str) -> str:
    if not value:
        raise RuntimeError(f"batch jobs need CIRRUS_{name.upper()} (not set in this function's environment)")
    return value
