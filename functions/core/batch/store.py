"""The Jobs table: job records and per-chunk completion records, every state change a conditional write.

Layout (infra/resources.py "Jobs"): a job is ``pk=JOB#<id>, sk=JOB`` (``kind="job"`` and
``created_at`` feed the ``by_created`` index); each finished chunk is ``pk=JOB#<id>,
sk=CHUNK#<n>``. A chunk is counted into the job in the same transaction that creates its record,
so a retried chunk can never be counted twice.
"""
from __future__ import annotations

import functools
import time
from datetime import datetime, timezone
from typing import Any

from botocore.exceptions import ClientError

from functions.core.adapters import dynamodb
from functions.core.adapters.base import client, error_code

JOB_SK = "JOB"
KIND = "job"


@functools.cache
def _codec() -> tuple[Any, Any]:
    # Imported on first use: ``boto3.dynamodb`` pulls in all of boto3 (~0.15 s), and the API
    # function imports this module on every cold start, jobs route used or not.
    from boto3.dynamodb.types import TypeDeserializer, TypeSerializer

    return TypeSerializer(), TypeDeserializer()


def now_iso() -> str:
    # Fixed-width UTC with milliseconds so the GSI's string sort equals time order.
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def pk(job_id: str) -> str:
    return f"JOB#{job_id}"


def chunk_sk(n: int) -> str:
    return f"CHUNK#{n:06d}"


def to_item(data: dict[str, Any]) -> dict[str, Any]:
    ser = _codec()[0]
    return {k: ser.serialize(v) for k, v in data.items() if v is not None}


def from_item(item: dict[str, Any]) -> dict[str, Any]:
    de = _codec()[1]
    out = {k: de.deserialize(v) for k, v in item.items()}
    # DynamoDB numbers come back as Decimal; job records only hold integers.
    return {k: (int(v) if type(v).__name__ == "Decimal" else v) for k, v in out.items()}


def _values(values: dict[str, Any]) -> dict[str, Any]:
    ser = _codec()[0]
    return {k: ser.serialize(v) for k, v in values.items()}


