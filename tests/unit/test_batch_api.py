"""Job API routes through the real API handler (REST proxy events) over the moto pipeline."""
from __future__ import annotations

import copy
import subprocess
import sys
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


def test_job_without_inputs_returns_a_presigned_upload_url_for_its_input_key(pipeline):
    status, body, _ = call_api(api_event("POST", "/v1/jobs", {"model": EMBEDDER}))
    assert status == 201
    upload = body["upload"]
    assert upload["method"] == "PUT" and upload["expires_in"] == 3600
    assert urlparse(upload["url"]).path.endswith(f"/jobs/input/{body['id']}.jsonl")
    # The client PUTs the file to the URL; here the same bytes land through the S3 API (moto in-process).
    pipeline.upload(f"{body['id']}.jsonl", [{"input": "uploaded later"}])
    pipeline.drain()
    status, job, _ = get(f"/v1/jobs/{body['id']}")
    assert job["status"] == "succeeded" and job["counts"]["succeeded"] == 1
    assert job["input"]["key"] == f"jobs/input/{body['id']}.jsonl"


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
    pipeline.upload(f"{body['id']}.jsonl", [{"input": "someone else's bytes"}])  # e.g. the presigned URL reused
    pipeline.drain()
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


def test_presigned_upload_url_expires_after_the_configured_time(pipeline, env):
    env(batch_url_expiry_s=600)
    _, body, _ = call_api(api_event("POST", "/v1/jobs", {}))
    query = parse_qs(urlparse(body["upload"]["url"]).query)
    assert query["X-Amz-Expires"] == ["600"] and body["upload"]["expires_in"] == 600


def test_route_modules_import_on_their_own_without_the_app():
    # A router must not need functions.core.http.app first (the CLI imports batch.routes.view alone).
    root = Path(__file__).resolve().parents[2]
    for module in ("functions.core.http.routes.jobs", "functions.core.http.routes.generation"):
        proc = subprocess.run([sys.executable, "-c", f"import {module}; import sys; "
                               "assert 'functions.core.http.app' not in sys.modules"],
                              cwd=root, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, (module, proc.stderr[-2000:])
