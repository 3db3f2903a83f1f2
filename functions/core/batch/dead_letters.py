"""The dead-letter backstop: a message that reached a DLQ still leaves its job accounted for.

Workers already record a chunk as failed on the message's last delivery; this covers the deliveries
that never got that far (function timeout, out of memory, a crash before the except clause).
Everything here is idempotent, so a message already handled by its worker changes nothing.
"""
from __future__ import annotations

from pydantic import ValidationError

from functions.core.batch.finalise import try_finalise
from functions.core.batch.formats import ChunkMessage
from functions.core.batch.job import Status, job_ids_for
from functions.core.batch.job_store import job_store
from functions.core.batch.splitter import objects_in
from functions.core.observability import logger


def handle_dead_letter(body: str, *, message_id: str, receive_count: int) -> None:
    """Mark the job of a dead chunk or notification message (both kinds share one handler)."""
    try:
        msg = ChunkMessage.model_validate_json(body)
    except ValidationError:
        msg = None
    if msg is not None:
        job_store().fail_chunk(msg.job_id, msg.chunk, first_line=msg.first_line, lines=msg.lines,
                               reason=f"chunk message dead-lettered after {receive_count} receives")
        try_finalise(msg.job_id, token=message_id, takeover=True)
        return
    try:
        refs = objects_in(body)
    except (ValueError, KeyError, TypeError):
        # Neither kind: nothing can be marked. Logged (id and size only) for the operator.
        logger.error("unrecognised dead letter", extra={"message_id": message_id, "bytes": len(body)})
        return
    store = job_store()
    reason = f"the input file could not be split (event dead-lettered after {receive_count} receives)"
    for ref in refs:
        candidates = job_ids_for(ref.bucket, ref.key, ref.etag)
        for job_id in candidates:
            job = store.get(job_id)
            if job is not None and job.input_etag in (ref.etag, None):
                # A job still "running" without chunks_sent lost its splitter mid-send: its chunk
                # messages may never all exist, so nothing would ever finish it.
                store.fail(job_id, "split_failed", reason, unsent_only=True)
                break
        else:
            # The splitter died before creating a record: create it failed, so the file is not lost.
            store.create(store.new_job(candidates[-1], status=Status.FAILED, input_bucket=ref.bucket,
                                       input_key=ref.key, input_etag=ref.etag, input_bytes=ref.size,
                                       error={"code": "split_failed", "message": reason}))