class JobStore:
    """Job and chunk records of one Jobs table."""

    def __init__(self, table: str, *, ttl_days: int) -> None:
        self.table = table
        self.ttl_s = ttl_days * 86400

    # --- jobs ----------------------------------------------------------------------------------
    def new_job(self, job_id: str, **fields: Any) -> dict[str, Any]:
        stamp = now_iso()
        return {"pk": pk(job_id), "sk": JOB_SK, "kind": KIND, "id": job_id, "created_at": stamp,
                "updated_at": stamp, "expires_at": int(time.time()) + self.ttl_s, **fields}

    def create(self, job: dict[str, Any]) -> bool:
        """Insert a new job; False if one with this id exists already (duplicate event)."""
        try:
            dynamodb.put_item(self.table, to_item(job), condition="attribute_not_exists(pk)")
            return True
        except ClientError as exc:
            if error_code(exc) == "ConditionalCheckFailedException":
                return False
            raise

    def get(self, job_id: str) -> dict[str, Any] | None:
        item = dynamodb.get_item(self.table, {"pk": {"S": pk(job_id)}, "sk": {"S": JOB_SK}}, consistent=True)
        return from_item(item) if item else None

    def update(self, job_id: str, changes: dict[str, Any], *, condition: str | None = None,
               values: dict[str, Any] | None = None, add: dict[str, int] | None = None) -> dict[str, Any] | None:
        """SET ``changes`` (and ADD ``add``) if ``condition`` holds: the new record, or None if it did not.

        ``condition`` may use ``#status`` and ``:placeholders`` from ``values``.
        """
        changes = {**changes, "updated_at": now_iso()}
        names = {f"#f{i}": k for i, k in enumerate(changes)}
        vals = {f":v{i}": v for i, v in enumerate(changes.values())}
        expr = "SET " + ", ".join(f"#f{i} = :v{i}" for i in range(len(changes)))
        if add:
            names.update({f"#a{i}": k for i, k in enumerate(add)})
            vals.update({f":a{i}": n for i, n in enumerate(add.values())})
            expr += " ADD " + ", ".join(f"#a{i} :a{i}" for i in range(len(add)))
        if condition:
            names["#status"] = "status"
            vals.update(values or {})
        try:
            attrs = dynamodb.update_item(self.table, {"pk": {"S": pk(job_id)}, "sk": {"S": JOB_SK}},
                                         update=expr, values=_values(vals), names=names,
                                         condition=condition)
        except ClientError as exc:
            if error_code(exc) == "ConditionalCheckFailedException":
                return None
            raise
        return from_item(attrs)

    def recent(self, *, limit: int, owner: str | None = None, with_unowned: bool = False) -> list[dict[str, Any]]:
        """Newest jobs first (the by_created index); with ``owner``, only that owner's (+ unowned ones)."""
        kwargs: dict[str, Any] = {
            "TableName": self.table, "IndexName": "by_created",
            "KeyConditionExpression": "kind = :k", "ScanIndexForward": False,
            "ExpressionAttributeValues": {":k": {"S": KIND}},
        }
        if owner is not None:
            kwargs["FilterExpression"] = ("attribute_not_exists(#o) OR #o = :o" if with_unowned else "#o = :o")
            kwargs["ExpressionAttributeNames"] = {"#o": "owner"}
            kwargs["ExpressionAttributeValues"][":o"] = {"S": owner}
        out: list[dict[str, Any]] = []
        for page in client("dynamodb").get_paginator("query").paginate(**kwargs):
            out.extend(from_item(i) for i in page.get("Items", []))
            if len(out) >= limit:
                break
        return out[:limit]

    # --- chunks --------------------------------------------------------------------------------
    def get_chunk(self, job_id: str, n: int) -> dict[str, Any] | None:
        item = dynamodb.get_item(self.table, {"pk": {"S": pk(job_id)}, "sk": {"S": chunk_sk(n)}},
                                 consistent=True)
        return from_item(item) if item else None

    def complete_chunk(self, job_id: str, n: int, record: dict[str, Any], *, ok: int, errors: int,
                       failed: bool) -> bool:
        """Record chunk ``n`` as finished and count it into its job, atomically and at most once.

        False if the chunk was already recorded (a retry or a duplicate message): nothing changes.
        """
        chunk = {"pk": pk(job_id), "sk": chunk_sk(n), "chunk": n, "expires_at": int(time.time()) + self.ttl_s,
                 "finished_at": now_iso(), "ok": ok, "errors": errors,
                 "status": "failed" if failed else "done", **record}
        add = ("chunks_done :one, lines_ok :ok, lines_failed :err"
               + (", chunks_failed :one" if failed else ""))
        try:
            client("dynamodb").transact_write_items(TransactItems=[
                {"Put": {"TableName": self.table, "Item": to_item(chunk),
                         "ConditionExpression": "attribute_not_exists(sk)"}},
                {"Update": {"TableName": self.table, "Key": {"pk": {"S": pk(job_id)}, "sk": {"S": JOB_SK}},
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

    def chunks(self, job_id: str) -> list[dict[str, Any]]:
        """Every chunk record of the job, in chunk order."""
        out: list[dict[str, Any]] = []
        paginator = client("dynamodb").get_paginator("query")
        for page in paginator.paginate(TableName=self.table, ConsistentRead=True,
                                       KeyConditionExpression="pk = :p AND begins_with(sk, :c)",
                                       ExpressionAttributeValues={":p": {"S": pk(job_id)},
                                                                  ":c": {"S": "CHUNK#"}}):
            out.extend(from_item(i) for i in page.get("Items", []))
        return sorted(out, key=lambda c: c["chunk"])
