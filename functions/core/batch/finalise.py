"""The finaliser: once every chunk is counted, concatenate chunk outputs in order and close the job once.

Whoever moves the job from ``running`` to ``finalising`` (a conditional update that also requires
``chunks_done = chunks_total``) writes the outputs; the same message's retry may redo that (the
outputs are a pure function of the chunk objects), and only the ``finalising`` -> final status
update, conditional too, ends the job.
"""
from __future__ import annotations

from typing import Any

from functions.core.batch import jobs
from functions.core.batch.objects import StreamWriter, copy_into
from functions.core.batch.schema import LineError, Status
from functions.core.batch.store import now_iso
from functions.core.observability import logger, metrics


def try_finalise(job_id: str, *, token: str, takeover: bool = False) -> bool:
    """Finalise the job if all its chunks are counted and nobody else is on it; True if this call did.

    ``takeover`` (the dead-letter backstop) also takes a job left in ``finalising`` by a dead worker.
    """
    store = jobs.job_store()
    values: dict[str, Any] = {":run": Status.RUNNING.value, ":fin": Status.FINALISING.value}
    if takeover:
        condition = "#status IN (:run, :fin) AND chunks_done = chunks_total"
    else:
        condition = ("(#status = :run AND chunks_done = chunks_total) OR "
                     "(#status = :fin AND finaliser = :tok)")
        values[":tok"] = token
    job = store.update(job_id, {"status": Status.FINALISING.value, "finaliser": token},
                       condition=condition, values=values)
    if job is None:
        return False
    finalise(job)
    return True


def finalise(job: dict[str, Any]) -> dict[str, Any]:
    store = jobs.job_store()
    job_id, bucket = job["id"], job["input_bucket"]
    chunks = store.chunks(job_id)
    if [c["chunk"] for c in chunks] != list(range(job["chunks_total"])):
        raise RuntimeError(f"job {job_id}: chunk records do not match chunks_total={job['chunks_total']}")
    ok = sum(c["ok"] for c in chunks)
    failed_lines = sum(c["errors"] for c in chunks)
    if ok + failed_lines != job["lines_total"]:
        raise RuntimeError(f"job {job_id}: {ok} results + {failed_lines} errors != {job['lines_total']} lines")

    results_key, errors_key = jobs.output_key(job_id, "results"), jobs.output_key(job_id, "errors")
    with StreamWriter(bucket, results_key) as out:
        for c in chunks:
            if c["status"] == "done" and c["ok"]:
                copy_into(out, bucket, jobs.work_key(job_id, c["chunk"], "results"))
    with StreamWriter(bucket, errors_key) as out:
        for c in chunks:
            if c["status"] == "failed":
                # The chunk never ran to the end: one error line per line it held, nothing dropped.
                for line in range(c["first_line"], c["first_line"] + c["lines"]):
                    out.write((LineError(line, "chunk_failed", c.get("reason", "chunk failed")).json() + "\n").encode())
            elif c["errors"]:
                copy_into(out, bucket, jobs.work_key(job_id, c["chunk"], "errors"))

    failed_chunks = [c for c in chunks if c["status"] == "failed"]
    fields: dict[str, Any] = {"results_key": results_key, "errors_key": errors_key, "completed_at": now_iso(),
                              "lines_ok": ok, "lines_failed": failed_lines,
                              "model_versions": sorted({m for c in chunks for m in c.get("models", [])})}
    if failed_chunks:
        first = failed_chunks[0]
        status = Status.FAILED
        fields["error"] = {"code": "chunk_failed",
                           "message": f"{len(failed_chunks)} chunk(s) failed, first: lines {first['first_line']}-"
                                      f"{first['first_line'] + first['lines'] - 1}: {first.get('reason', '')}"}
    elif ok == 0:
        status = Status.FAILED
        fields["error"] = {"code": "no_valid_lines", "message": "no input line could be processed; see errors.jsonl"}
    else:
        status = Status.SUCCEEDED_WITH_ERRORS if failed_lines else Status.SUCCEEDED
    fields["status"] = status.value
    done = store.update(job_id, fields, condition="#status = :fin", values={":fin": Status.FINALISING.value})
    if done is not None:
        logger.info("batch job finished", extra={"job_id": job_id, "status": status.value, "ok": ok,
                                                 "errors": failed_lines})
        metrics.add_metric(name="BatchJobsFinished", unit="Count", value=1)
        return done
    return store.get(job_id) or job
