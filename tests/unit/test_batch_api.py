"""Job API routes through the real API handler (REST proxy events) over the moto pipeline."""
from __future__ import annotations

import base64
import copy
import json
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from urllib.parse import parse_qs, urlparse

from batch_support import EMBEDDER
from light_support import api_event, assert_error, call_api


def as_key(event: dict, key_id: str) -> dict:
    event = copy.deepcopy(event)
    event["requestContext"]["authorizer"].update(principalId=key_id, key_id=key_id)
    return event


def get(path: str, query: dict | None = None, key_id: str = "0123456789abcdef"):
    event = as_key(api_event("GET", path), key_id)
    event["queryStringParameters"] = query
    event["multiValueQueryStringParameters"] = {k: [v] for k, v in (query or {}).items()} or None
    return call_api(event)


def test_inline_job_runs_and_get_returns_counts_and_result_urls(pipeline):
    status, body, _ = call_api(api_event("POST", "/v1/jobs", {"inputs": ["hello", {"id": "b", "input": "bye"}, {"input": 5}]}))
    assert status == 201, body
    assert body["status"] == "awaiting_upload" and body["object"] == "batch_job" and "upload" not in body
    pipeline.drain()
    status, job, _ = get(f"/v1/jobs/{body['id']}")
    assert status == 200
    assert job["status"] == "succeeded_with_errors" and job["model"] == EMBEDDER and job["task"] == "embed"
    assert job["counts"] == {"total": 3, "succeeded": 2, "failed": 1}
    assert job["output"]["results_key"] == f"jobs/output/{body['id']}/results.jsonl"
    url = urlparse(job["output"]["results_url"])
    assert url.path.endswith("/results.jsonl") and "X-Amz-Signature" in parse_qs(url.query)
    results = pipeline.output({"results_key": job["output"]["results_key"]}, "results")
    assert [(r["line"], r["id"]) for r in results] == [(1, None), (2, "b")]
    errors = pipeline.output({"errors_key": job["output"]["errors_key"]}, "errors")
    assert [(e["line"], e["error"]["code"]) for e in errors] == [(3, "wrong_type")]


def _policy(upload: dict) -> dict:
    return json.loads(base64.b64decode(upload["fields"]["policy"]))


def test_job_without_inputs_returns_a_presigned_post_form_for_exactly_its_input_key(pipeline):
    status, body, _ = call_api(api_event("POST", "/v1/jobs", {"model": EMBEDDER}))
    assert status == 201
    upload, key = body["upload"], f"jobs/input/{body['id']}.jsonl"
    assert upload["method"] == "POST" and upload["expires_in"] == 900 and upload["max_bytes"] == 256 * 1024 * 1024
    assert upload["fields"]["key"] == key and pipeline.bucket in upload["url"]
    conditions = _policy(upload)["conditions"]
    assert ["content-length-range", 1, 256 * 1024 * 1024] in conditions
    assert {"key": key} in conditions and {"bucket": pipeline.bucket} in conditions
    # The client POSTs the form; here the same bytes land through the S3 API (moto in-process).
    pipeline.upload(f"{body['id']}.jsonl", [{"input": "uploaded later"}])
    pipeline.drain()
    status, job, _ = get(f"/v1/jobs/{body['id']}")
    assert job["status"] == "succeeded" and job["counts"]["succeeded"] == 1
    assert job["input"]["key"] == key and "upload_deadline" not in job


def test_the_upload_form_size_limit_is_the_batch_file_limit(pipeline, env):
    env(batch_max_file_bytes=4096)
    _, body, _ = call_api(api_event("POST", "/v1/jobs", {}))
    assert ["content-length-range", 1, 4096] in _policy(body["upload"])["conditions"]
    assert body["upload"]["max_bytes"] == 4096


def test_an_upload_over_the_size_limit_fails_the_job_and_all_its_versions_are_deleted(pipeline, env):
    # What S3 refuses by the form's policy; moto does not enforce it, and the splitter must not rely on it.
    env(batch_max_file_bytes=100)
    _, body, _ = call_api(api_event("POST", "/v1/jobs", {}))
    key = pipeline.upload(f"{body['id']}.jsonl", [{"input": "x" * 60}] * 3)
    pipeline.drain()
    status, job, _ = get(f"/v1/jobs/{body['id']}")
    assert job["status"] == "failed" and job["error"]["code"] == "file_too_large"
    assert "the limit is 100" in job["error"]["message"]
    assert pipeline.versions(key) == [] and pipeline.depth(pipeline.work.url) == 0


