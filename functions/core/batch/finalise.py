"""The finaliser: once every chunk is counted, concatenate chunk outputs in order and close the job once.

Whoever moves the job from ``running`` to ``finalising`` (``JobStore.begin_finalising``, which also
requires ``chunks_done = chunks_total``) writes the outputs; the same message's retry may redo that
(the outputs are a pure function of the chunk objects), and only ``JobStore.finish``, conditional
too, ends the job.
"""
from __future__ import annotations

from functions.core.batch.formats import LineError
from functions.core.batch.job import Job, JobError, Status, output_key, work_key
from functions.core.batch.job_store import job_store
from functions.core.batch.objects import StreamWriter, copy_into
from functions.core.observability import logger, metrics


def try_finalise(job_id: str, *, token: str, takeover: bool = False) -> bool:
    """Finalise the job if all its chunks are counted and nobody else is on it; True if this call did.

    ``takeover`` (the dead-letter backstop) also takes a job left in ``finalising`` by a dead worker.
    """
    job = job_store().begin_finalising(job_id, token=token, takeover=takeover)
    if job is None:
        return False
    finalise(job)
    return True


def finalise(job: Job) -> Job:
    store = job_store()
    job_id, bucket = job.id, job.input_bucket
    chunks = store.chunks(job_id)
    if [c.chunk for c in chunks] != list(range(job.chunks_total or 0)):
        raise RuntimeError(f"job {job_id}: chunk records do not match chunks_total={job.chunks_total}")
    ok = sum(c.ok for c in chunks)
    failed_lines = sum(c.errors for c in chunks)
    if ok + failed_lines != job.lines_total:
        raise RuntimeError(f"job {job_id}: {ok} results + {failed_lines} errors != {job.lines_total} lines")

    results_key, errors_key = output_key(job_id, "results"), output_key(job_id, "errors")
    with StreamWriter(bucket, results_key) as out:
        for c in chunks:
            if c.status == "done" and c.ok:
                copy_into(out, bucket, work_key(job_id, c.chunk, "results"))
    with StreamWriter(bucket, errors_key) as out:
        for c in chunks:
            if c.status == "failed":
                # The chunk never ran to the end: one error line per line it held, nothing dropped.
                for line in range(c.first_line, c.first_line + c.lines):
                    out.write((LineError(line, "chunk_failed", c.reason or "chunk failed").json() + "\n").encode())
            elif c.errors:
                copy_into(out, bucket, work_key(job_id, c.chunk, "errors"))

    failed_chunks = [c for c in chunks if c.status == "failed"]
    error = None
    if failed_chunks:
        first = failed_chunks[0]
        status = Status.FAILED
        error = JobError(code="chunk_failed",
                         message=f"{len(failed_chunks)} chunk(s) failed, first: lines {first.first_line}-"
                                 f"{first.first_line + first.lines - 1}: {first.reason or ''}")
    elif ok == 0:
        status = Status.FAILED
        error = JobError(code="no_valid_lines", message="no input line could be processed; see errors.jsonl")
    else:
        status = Status.SUCCEEDED_WITH_ERRORS if failed_lines else Status.SUCCEEDED
    done = store.finish(job_id, status, error=error, results_key=results_key, errors_key=errors_key,
                        lines_ok=ok, lines_failed=failed_lines,
                        model_versions=sorted({m for c in chunks for m in c.models}))
    if done is not None:
        logger.info("batch job finished", extra={"job_id": job_id, "status": status.value, "ok": ok,
                                                 "errors": failed_lines})
        metrics.add_metric(name="BatchJobsFinished", unit="Count", value=1)
        return done
    return store.get(job_id) or job
