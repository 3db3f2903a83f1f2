"""Batch jobs end to end on moto: S3 event -> splitter -> work queue -> workers -> finaliser.

Real handlers, real SQS redrive, real ONNX inference on the default bundles (loaded once per session).
"""
from __future__ import annotations

import json

import numpy as np
import pytest

from batch_support import CLASSIFIER, EMBEDDER, dlq_deliver
from functions.core.aws import sqs as sqs_adapter
from functions.core.batch import job_store as jobs
from functions.core.batch import worker
from functions.core.batch.job_store import JobStore


def good(i: int) -> dict:
    return {"id": f"r{i}", "input": f"order {i} arrived late"}


def test_ten_thousand_lines_with_one_percent_bad_give_9900_results_and_100_errors_in_order(pipeline, env):
    env(batch_chunk_lines=1000)
    bad_kinds = [b'{"id": "x", "input": ', b'{"id": "x"}', b'{"input": 42}', b"\xff\xfe\xfd", b"[1, 2]"]
    lines, bad_lines = [b'{"defaults": {"model": "%s", "task": "embed"}}' % EMBEDDER.encode()], []
    for i in range(10_000):
        if i % 100 == 37:
            lines.append(bad_kinds[(i // 100) % len(bad_kinds)])
            bad_lines.append(i + 2)  # physical line: the header is line 1
        else:
            lines.append(json.dumps(good(i)).encode())
    key = pipeline.upload("big.jsonl", b"\n".join(lines) + b"\n")
    pipeline.drain()

    job = pipeline.job_for(key)
    results, errors = pipeline.output(job, "results"), pipeline.output(job, "errors")
    assert len(results) == 9_900 and len(errors) == 100
    assert [e["line"] for e in errors] == bad_lines
    good_lines = [n for n in range(2, 10_002) if n not in set(bad_lines)]
    assert [r["line"] for r in results] == good_lines
    assert [r["id"] for r in results] == [f"r{n - 2}" for n in good_lines]
    assert {r["model"] for r in results} == {EMBEDDER}
    assert {e["error"]["code"] for e in errors} == {"invalid_json", "missing_field", "wrong_type", "invalid_utf8"}
    assert job["status"] == "succeeded_with_errors"
    assert (job["lines_total"], job["lines_ok"], job["lines_failed"]) == (10_000, 9_900, 100)
    assert (job["chunks_total"], job["chunks_done"], job.get("chunks_failed", 0)) == (10, 10, 0)
    assert job["model_versions"] and job["model_versions"][0].startswith(EMBEDDER + "@")
    assert job["completed_at"] >= job["created_at"]


def test_embedding_results_are_the_models_vectors(pipeline, local_store):
    texts = ["the parcel never came", "refund my order", "hello"]
    key = pipeline.upload("emb.jsonl", [{"id": i, "input": t} for i, t in enumerate(texts)])
    pipeline.drain()
    job = pipeline.job_for(key)
    assert job["status"] == "succeeded" and job["model"] == EMBEDDER and job["task"] == "embed"
    got = np.array([r["embedding"] for r in pipeline.output(job, "results")])
    want, _ = local_store.get(EMBEDDER).embed(texts)
    assert got.shape == (3, 384)
    np.testing.assert_allclose(got, want, atol=1e-6)
    assert pipeline.output(job, "errors") == []


def test_result_lines_keep_ids_of_any_size_and_any_script_exactly(pipeline, local_store):
    # Result lines go through the fast encoder; a JSON integer id past 64 bits and a non-ASCII id
    # come back as they were sent, next to the model's vectors.
    ids = [2**70 + 3, "Bestellung-Zürich-東京", -1]
    key = pipeline.upload("ids.jsonl", [{"id": i, "input": f"text {n}"} for n, i in enumerate(ids)])
    pipeline.drain()
    job = pipeline.job_for(key)
    results = pipeline.output(job, "results")
    assert [r["id"] for r in results] == ids and pipeline.output(job, "errors") == []
    want, _ = local_store.get(EMBEDDER).embed([f"text {n}" for n in range(3)])
    np.testing.assert_allclose(np.array([r["embedding"] for r in results]), want, atol=1e-6)


def test_lines_may_mix_models_and_tasks_and_keep_their_order(pipeline):
    key = pipeline.upload("mixed.jsonl", [
        {"input": "a"}, {"input": "where is my parcel", "model": CLASSIFIER},
        {"input": "b", "model": "no-such-model"}, {"input": "c", "task": "classify"}, {"input": "d"}])
    pipeline.drain()
    job = pipeline.job_for(key)
    results, errors = pipeline.output(job, "results"), pipeline.output(job, "errors")
    assert [r["line"] for r in results] == [1, 2, 5]
    assert "embedding" in results[0] and "label" in results[1] and "embedding" in results[2]
    assert [(e["line"], e["error"]["code"]) for e in errors] == [(3, "model_not_found"), (4, "model_task_mismatch")]


def test_a_line_naming_a_generation_or_unknown_model_fails_without_any_model_loaded(pipeline, bundles_dir,
                                                                                    monkeypatch):
    from functions.core.inference import model_store
    from functions.core.inference.model_store import ModelStore
    from functions.core.settings import Settings

    fresh = ModelStore(Settings(model_dir=str(bundles_dir)))  # nothing loaded yet, unlike the session's
    loads: list[str] = []
    real_load = fresh._load
    monkeypatch.setattr(fresh, "_load", lambda name: loads.append(name) or real_load(name))
    monkeypatch.setattr(model_store, "_store", fresh)
    key = pipeline.upload("tasks.jsonl", [{"input": "hi", "model": "smollm2-135m-instruct"},
                                          {"input": "hi", "model": "no-such-model"}])
    pipeline.drain()
    job = pipeline.job_for(key)
    errors = pipeline.output(job, "errors")
    assert [(e["line"], e["error"]["code"]) for e in errors] == [(1, "model_task_mismatch"), (2, "model_not_found")]
    assert "text-generation model" in errors[0]["error"]["message"]
    assert loads == [] and fresh.loaded() == {}


# --- nothing twice ------------------------------------------------------------------------------
def test_worker_killed_after_writing_outputs_is_retried_without_duplicates(pipeline, monkeypatch):
    real = JobStore.complete_chunk
    killed = []

    def dies_once(self, job_id, n, *a, **kw):
        if n == 1 and not killed:
            killed.append(n)
            raise ConnectionError("worker killed mid-chunk")  # outputs written, chunk not counted
        return real(self, job_id, n, *a, **kw)

    monkeypatch.setattr(JobStore, "complete_chunk", dies_once)
    key = pipeline.upload("retry.jsonl", [good(i) for i in range(250)])
    pipeline.drain()
    job = pipeline.job_for(key)
    results = pipeline.output(job, "results")
    assert killed == [1]
    assert [r["line"] for r in results] == list(range(1, 251))
    assert (job["status"], job["lines_ok"], job["chunks_done"]) == ("succeeded", 250, 3)


def test_worker_killed_between_counting_and_finalising_still_finalises_once(pipeline, monkeypatch):
    real = worker.try_finalise
    calls = []

    def dies_first(job_id, *, token, takeover=False):
        calls.append(token)
        if len(calls) == 1:
            raise TimeoutError("function timed out")
        return real(job_id, token=token, takeover=takeover)

    monkeypatch.setattr(worker, "try_finalise", dies_first)
    key = pipeline.upload("fin.jsonl", [good(i) for i in range(150)])
    pipeline.drain()
    job = pipeline.job_for(key)
    assert job["status"] == "succeeded" and job["chunks_done"] == 2 and job["lines_ok"] == 150
    assert len(pipeline.output(job, "results")) == 150


def test_a_chunk_message_delivered_twice_is_counted_once(pipeline):
    key = pipeline.upload("dup.jsonl", [good(i) for i in range(150)])
    pipeline.split()
    messages = pipeline.receive(pipeline.work.url)
    assert len(messages) == 2
    pipeline.sqs.send_message(QueueUrl=pipeline.work.url, MessageBody=messages[0]["Body"])  # SQS duplicate
    pipeline.deliver(pipeline.work, worker_handler(), messages)
    pipeline.drain()
    job = pipeline.job_for(key)
    assert (job["chunks_done"], job["lines_ok"]) == (2, 150)
    assert [r["line"] for r in pipeline.output(job, "results")] == list(range(1, 151))


def worker_handler():
    from functions.handlers.batch_worker import handler
    return handler


def test_duplicate_s3_event_is_ignored(pipeline):
    key = pipeline.upload("twice.jsonl", [good(i) for i in range(120)])
    event = pipeline.receive(pipeline.events.url)
    assert len(event) == 1
    pipeline.sqs.send_message(QueueUrl=pipeline.events.url, MessageBody=event[0]["Body"])  # S3 redelivery
    from functions.handlers.batch_splitter import handler as splitter
    pipeline.deliver(pipeline.events, splitter, event)
    assert pipeline.depth(pipeline.work.url) == 2
    pipeline.split()  # the duplicate: ignored, no new chunk messages
    assert pipeline.depth(pipeline.work.url) == 2
    pipeline.drain()
    job = pipeline.job_for(key)
    assert (job["status"], job["lines_ok"], job["chunks_done"]) == ("succeeded", 120, 2)
    listed = pipeline.ddb.scan(TableName=pipeline.table, FilterExpression="sk = :j",
                               ExpressionAttributeValues={":j": {"S": "JOB"}})["Items"]
    assert len(listed) == 1


def test_reuploading_identical_bytes_does_not_start_a_second_job(pipeline):
    data = [good(i) for i in range(10)]
    key = pipeline.upload("same.jsonl", data)
    pipeline.drain()
    first = pipeline.job_for(key)
    pipeline.upload("same.jsonl", data)
    pipeline.drain()
    again = pipeline.job_for(key)
    assert again["id"] == first["id"] and again["completed_at"] == first["completed_at"]
    assert again["chunks_done"] == 1


def test_split_interrupted_before_sending_resumes_on_the_retry(pipeline, monkeypatch):
    real = sqs_adapter.send_messages
    calls = []

    def fails_once(url, bodies):
        calls.append(len(bodies))
        if len(calls) == 1:
            raise ConnectionError("splitter killed while sending")
        return real(url, bodies)

    monkeypatch.setattr(sqs_adapter, "send_messages", fails_once)
    key = pipeline.upload("resume.jsonl", [good(i) for i in range(230)])
    pipeline.drain()
    job = pipeline.job_for(key)
    assert calls == [3, 3]
    assert (job["status"], job["lines_ok"]) == ("succeeded", 230)


# --- ends cleanly -------------------------------------------------------------------------------
def test_empty_file_fails_with_a_clear_reason(pipeline):
    key = pipeline.upload("empty.jsonl", b"")
    pipeline.drain()
    job = pipeline.job_for(key)
    assert job["status"] == "failed" and job["error"]["code"] == "empty_file"
    assert pipeline.depth(pipeline.work.url) == 0


def test_header_only_file_is_an_empty_file(pipeline):
    key = pipeline.upload("hdr.jsonl", b'{"defaults": {"task": "embed"}}\n')
    pipeline.drain()
    assert pipeline.job_for(key)["error"]["code"] == "empty_file"


def test_file_of_only_bad_lines_fails_with_every_line_in_errors(pipeline):
    key = pipeline.upload("bad.jsonl", [b"nope".decode(), {"inp": "x"}, {"input": ""}, "", "[]"])
    pipeline.drain()
    job = pipeline.job_for(key)
    assert job["status"] == "failed" and job["error"]["code"] == "no_valid_lines"
    assert pipeline.output(job, "results") == []
    assert [(e["line"], e["error"]["code"]) for e in pipeline.output(job, "errors")] == [
        (1, "invalid_json"), (2, "unknown_field"), (3, "invalid_value"), (4, "empty_line"), (5, "wrong_type")]


def test_non_utf8_bytes_become_an_error_line_and_the_rest_succeed(pipeline):
    key = pipeline.upload("latin1.jsonl", b'{"input": "ok"}\n{"input": "caf\xe9"}\n{"input": "fine"}\n')
    pipeline.drain()
    job = pipeline.job_for(key)
    assert job["status"] == "succeeded_with_errors"
    assert [r["line"] for r in pipeline.output(job, "results")] == [1, 3]
    assert [(e["line"], e["error"]["code"]) for e in pipeline.output(job, "errors")] == [(2, "invalid_utf8")]


def test_line_over_the_byte_limit_becomes_an_error_line(pipeline, env):
    env(batch_max_line_bytes=200)
    key = pipeline.upload("long.jsonl", [{"input": "short"}, {"id": "big", "input": "w " * 500}, {"input": "end"}])
    pipeline.drain()
    job = pipeline.job_for(key)
    errors = pipeline.output(job, "errors")
    assert [(e["line"], e["error"]["code"]) for e in errors] == [(2, "line_too_long")]
    assert [r["line"] for r in pipeline.output(job, "results")] == [1, 3]


@pytest.mark.parametrize("limits, data, code, says", [
    ({"batch_max_file_bytes": 100}, [{"input": "x" * 50}] * 3, "file_too_large", "the limit is 100"),
    ({"batch_max_lines": 5}, [{"input": "x"}] * 6, "too_many_lines", "more than 5 input lines"),
    ({}, [{"defaults": {"model": "no-such-model"}}, {"input": "x"}], "model_not_found", "'no-such-model'"),
    ({}, [{"defaults": {"model": EMBEDDER, "task": "classify"}}, {"input": "x"}], "model_task_mismatch",
     "cannot classify"),
    ({}, [{"defaults": {"temperature": 1}}, {"input": "x"}], "invalid_header", "line 1"),
])
def test_file_level_limits_fail_the_job_before_any_work(pipeline, env, limits, data, code, says):
    env(**limits)
    key = pipeline.upload("limits.jsonl", data)
    pipeline.drain()
    job = pipeline.job_for(key)
    assert job["status"] == "failed" and job["error"]["code"] == code
    assert says in job["error"]["message"]
    assert "chunks_total" not in job and pipeline.depth(pipeline.work.url) == 0
    # Only a file over the size limit is deleted; the others stay for their owner to inspect.
    assert len(pipeline.versions(key)) == (0 if code == "file_too_large" else 1)


def test_a_dropped_file_over_the_limit_is_deleted_but_earlier_files_under_its_key_stay(pipeline, env):
    env(batch_max_file_bytes=100)
    key = pipeline.upload("reused-name.jsonl", [{"input": "small"}])
    pipeline.drain()
    small = pipeline.job_for(key)
    pipeline.upload("reused-name.jsonl", [{"input": "x" * 60}] * 3)
    pipeline.drain()
    assert pipeline.job_for(key)["error"]["code"] == "file_too_large"
    assert [v["ETag"].strip('"') for v in pipeline.versions(key)] == [small["input_etag"].strip('"')]


def test_a_file_over_the_limit_is_refused_by_its_bytes_when_the_event_names_no_size(pipeline, env):
    from functions.handlers.batch_splitter import handler as splitter

    env(batch_max_file_bytes=100)
    key = pipeline.upload("sizeless.jsonl", [{"input": "x" * 40}] * 4)
    event = pipeline.receive(pipeline.events.url)
    body = json.loads(event[0]["Body"])
    del body["Records"][0]["s3"]["object"]["size"]
    event[0]["Body"] = json.dumps(body)
    pipeline.deliver(pipeline.events, splitter, event)
    job = pipeline.job_for(key)
    assert job["error"]["code"] == "file_too_large" and "the limit is 100" in job["error"]["message"]
    assert pipeline.versions(key) == [] and pipeline.depth(pipeline.work.url) == 0


# --- poison messages ----------------------------------------------------------------------------
def test_poison_chunk_reaches_the_dlq_and_its_job_is_marked_failed(pipeline, monkeypatch, local_store):
    model = local_store.get(EMBEDDER)
    real_embed = model.embed

    def embed(texts, **kw):
        if any("poison" in t for t in texts):
            raise RuntimeError("inference crashed")
        return real_embed(texts, **kw)

    monkeypatch.setattr(model, "embed", embed)
    key = pipeline.upload("poison.jsonl", [good(i) for i in range(100)] + [{"input": "poison"}] + [good(0)] * 9)
    pipeline.drain()
    job = pipeline.job_for(key)
    assert job["status"] == "failed" and job["error"]["code"] == "chunk_failed"
    assert "lines 101-110" in job["error"]["message"] and "after 3 attempts" in job["error"]["message"]
    # Nothing lost: the healthy chunk's results, one error line per line of the poisoned chunk.
    assert len(pipeline.output(job, "results")) == 100
    assert [e["line"] for e in pipeline.output(job, "errors")] == list(range(101, 111))
    dead = pipeline.dead_letters(pipeline.work)
    assert len(dead) == 1 and json.loads(dead[0]["Body"])["chunk"] == 1
    # The backstop on the same dead letter changes nothing (already accounted for).
    pipeline.sqs.send_message(QueueUrl=pipeline.work.dlq_url, MessageBody=dead[0]["Body"])
    assert dlq_deliver(pipeline, pipeline.work) == set()
    after = pipeline.job_for(key)
    assert (after["lines_failed"], after["chunks_failed"], after["completed_at"]) == (10, 1, job["completed_at"])


def test_dlq_backstop_accounts_for_a_worker_that_died_every_time(pipeline):
    key = pipeline.upload("timeout.jsonl", [good(i) for i in range(150)])
    pipeline.split()  # two chunk messages, not yet processed
    messages = pipeline.receive(pipeline.work.url)
    victim, other = sorted(messages, key=lambda m: json.loads(m["Body"])["chunk"])
    # The worker of chunk 0 timed out on every delivery, so SQS dead-lettered the message untouched.
    pipeline.sqs.send_message(QueueUrl=pipeline.work.dlq_url, MessageBody=victim["Body"])
    pipeline.sqs.delete_message(QueueUrl=pipeline.work.url, ReceiptHandle=victim["ReceiptHandle"])
    pipeline.deliver(pipeline.work, worker_handler(), [other])
    assert pipeline.job_for(key)["status"] == "running"
    assert dlq_deliver(pipeline, pipeline.work) == set()
    job = pipeline.job_for(key)
    assert job["status"] == "failed" and job["error"]["code"] == "chunk_failed"
    assert [e["line"] for e in pipeline.output(job, "errors")] == list(range(1, 101))
    assert [r["line"] for r in pipeline.output(job, "results")] == list(range(101, 151))


def test_malformed_work_message_is_dead_lettered(pipeline):
    pipeline.sqs.send_message(QueueUrl=pipeline.work.url, MessageBody='{"job_id": 1}')
    pipeline.drain()
    dead = pipeline.dead_letters(pipeline.work)
    assert [m["Body"] for m in dead] == ['{"job_id": 1}']


def test_dead_lettered_notification_leaves_a_failed_job_record(pipeline, monkeypatch):
    from functions.core.batch import splitter

    monkeypatch.setattr(splitter, "plan", lambda *a, **k: (_ for _ in ()).throw(ConnectionError("S3 down")))
    key = pipeline.upload("s3down.jsonl", [good(1)])
    pipeline.drain()
    job = pipeline.job_for(key)
    assert job["status"] == "failed" and job["error"]["code"] == "split_failed"
    assert len(pipeline.dead_letters(pipeline.events)) == 1


class Killed(BaseException):
    """Lambda stopping the function at its timeout: no except clause of the handler runs."""


def test_splitter_killed_mid_send_on_every_delivery_leaves_a_failed_job_not_a_running_one(pipeline, monkeypatch):
    from functions.handlers.batch_splitter import handler
    from light_support import lambda_context
    from local.pollers import sqs_record

    real = sqs_adapter.send_messages

    def sends_one_then_dies(url, bodies):
        real(url, bodies[:1])
        raise Killed()

    monkeypatch.setattr(sqs_adapter, "send_messages", sends_one_then_dies)
    key = pipeline.upload("killed.jsonl", [good(i) for i in range(230)])
    (event,) = pipeline.receive(pipeline.events.url)
    with pytest.raises(Killed):
        handler({"Records": [sqs_record(event, pipeline.events.arn)]}, lambda_context())
    assert pipeline.job_for(key)["status"] == "running"
    # After maxReceiveCount such deliveries SQS dead-letters the notification; the backstop takes it.
    pipeline.sqs.delete_message(QueueUrl=pipeline.events.url, ReceiptHandle=event["ReceiptHandle"])
    pipeline.sqs.send_message(QueueUrl=pipeline.events.dlq_url, MessageBody=event["Body"])
    assert dlq_deliver(pipeline, pipeline.events) == set()
    job = pipeline.job_for(key)
    assert (job["status"], job["error"]["code"]) == ("failed", "split_failed")
    pipeline.drain()  # the one chunk message that did leave finds the job ended and changes nothing
    assert pipeline.job_for(key)["updated_at"] == job["updated_at"]


def test_dead_lettered_notification_of_a_fully_sent_split_leaves_the_job_to_its_workers(pipeline):
    from functions.handlers.batch_splitter import handler

    key = pipeline.upload("sent.jsonl", [good(i) for i in range(150)])
    (event,) = pipeline.receive(pipeline.events.url)
    assert pipeline.deliver(pipeline.events, handler, [event]) == set()
    assert pipeline.job_for(key)["chunks_sent"] == 2
    pipeline.sqs.send_message(QueueUrl=pipeline.events.dlq_url, MessageBody=event["Body"])
    assert dlq_deliver(pipeline, pipeline.events) == set()
    assert pipeline.job_for(key)["status"] == "running"
    pipeline.drain()
    assert pipeline.job_for(key)["status"] == "succeeded"


def test_job_store_is_the_only_writer_of_counts(pipeline):
    """A chunk recorded twice (worker and DLQ backstop racing) changes the counts once."""
    store = jobs.job_store()
    store.create(store.new_job("job_" + "0" * 24, status="running", chunks_total=1, lines_total=5,
                               input_bucket=pipeline.bucket, chunks_done=0, lines_ok=0, lines_failed=0))
    assert store.complete_chunk("job_" + "0" * 24, 0, {"first_line": 1, "lines": 5}, ok=5, errors=0, failed=False)
    assert not store.complete_chunk("job_" + "0" * 24, 0, {"first_line": 1, "lines": 5}, ok=0, errors=5,
                                    failed=True)
    job = store.get("job_" + "0" * 24).model_dump()
    assert (job["chunks_done"], job["lines_ok"], job["lines_failed"]) == (1, 5, 0)