def _set_deadline(pipeline, job_id: str, deadline: int) -> None:
    pipeline.ddb.update_item(TableName=pipeline.table, Key={"pk": {"S": f"JOB#{job_id}"}, "sk": {"S": "JOB"}},
                             UpdateExpression="SET upload_deadline = :d",
                             ExpressionAttributeValues={":d": {"N": str(deadline)}})


def _record(pipeline, job_id: str) -> dict:
    return pipeline.ddb.get_item(TableName=pipeline.table, Key={"pk": {"S": f"JOB#{job_id}"}, "sk": {"S": "JOB"}})["Item"]


def test_a_job_waiting_for_its_upload_has_a_short_ttl_that_claiming_replaces(pipeline):
    before = int(time.time())
    _, body, _ = call_api(api_event("POST", "/v1/jobs", {}))
    item = _record(pipeline, body["id"])
    deadline, ttl = int(item["upload_deadline"]["N"]), int(item["expires_at"]["N"])
    # The form's 15 min plus an hour for an upload begun just before it expired; then a day shown as
    # expired before DynamoDB's TTL removes the record.
    assert before + 900 + 3600 <= deadline <= int(time.time()) + 900 + 3600
    assert ttl == deadline + 24 * 3600 and body["upload_deadline"] == deadline
    pipeline.upload(f"{body['id']}.jsonl", [{"input": "in time"}])
    pipeline.drain()
    assert int(_record(pipeline, body["id"])["expires_at"]["N"]) >= before + 30 * 86400  # a job's retention


def test_a_job_never_uploaded_is_shown_expired_by_get_and_list(pipeline):
    _, body, _ = call_api(api_event("POST", "/v1/jobs", {}))
    _, fresh, _ = get(f"/v1/jobs/{body['id']}")
    assert fresh["status"] == "awaiting_upload" and fresh["error"] is None
    # moto never runs DynamoDB's TTL: the reads themselves must not show it as still waiting.
    _set_deadline(pipeline, body["id"], int(time.time()) - 1)
    status, job, _ = get(f"/v1/jobs/{body['id']}")
    assert status == 200 and job["status"] == "expired" and job["error"]["code"] == "upload_expired"
    _, listed, _ = get("/v1/jobs")
    assert [(j["id"], j["status"]) for j in listed["data"]] == [(body["id"], "expired")]


def test_an_upload_after_the_deadline_starts_nothing_and_is_deleted(pipeline):
    _, body, _ = call_api(api_event("POST", "/v1/jobs", {}))
    _set_deadline(pipeline, body["id"], int(time.time()) - 60)
    key = pipeline.upload(f"{body['id']}.jsonl", [{"input": "too late"}])
    pipeline.drain()
    _, job, _ = get(f"/v1/jobs/{body['id']}")
    assert job["status"] == "failed" and job["error"]["code"] == "upload_expired"
    assert pipeline.versions(key) == [] and pipeline.depth(pipeline.work.url) == 0
    items = pipeline.ddb.scan(TableName=pipeline.table, FilterExpression="sk = :j",
                              ExpressionAttributeValues={":j": {"S": "JOB"}})["Items"]
    assert [i["id"]["S"] for i in items] == [body["id"]]  # and no ownerless job of its own


def test_inline_inputs_that_cannot_be_stored_leave_a_failed_job_not_a_waiting_one(pipeline):
    from botocore.stub import Stubber

    from functions.core.aws.base import client

    with Stubber(client("s3")) as s3:
        s3.add_client_error("put_object", service_error_code="AccessDenied", http_status_code=403)
        status, body, _ = call_api(api_event("POST", "/v1/jobs", {"inputs": ["never stored"]}))
    assert_error(status, body, 503, "dependency_unavailable")
    items = pipeline.ddb.scan(TableName=pipeline.table, FilterExpression="sk = :j",
                              ExpressionAttributeValues={":j": {"S": "JOB"}})["Items"]
    assert len(items) == 1 and items[0]["status"]["S"] == "failed"
    assert "input_not_stored" in json.dumps(items[0]["error"])
    assert pipeline.depth(pipeline.events.url) == 0  # nothing was written, nothing will start


