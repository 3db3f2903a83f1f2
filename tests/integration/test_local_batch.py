"""Batch jobs end to end on the local system: S3 drop -> notification -> SQS -> splitter -> workers -> S3."""
from __future__ import annotations

import base64
import json
import time
import uuid
from datetime import datetime

import requests

from functions.core.contract import JOBS_INPUT_PREFIX

TERMINAL = {"succeeded", "succeeded_with_errors", "failed"}


def _wait_job(local_cirrus, job_id: str, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    job = None
    while time.monotonic() < deadline:
        r = local_cirrus.get(f"/v1/jobs/{job_id}")
        if r.status_code == 200:
            job = r.json()
            if job["status"] in TERMINAL:
                return job
        time.sleep(0.5)
    raise AssertionError(f"job {job_id} not finished in {timeout} s; last seen: {job}")


def _jsonl(url: str) -> list[dict]:
    r = requests.get(url, timeout=30)
    assert r.status_code == 200, r.text[:300]
    return [json.loads(line) for line in r.text.splitlines() if line.strip()]


def test_a_file_dropped_in_the_data_bucket_becomes_a_job_with_one_line_out_per_line_in(local_cirrus):
    from functions.core.batch.job import job_id_for

    good = [{"id": f"q{i}", "input": f"question number {i} about my order"} for i in range(40)]
    lines = [json.dumps(x) for x in good]
    bad_at = {5: "{not json", 17: json.dumps({"id": "no-input"}), 33: json.dumps({"input": 12})}
    for pos, raw in sorted(bad_at.items()):
        lines.insert(pos, raw)
    body = ("\n".join(lines) + "\n").encode()
    bucket = local_cirrus.state["buckets"]["Data"]
    key = f"{JOBS_INPUT_PREFIX}it-{uuid.uuid4().hex[:8]}.jsonl"
    etag = local_cirrus.aws("s3").put_object(Bucket=bucket, Key=key, Body=body)["ETag"]
    job_id = job_id_for(bucket, key, etag)

    job = _wait_job(local_cirrus, job_id)
    assert job["status"] == "succeeded_with_errors", job
    assert job["counts"] == {"total": 43, "succeeded": 40, "failed": 3}
    results = _jsonl(job["output"]["results_url"])
    errors = _jsonl(job["output"]["errors_url"])
    # Every input line exactly once, in input order, results carrying the line's id.
    assert [r["id"] for r in results] == [g["id"] for g in good]
    assert sorted(r["line"] for r in results) == [r["line"] for r in results]
    assert [e["line"] for e in errors] == [p + 1 for p in sorted(bad_at)]
    assert sorted([r["line"] for r in results] + [e["line"] for e in errors]) == list(range(1, 44))
    assert all(len(r["embedding"]) == 384 for r in results)


def test_jobs_api_with_inline_inputs_runs_a_classification_job(local_cirrus):
    r = local_cirrus.post("/v1/jobs", {"model": "cirrus-intent-minilm", "task": "classify",
                                       "inputs": ["refund my order please", "my parcel never arrived"]})
    assert r.status_code == 201, r.text
    job = _wait_job(local_cirrus, r.json()["id"])
    assert job["status"] == "succeeded", job
    results = _jsonl(job["output"]["results_url"])
    assert [x["line"] for x in results] == [1, 2]
    assert all("label" in x for x in results)
    listed = local_cirrus.get("/v1/jobs")
    assert job["id"] in {j["id"] for j in listed.json()["data"]}


def _policy(upload: dict) -> dict:
    return json.loads(base64.b64decode(upload["fields"]["policy"]))


def _post_form(upload: dict, body: bytes) -> requests.Response:
    # What any HTTP client does with the form (curl -F key=... -F file=@f): fields first, the file last.
    return requests.post(upload["url"], data=upload["fields"], files={"file": ("input.jsonl", body)}, timeout=60)


def test_jobs_api_upload_form_takes_a_plain_multipart_post_and_the_upload_runs_as_a_job(local_cirrus):
    before = time.time()
    r = local_cirrus.post("/v1/jobs", {"model": "all-minilm-l6-v2"})
    assert r.status_code == 201, r.text
    created = r.json()
    upload, key = created["upload"], f"{JOBS_INPUT_PREFIX}{created['id']}.jsonl"
    limit = local_cirrus.state["batch_max_file_bytes"]
    # The contract (docs/batch.md) names no encryption field: the bucket's default SSE-KMS encrypts it.
    assert set(upload) == {"method", "url", "fields", "max_bytes", "expires_in", "expires_at"}, upload
    assert upload["method"] == "POST" and upload["fields"]["key"] == key and upload["max_bytes"] == limit
    policy = _policy(upload)
    assert ["content-length-range", 1, limit] in policy["conditions"] and {"key": key} in policy["conditions"]
    expiration = datetime.fromisoformat(policy["expiration"].replace("Z", "+00:00")).timestamp()
    assert upload["expires_in"] == 900 and before + 899 <= expiration <= time.time() + 901
    body = b'{"id": "a", "input": "hello"}\n{"id": "b", "inptu": "typo"}\n{"id": "c", "input": "world"}\n'
    post = _post_form(upload, body)
    assert post.status_code == 204, post.text[:300]
    job = _wait_job(local_cirrus, created["id"])
    assert job["status"] == "succeeded_with_errors", job
    assert job["counts"] == {"total": 3, "succeeded": 2, "failed": 1}
    assert [(x["line"], x["id"]) for x in _jsonl(job["output"]["results_url"])] == [(1, "a"), (3, "c")]
    errors = _jsonl(job["output"]["errors_url"])
    assert [(e["line"], e["id"], e["error"]["code"]) for e in errors] == [(2, "b", "unknown_field")]
    head = local_cirrus.aws("s3").head_object(Bucket=local_cirrus.state["buckets"]["Data"],
                                              Key=job["input"]["key"])
    assert head["ServerSideEncryption"] == "aws:kms" and head["ContentLength"] == len(body), head


def test_an_upload_over_the_limit_fails_its_job_and_no_version_of_it_stays(local_cirrus):
    created = local_cirrus.post("/v1/jobs", {}).json()
    limit = local_cirrus.state["batch_max_file_bytes"]
    line = b'{"input": "' + b"x" * 1000 + b'"}\n'
    post = _post_form(created["upload"], line * (limit // len(line) + 1))
    # S3 answers 400 EntityTooLarge by the form's policy; moto does not enforce content-length-range and
    # stores it, so what is tested here is the pipeline refusing it on its own.
    assert post.status_code == 204, post.text[:300]
    job = _wait_job(local_cirrus, created["id"])
    assert job["status"] == "failed" and job["error"]["code"] == "file_too_large", job
    assert f"the limit is {limit}" in job["error"]["message"]
    listed = local_cirrus.aws("s3").list_object_versions(Bucket=local_cirrus.state["buckets"]["Data"],
                                                         Prefix=job["input"]["key"])
    assert listed.get("Versions", []) == [] and listed.get("DeleteMarkers", []) == [], listed


def test_submit_cli_uploads_a_file_and_waits_for_the_job(local_cirrus, tmp_path):
    f = tmp_path / "cli-job.jsonl"
    f.write_text('{"input": "one"}\n{"input": "two"}\nnot json\n')
    out = local_cirrus.cli("submit", str(f), "--wait", "--timeout", "120", "--download", str(tmp_path / "out"))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "succeeded_with_errors" in out.stdout
    results = list((tmp_path / "out").glob("*.results.jsonl"))
    assert len(results) == 1 and len(results[0].read_text().splitlines()) == 2


def test_submit_cli_refuses_a_file_over_the_batch_limit_before_uploading(local_cirrus, tmp_path):
    f = tmp_path / "too-big.jsonl"
    f.write_bytes(b'{"input": "x"}\n' * (local_cirrus.state["batch_max_file_bytes"] // 15 + 1))
    out = local_cirrus.cli("submit", str(f))
    assert out.returncode == 2 and "the batch file limit is" in out.stderr, out.stdout + out.stderr
    listed = local_cirrus.aws("s3").list_objects_v2(Bucket=local_cirrus.state["buckets"]["Data"],
                                                    Prefix=f"{JOBS_INPUT_PREFIX}too-big")
    assert listed.get("KeyCount", 0) == 0


def _pollers(local_cirrus) -> dict:
    return json.loads((local_cirrus.state_dir / "state.json").read_text()).get("pollers", {})


def test_local_pollers_take_the_stacks_event_source_batch_sizes(local_cirrus):
    from infra.settings import all_stages

    functions = all_stages()["dev"].functions
    queues = {spec: q["url"].rsplit("/", 1)[-1] for spec, q in local_cirrus.state["queues"].items()}
    sizes = {name: p["batch_size"] for name, p in _pollers(local_cirrus).items()}
    one_each = {name: n for name, n in sizes.items()
                if name.endswith((" <- " + queues["Work"], " <- " + queues["JobEvents"]))}
    assert sorted(one_each.values()) == [1, 1], sizes  # one file per splitter call, one chunk per worker call
    others = {n for name, n in sizes.items() if name not in one_each}
    assert others == {functions.sqs_batch_size}, sizes


def test_a_poison_work_message_is_retried_then_dead_lettered_and_consumed_by_the_dlq_handler(local_cirrus):
    """Retries come from the queue's visibility timeout, the DLQ move from its redrive policy."""
    work = local_cirrus.state["queues"]["Work"]
    worker = next(k for k in _pollers(local_cirrus) if k.endswith(work["url"].rsplit("/", 1)[-1]))
    dlq = next(k for k in _pollers(local_cirrus) if k.endswith(work["dlq_url"].rsplit("/", 1)[-1]))
    failed_before, dead_before = _pollers(local_cirrus)[worker]["failed"], _pollers(local_cirrus)[dlq]["deleted"]
    local_cirrus.aws("sqs").send_message(QueueUrl=work["url"], MessageBody="this is not a chunk message")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        p = _pollers(local_cirrus)
        if p[dlq]["deleted"] > dead_before:
            break
        time.sleep(0.5)
    p = _pollers(local_cirrus)
    assert p[dlq]["deleted"] == dead_before + 1, p
    # Exactly maxReceiveCount deliveries to the worker, each reported failed, none deleted.
    assert p[worker]["failed"] - failed_before == work["max_receive_count"], p
    sqs = local_cirrus.aws("sqs")
    for url in (work["url"], work["dlq_url"]):
        attrs = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages"])
        assert attrs["Attributes"]["ApproximateNumberOfMessages"] == "0"


def test_submit_wait_json_prints_one_json_document_and_progress_on_stderr(local_cirrus, tmp_path):
    f = tmp_path / "cli-json-job.jsonl"
    f.write_text("".join(f'{{"input": "line {i}"}}\n' for i in range(5)))
    out = local_cirrus.cli("submit", str(f), "--wait", "--json", "--timeout", "120")
    assert out.returncode == 0, out.stdout + out.stderr
    job = json.loads(out.stdout)  # nothing else on stdout
    assert job["status"] == "succeeded" and job["counts"]["succeeded"] == 5
    progress = [line for line in out.stderr.splitlines() if line.startswith("[")]
    assert progress and "chunks 1/1" in progress[-1] and "lines 5/5" in progress[-1] and "lines/s" in progress[-1]