def test_the_same_upload_event_twice_runs_the_api_job_once(pipeline):
    _, body, _ = call_api(api_event("POST", "/v1/jobs", {"inputs": ["a", "b"]}))
    event = pipeline.receive(pipeline.events.url)
    pipeline.sqs.send_message(QueueUrl=pipeline.events.url, MessageBody=event[0]["Body"])
    from functions.handlers.batch_splitter import handler
    pipeline.deliver(pipeline.events, handler, event)
    pipeline.drain()
    _, job, _ = get(f"/v1/jobs/{body['id']}")
    assert job["chunks"] == {"total": 1, "done": 1, "failed": 0} and job["counts"]["succeeded"] == 2


def test_list_shows_newest_first_and_only_the_callers_jobs(pipeline):
    ids = []
    for key_id in ("aaaa", "bbbb", "aaaa"):
        _, body, _ = call_api(as_key(api_event("POST", "/v1/jobs", {"inputs": ["x"]}), key_id))
        ids.append(body["id"])
    status, listed, _ = get("/v1/jobs", key_id="aaaa")
    assert status == 200 and listed["object"] == "list"
    assert [j["id"] for j in listed["data"]] == [ids[2], ids[0]]
    _, one, _ = get("/v1/jobs", {"limit": "1"}, key_id="aaaa")
    assert [j["id"] for j in one["data"]] == [ids[2]]
    status, body, _ = get(f"/v1/jobs/{ids[1]}", key_id="aaaa")
    assert_error(status, body, 404, "job_not_found")


def test_listing_reads_only_the_callers_jobs_through_the_owner_index(pipeline):
    from functions.core.aws.base import client

    for key_id in ("bbbb",) * 5 + ("aaaa",):
        call_api(as_key(api_event("POST", "/v1/jobs", {"inputs": ["x"]}), key_id))
    queries: list[dict] = []
    ddb = client("dynamodb")
    record = lambda params, **_: queries.append(dict(params))  # noqa: E731
    ddb.meta.events.register("provide-client-params.dynamodb.Query", record)
    try:
        _, listed, _ = get("/v1/jobs", key_id="aaaa")
    finally:
        ddb.meta.events.unregister("provide-client-params.dynamodb.Query", record)
    assert len(listed["data"]) == 1
    owner_queries = [q for q in queries if q.get("IndexName") == "by_owner"]
    assert owner_queries and all(q["ExpressionAttributeValues"][":o"] == {"S": "aaaa"} for q in owner_queries)
    # Jobs of other keys are never read and filtered out: only unowned ones may come from by_created.
    assert all(q.get("FilterExpression") == "attribute_not_exists(#o)" for q in queries if q.get("IndexName") == "by_created")


def without_authorizer(event: dict) -> dict:
    event = copy.deepcopy(event)
    event["requestContext"].pop("authorizer")
    return event


def test_a_file_dropped_in_the_bucket_is_not_visible_to_api_keys_unless_the_stage_shares_it(pipeline, env):
    key = pipeline.upload("dropped.jsonl", [{"input": "not yours"}])
    pipeline.drain()
    dropped = pipeline.job_for(key)["id"]
    _, mine, _ = call_api(api_event("POST", "/v1/jobs", {"inputs": ["mine"]}))
    assert_error(*get(f"/v1/jobs/{dropped}")[:2], 404, "job_not_found")
    _, listed, _ = get("/v1/jobs")
    assert [j["id"] for j in listed["data"]] == [mine["id"]]
    # Direct (admin) invocation without an authorizer sees every job, with result URLs.
    status, job, _ = call_api(without_authorizer(api_event("GET", f"/v1/jobs/{dropped}")))
    assert status == 200 and job["output"]["results_url"]
    env(batch_unowned_jobs_visible="true")  # a single-tenant stage (the local system) shares them
    assert get(f"/v1/jobs/{dropped}")[0] == 200
    _, listed, _ = get("/v1/jobs")
    assert [j["id"] for j in listed["data"]] == [mine["id"], dropped]


def test_other_bytes_put_again_to_an_api_jobs_input_key_start_no_ownerless_job(pipeline):
    _, body, _ = call_api(api_event("POST", "/v1/jobs", {"inputs": ["first"]}))
    pipeline.drain()
    first = pipeline.versions(f"jobs/input/{body['id']}.jsonl")
    pipeline.upload(f"{body['id']}.jsonl", [{"input": "someone else's bytes"}])  # e.g. the upload form reused
    pipeline.drain()
    # The re-upload is deleted: the job's own input is the key's only version again.
    assert [v["ETag"] for v in pipeline.versions(f"jobs/input/{body['id']}.jsonl")] == [first[0]["ETag"]]
    items = pipeline.ddb.scan(TableName=pipeline.table, FilterExpression="sk = :j",
                              ExpressionAttributeValues={":j": {"S": "JOB"}})["Items"]
    assert [i["id"]["S"] for i in items] == [body["id"]]
    status, job, _ = call_api(without_authorizer(api_event("GET", f"/v1/jobs/{body['id']}")))
    assert job["status"] == "succeeded" and job["counts"]["total"] == 1


def test_unknown_job_is_404_and_a_bad_limit_is_422(pipeline):
    assert_error(*get("/v1/jobs/job_" + "f" * 24)[:2], 404, "job_not_found")
    assert_error(*get("/v1/jobs/../../etc")[:2], 404)
    assert_error(*get("/v1/jobs", {"limit": "0"})[:2], 422)


def test_a_non_ascii_digit_limit_is_422_not_a_server_error(pipeline):
    # "²".isdigit() is True but int("²") raises; "١" (Arabic-Indic one) int() would accept.
    for raw in ("²", "١", "1²"):
        assert_error(*get("/v1/jobs", {"limit": raw})[:2], 422)


def test_create_rejects_unknown_models_and_fields(pipeline):
    status, body, _ = call_api(api_event("POST", "/v1/jobs", {"model": "nope", "inputs": ["x"]}))
    assert_error(status, body, 404, "model_not_found")
    status, body, _ = call_api(api_event("POST", "/v1/jobs", {"inputs": []}))
    assert_error(status, body, 422)
    status, body, _ = call_api(api_event("POST", "/v1/jobs", {"input_file": "x"}))
    assert_error(status, body, 422)
    status, body, _ = call_api(api_event("POST", "/v1/jobs", {"inputs": ["ok", 5]}))
    assert_error(status, body, 422)


def test_an_inline_input_shaped_like_a_file_header_is_refused_not_dropped(pipeline):
    # As line 1 of the written file it would become the header and yield no result or error line.
    for inputs in ([{"defaults": {"model": EMBEDDER}}, "x"], ["x", {"defaults": {"task": "embed"}}]):
        status, body, _ = call_api(api_event("POST", "/v1/jobs", {"inputs": inputs}))
        err = assert_error(status, body, 422)
        assert "defaults" in err["message"] and err["param"] == "inputs"
    assert pipeline.depth(pipeline.events.url) == 0  # no file was written


def test_the_upload_form_expires_after_the_configured_time(pipeline, env):
    env(batch_upload_expiry_s=600)
    before = int(time.time())
    _, body, _ = call_api(api_event("POST", "/v1/jobs", {}))
    expiration = datetime.fromisoformat(_policy(body["upload"])["expiration"].replace("Z", "+00:00")).timestamp()
    assert before + 600 <= expiration <= time.time() + 600 and body["upload"]["expires_in"] == 600
    assert before + 600 <= body["upload"]["expires_at"] <= time.time() + 600


def test_route_modules_import_on_their_own_without_the_app():
    # A router must not need functions.core.http.app first (the CLI imports batch.routes.view alone).
    root = Path(__file__).resolve().parents[2]
    for module in ("functions.core.http.routes.jobs", "functions.core.http.routes.generation"):
        proc = subprocess.run([sys.executable, "-c", f"import {module}; import sys; "
                               "assert 'functions.core.http.app' not in sys.modules"],
                              cwd=root, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, (module, proc.stderr[-2000:])
