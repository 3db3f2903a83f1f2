"""Bad input over HTTP against the local system: every class gets its documented 4xx, never a 500.

Each class is one request a careless or hostile key holder could send. For each: the status and
error code listed in docs/local.md ("Bad input"), the OpenAI error shape with no Python internals,
and afterwards ``/health`` and a valid request still answer (nothing was left broken).
"""
from __future__ import annotations

import json
import socket
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

import pytest
import requests

EMB = "all-minilm-l6-v2"
CLS = "cirrus-intent-minilm"
GEN = "smollm2-135m-instruct"  # the dev stage's chat model
JSON = {"Content-Type": "application/json"}


@dataclass(frozen=True)
class Case:
    id: str
    method: str
    path: str
    body: bytes | dict | list | str | None
    status: int
    code: str | None
    headers: dict | None = None          # replaces the default JSON + dev key headers when given
    auth: bool = True                    # add the dev key to ``headers``
    raw: bytes | None = None             # send these bytes as the request head (framing cases)


def _j(obj) -> bytes:
    return json.dumps(obj).encode()


def _emb(**kw) -> dict:
    return {"model": EMB, "input": "hello", **kw}


def _chat(**kw) -> dict:
    return {"model": GEN, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, **kw}


CASES = [
    # --- malformed JSON / not an object (gateway validator, then the function's parser) ---------------
    Case("json_syntax", "POST", "/v1/embeddings", b"{not json", 400, "invalid_json"),
    Case("json_empty_body", "POST", "/v1/embeddings", b"", 400, "invalid_json"),
    Case("json_array_body", "POST", "/v1/embeddings", b"[1, 2]", 400, "invalid_json"),
    Case("json_string_body", "POST", "/v1/embeddings", b'"text"', 400, "invalid_json"),
    Case("json_null_body", "POST", "/v1/embeddings", b"null", 400, "invalid_json"),
    Case("json_trailing_garbage", "POST", "/v1/embeddings", b'{"model": "x"} tail', 400, "invalid_json"),
    Case("json_nested_5000_arrays", "POST", "/v1/embeddings", b"[" * 5000 + b"]" * 5000, 400, "invalid_json"),
    Case("json_nested_5000_objects", "POST", "/v1/embeddings", b'{"a":' * 5000 + b"1" + b"}" * 5000, 400,
         "invalid_json"),
    Case("json_nested_70_in_field", "POST", "/v1/embeddings",
         b'{"model": "m", "input": ' + b"[" * 70 + b'"x"' + b"]" * 70 + b"}", 400, "json_too_deep"),
    Case("json_nested_as_text_plain", "POST", "/v1/embeddings", b"[" * 5000 + b"]" * 5000, 400, "json_too_deep",
         headers={"Content-Type": "text/plain"}),
    Case("json_not_utf8", "POST", "/v1/embeddings", b"\xff\xfe{}", 400, "invalid_json"),
    Case("json_not_utf8_text_plain", "POST", "/v1/embeddings", b"\xff\xfe{}", 400, "invalid_json",
         headers={"Content-Type": "text/plain"}),
    Case("json_nan_literal", "POST", "/v1/chat/completions", b'{"model": "%s", "messages": [], "temperature": NaN}'
         % GEN.encode(), 422, "invalid_value"),
    Case("json_duplicate_keys_last_wins_but_bad", "POST", "/v1/embeddings",
         b'{"model": "%s", "input": "x", "input": 5}' % EMB.encode(), 422, "invalid_value"),
    # --- sizes and limits --------------------------------------------------------------------------
    Case("body_over_api_gateway_limit", "POST", "/v1/embeddings", b'{"input": "' + b"x" * (10 * 1024 * 1024) + b'"}',
         413, "payload_too_large"),
    Case("body_over_function_limit", "POST", "/v1/embeddings", _j(_emb(input="x" * 2_100_000)), 413, "body_too_large"),
    Case("too_many_inputs", "POST", "/v1/embeddings", _j(_emb(input=["a"] * 2049)), 413, "too_many_inputs"),
    Case("input_too_long_chars", "POST", "/v1/embeddings", _j(_emb(input="x" * 20_001)), 413, "input_too_long"),
    Case("empty_input_list", "POST", "/v1/embeddings", _j(_emb(input=[])), 422, "invalid_value"),
    Case("empty_input_string", "POST", "/v1/embeddings", _j(_emb(input=["ok", ""])), 422, "invalid_value"),
    Case("classify_too_many_inputs", "POST", "/v1/classify", _j({"model": CLS, "input": ["a"] * 2049}), 413,
         "too_many_inputs"),
    Case("chat_over_light_token_budget", "POST", "/v1/chat/completions", _j(_chat(max_tokens=5000)), 422,
         "async_not_available"),
    # Prompts over CIRRUS_MAX_PROMPT_CHARS (100,000) are refused before tokenizing (a few ms, not 1.5 s).
    Case("chat_prompt_over_char_cap", "POST", "/v1/chat/completions",
         _j(_chat(messages=[{"role": "user", "content": "x" * 1_000_000}])), 413, "prompt_too_long"),
    Case("chat_prompt_over_char_cap_in_parts", "POST", "/v1/chat/completions",
         _j(_chat(messages=[{"role": "system", "content": "s" * 60_000},
                            {"role": "user", "content": [{"type": "text", "text": "u" * 50_000}]}])), 413,
         "prompt_too_long"),
    Case("chat_prompt_over_char_cap_streamed", "POST", "/v1/chat/completions",
         _j(_chat(messages=[{"role": "user", "content": "x" * 100_001}], stream=True)), 413, "prompt_too_long"),
    Case("completions_prompt_over_char_cap", "POST", "/v1/completions",
         _j({"model": GEN, "prompt": "x" * 100_001, "max_tokens": 4}), 413, "prompt_too_long"),
    # 2,048 inputs of ~17 tokens each: over the 32,768-token cap per request, refused before inference.
    Case("embeddings_over_request_token_cap", "POST", "/v1/embeddings",
         _j(_emb(input=["where is my parcel " * 4] * 2048)), 413, "too_many_tokens"),
    Case("classify_over_request_token_cap", "POST", "/v1/classify",
         _j({"model": CLS, "input": ["where is my parcel " * 4] * 2048}), 413, "too_many_tokens"),
    Case("chat_max_tokens_zero", "POST", "/v1/chat/completions", _j(_chat(max_tokens=0)), 422, "invalid_value"),
    Case("chat_max_tokens_negative", "POST", "/v1/chat/completions", _j(_chat(max_tokens=-1)), 422, "invalid_value"),
    Case("jobs_limit_not_a_number", "GET", "/v1/jobs?limit=abc", None, 422, None),
    Case("jobs_limit_zero", "GET", "/v1/jobs?limit=0", None, 422, None),
    Case("jobs_limit_huge", "GET", "/v1/jobs?limit=100000000", None, 422, None),
    # --- Unicode --------------------------------------------------------------------------------------
    # A lone surrogate is valid JSON but no character: the tokenizer maps it to [UNK], as for any
    # unknown symbol (accepted, not a crash).
    Case("unicode_lone_surrogate_escape", "POST", "/v1/embeddings", b'{"model": "%s", "input": "\\ud800"}'
         % EMB.encode(), 200, None),
    Case("unicode_nul_only_input", "POST", "/v1/embeddings", _j(_emb(input="\u0000")), 200, None),
    Case("unicode_rtl_and_emoji_model_name", "POST", "/v1/embeddings", _j(_emb(model="\u202emodel\U0001f600")), 404,
         "model_not_found"),
    # --- types ----------------------------------------------------------------------------------------
    Case("type_input_number", "POST", "/v1/embeddings", _j(_emb(input=42)), 422, "invalid_value"),
    Case("type_input_object", "POST", "/v1/embeddings", _j(_emb(input={"a": 1})), 422, "invalid_value"),
    Case("type_input_token_ids", "POST", "/v1/embeddings", _j(_emb(input=[[101, 102]])), 422, "invalid_value"),
    Case("type_model_number", "POST", "/v1/embeddings", _j(_emb(model=7)), 422, "invalid_value"),
    Case("type_model_missing", "POST", "/v1/classify", _j({"input": "x"}), 422, "invalid_value"),
    Case("type_encoding_format_unknown", "POST", "/v1/embeddings", _j(_emb(encoding_format="int8")), 422,
         "invalid_value"),
    Case("type_unknown_field", "POST", "/v1/embeddings", _j(_emb(temperature=1)), 422, "invalid_value"),
    Case("type_top_k_string", "POST", "/v1/classify", _j({"model": CLS, "input": "x", "top_k": "2"}), 422,
         "invalid_value"),
    Case("type_top_k_zero", "POST", "/v1/classify", _j({"model": CLS, "input": "x", "top_k": 0}), 422,
         "invalid_value"),
    Case("chat_messages_not_a_list", "POST", "/v1/chat/completions", _j(_chat(messages="hi")), 422, "invalid_value"),
    Case("chat_messages_empty", "POST", "/v1/chat/completions", _j(_chat(messages=[])), 422, "invalid_value"),
    Case("chat_role_unknown", "POST", "/v1/chat/completions",
         _j(_chat(messages=[{"role": "robot", "content": "x"}])), 422, "invalid_value"),
    Case("chat_content_number", "POST", "/v1/chat/completions",
         _j(_chat(messages=[{"role": "user", "content": 5}])), 422, "invalid_value"),
    Case("chat_temperature_negative", "POST", "/v1/chat/completions", _j(_chat(temperature=-1)), 422, "invalid_value"),
    Case("chat_temperature_huge", "POST", "/v1/chat/completions", _j(_chat(temperature=1e308)), 422, "invalid_value"),
    Case("chat_top_p_over_one", "POST", "/v1/chat/completions", _j(_chat(top_p=1.5)), 422, "invalid_value"),
    Case("chat_seed_string", "POST", "/v1/chat/completions", _j(_chat(seed="1")), 422, "invalid_value"),
    Case("chat_stop_number", "POST", "/v1/chat/completions", _j(_chat(stop=5)), 422, "invalid_value"),
    Case("completions_prompt_number", "POST", "/v1/completions", _j({"model": GEN, "prompt": 5}), 422,
         "invalid_value"),
    Case("jobs_inputs_empty", "POST", "/v1/jobs", _j({"model": EMB, "inputs": []}), 422, "invalid_value"),
    Case("jobs_inputs_with_defaults_header", "POST", "/v1/jobs",
         _j({"model": EMB, "inputs": [{"defaults": {}}]}), 422, "invalid_value"),
    Case("jobs_unknown_field", "POST", "/v1/jobs", _j({"model": EMB, "inputs": ["x"], "color": "red"}), 422,
         "invalid_value"),
    # --- unknown things -------------------------------------------------------------------------------
    Case("model_unknown_embeddings", "POST", "/v1/embeddings", _j(_emb(model="nope")), 404, "model_not_found"),
    Case("model_unknown_classify", "POST", "/v1/classify", _j({"model": "nope", "input": "x"}), 404,
         "model_not_found"),
    Case("model_unknown_chat", "POST", "/v1/chat/completions", _j(_chat(model="nope")), 404, "model_not_found"),
    Case("model_wrong_task", "POST", "/v1/classify", _j({"model": EMB, "input": "x"}), 422, None),
    Case("model_unknown_get", "GET", "/v1/models/nope", None, 404, "model_not_found"),
    Case("job_unknown", "GET", "/v1/jobs/00000000000000000000000000", None, 404, None),
    Case("job_id_traversal", "GET", "/v1/jobs/..%2F..%2Fetc", None, 404, None),
    Case("generation_job_unknown", "GET", "/v1/generation/jobs/nope", None, 404, None),
    # --- paths and methods (API Gateway answers before any function) ----------------------------------
    Case("path_unknown", "GET", "/v2/embeddings", None, 404, "not_found"),
    Case("path_trailing_segment", "POST", "/v1/embeddings/extra", _j(_emb()), 404, "not_found"),
    Case("path_encoded_dot_dot", "GET", "/v1/%2e%2e/health", None, 404, "not_found"),
    Case("method_get_on_post_route", "GET", "/v1/embeddings", None, 404, "not_found"),
    Case("method_delete", "DELETE", "/v1/jobs", None, 404, "not_found"),
    Case("method_put", "PUT", "/v1/embeddings", _j(_emb()), 404, "not_found"),
    Case("method_patch_health", "PATCH", "/health", None, 404, "not_found"),
    # --- auth -----------------------------------------------------------------------------------------
    Case("auth_missing", "POST", "/v1/embeddings", _j(_emb()), 401, "invalid_api_key", auth=False),
    Case("auth_wrong_key", "POST", "/v1/embeddings", _j(_emb()), 401, "invalid_api_key",
         headers={"Authorization": "Bearer cir_0123456789abcdef_" + "A" * 43}, auth=False),
    Case("auth_malformed_key", "POST", "/v1/embeddings", _j(_emb()), 401, "invalid_api_key",
         headers={"Authorization": "Bearer not-a-key"}, auth=False),
    Case("auth_bare_key_without_scheme", "POST", "/v1/embeddings", _j(_emb()), 401, "invalid_api_key",
         headers={"Authorization": "{key}"}, auth=False),
    Case("auth_basic_scheme", "POST", "/v1/embeddings", _j(_emb()), 401, "invalid_api_key",
         headers={"Authorization": "Basic {key}"}, auth=False),
    Case("auth_empty_bearer", "POST", "/v1/embeddings", _j(_emb()), 401, "invalid_api_key",
         headers={"Authorization": "Bearer "}, auth=False),
    Case("auth_huge_header", "POST", "/v1/embeddings", _j(_emb()), 401, "invalid_api_key",
         headers={"Authorization": "Bearer " + "x" * 8000}, auth=False),
    # --- framing (raw bytes: no client library would send these) --------------------------------------
    Case("framing_content_length_1e15", "POST", "/v1/embeddings", b"{}", 413, "payload_too_large",
         raw=b"Content-Length: 1000000000000000\r\n"),
    Case("framing_content_length_negative", "POST", "/v1/embeddings", b"{}", 400, "bad_framing",
         raw=b"Content-Length: -1\r\n"),
    Case("framing_conflicting_lengths", "POST", "/v1/embeddings", b"{}", 400, "bad_framing",
         raw=b"Content-Length: 2\r\nContent-Length: 5\r\n"),
    Case("framing_length_and_chunked", "POST", "/v1/embeddings", b"2\r\n{}\r\n0\r\n\r\n", 400, "bad_framing",
         raw=b"Content-Length: 2\r\nTransfer-Encoding: chunked\r\n"),
    Case("framing_bad_chunk_size", "POST", "/v1/embeddings", b"zz\r\n{}\r\n0\r\n\r\n", 400, "bad_framing",
         raw=b"Transfer-Encoding: chunked\r\n"),
    Case("framing_two_authorization_headers", "POST", "/v1/embeddings", b"{}", 400, "duplicate_authorization",
         raw=b"Content-Length: 2\r\nAuthorization: Bearer cir_0123456789abcdef_" + b"A" * 43 + b"\r\n"),
]


def _raw(url: str, case: Case, key: str) -> tuple[int, dict]:
    u = urlsplit(url)
    body = case.body if isinstance(case.body, bytes) else b""
    head = (f"{case.method} {case.path} HTTP/1.1\r\nHost: {u.netloc}\r\nAuthorization: Bearer {key}\r\n"
            f"Content-Type: application/json\r\n").encode() + case.raw + b"\r\n"
    with socket.create_connection((u.hostname, u.port), timeout=30) as s:
        s.sendall(head + body)
        data = b""
        while b"\r\n\r\n" not in data or len(data.partition(b"\r\n\r\n")[2]) < _length(data):
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    header, _, rest = data.partition(b"\r\n\r\n")
    return int(header.split()[1]), json.loads(rest[:_length(data)])


def _length(data: bytes) -> int:
    for line in data.partition(b"\r\n\r\n")[0].split(b"\r\n")[1:]:
        name, _, value = line.partition(b": ")
        if name.lower() == b"content-length":
            return int(value)
    return 0


def _send(local_cirrus, case: Case) -> tuple[int, dict | None]:
    if case.raw is not None:
        return _raw(local_cirrus.url, case, local_cirrus.key)
    headers = dict(JSON if case.headers is None or "Content-Type" not in case.headers else {})
    headers.update({k: v.format(key=local_cirrus.key) for k, v in (case.headers or {}).items()})
    if case.auth:
        headers.update(local_cirrus.auth)
    data = case.body if isinstance(case.body, bytes) else (None if case.body is None else json.dumps(case.body))
    r = requests.request(case.method, local_cirrus.url + case.path, data=data, headers=headers, timeout=60)
    try:
        return r.status_code, r.json()
    except ValueError:
        return r.status_code, None


def test_the_suite_has_at_least_sixty_distinct_classes():
    ids = [c.id for c in CASES] + list(BATCH_CASES)
    assert len(set(ids)) == len(ids) >= 60


def _assert_still_healthy(local_cirrus, seen: int) -> None:
    """/health and a valid request answer, and the system's log since ``seen`` has no server error."""
    assert local_cirrus.get("/health").status_code == 200
    ok = local_cirrus.post("/v1/embeddings", {"model": EMB, "input": "still working"})
    assert ok.status_code == 200 and len(ok.json()["data"][0]["embedding"]) == 384
    with open(local_cirrus.state_dir / "cirrus-local.log", "rb") as f:  # what this class wrote to the log
        f.seek(seen)
        written = f.read().decode(errors="replace")
    assert "status=5" not in written and "Traceback" not in written and "unhandled error" not in written


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_gets_its_documented_4xx_and_the_system_stays_healthy(local_cirrus, case):
    seen = (local_cirrus.state_dir / "cirrus-local.log").stat().st_size
    status, body = _send(local_cirrus, case)
    assert status == case.status, (status, body)
    if status >= 400:
        err = body["error"]
        assert set(err) == {"message", "type", "param", "code"}, body
        assert "Traceback" not in err["message"] and ".py" not in err["message"]
        if case.code is not None:
            assert err["code"] == case.code, err
    _assert_still_healthy(local_cirrus, seen)


# --- batch inputs: what arrives outside the API (uploads, file lines) ends its job or line clearly ------
def _job(local_cirrus, job_id: str, *, until=lambda j: j["status"] in ("succeeded", "succeeded_with_errors",
                                                                      "failed")) -> dict:
    deadline, job = time.monotonic() + 120, None
    while time.monotonic() < deadline:
        job = local_cirrus.get(f"/v1/jobs/{job_id}").json()
        if until(job):
            return job
        time.sleep(0.5)
    raise AssertionError(f"job {job_id}: {job}")


def _post_form(upload: dict, data: bytes) -> None:
    r = requests.post(upload["url"], data=upload["fields"], files={"file": ("in.jsonl", data)}, timeout=60)
    assert r.status_code == 204, r.text[:300]  # moto stores what S3 would refuse by the form's policy


def _versions(local_cirrus, key: str) -> list:
    page = local_cirrus.aws("s3").list_object_versions(Bucket=local_cirrus.state["buckets"]["Data"], Prefix=key)
    return [v for v in page.get("Versions", []) + page.get("DeleteMarkers", []) if v["Key"] == key]


def _past_deadline(local_cirrus, job_id: str) -> None:
    # moto never runs DynamoDB's TTL or waits 75 minutes: move the job's upload deadline instead.
    local_cirrus.aws("dynamodb").update_item(
        TableName=local_cirrus.state["tables"]["Jobs"], Key={"pk": {"S": f"JOB#{job_id}"}, "sk": {"S": "JOB"}},
        UpdateExpression="SET upload_deadline = :d", ExpressionAttributeValues={":d": {"N": str(int(time.time()) - 5)}})


def _upload_over_the_file_limit(local_cirrus) -> None:
    created = local_cirrus.post("/v1/jobs", {}).json()
    line = b'{"input": "' + b"x" * 1000 + b'"}\n'
    _post_form(created["upload"], line * (local_cirrus.state["batch_max_file_bytes"] // len(line) + 1))
    job = _job(local_cirrus, created["id"])
    assert job["status"] == "failed" and job["error"]["code"] == "file_too_large", job
    assert _versions(local_cirrus, job["input"]["key"]) == []


def _upload_after_the_deadline(local_cirrus) -> None:
    created = local_cirrus.post("/v1/jobs", {}).json()
    _past_deadline(local_cirrus, created["id"])
    _post_form(created["upload"], b'{"input": "too late"}\n')
    job = _job(local_cirrus, created["id"], until=lambda j: j["status"] == "failed")
    assert job["error"]["code"] == "upload_expired", job
    assert _versions(local_cirrus, job["input"]["key"]) == []


def _job_never_uploaded(local_cirrus) -> None:
    created = local_cirrus.post("/v1/jobs", {}).json()
    _past_deadline(local_cirrus, created["id"])
    job = local_cirrus.get(f"/v1/jobs/{created['id']}").json()
    assert job["status"] == "expired" and job["error"]["code"] == "upload_expired", job
    listed = {j["id"]: j["status"] for j in local_cirrus.get("/v1/jobs", params={"limit": 100}).json()["data"]}
    assert listed[created["id"]] == "expired"


def _line_naming(model: str, code: str):
    def run(local_cirrus) -> None:
        r = local_cirrus.post("/v1/jobs", {"inputs": [{"input": "hello", "model": model}, "fine"]})
        job = _job(local_cirrus, r.json()["id"])
        assert job["status"] == "succeeded_with_errors" and job["counts"]["failed"] == 1, job
        error = requests.get(job["output"]["errors_url"], timeout=30).json()
        assert (error["line"], error["error"]["code"]) == (1, code), error
    return run


def _batch_file_over_the_limit(local_cirrus) -> None:
    created = local_cirrus.post("/v1/files", {"purpose": "batch"}).json()
    row = json.dumps({"custom_id": "a", "method": "POST", "url": "/v1/embeddings",
                      "body": {"model": EMB, "input": "x" * 1000}}).encode() + b"\n"
    _post_form(created["upload"], row * (local_cirrus.state["batch_max_file_bytes"] // len(row) + 1))
    r = local_cirrus.post("/v1/batches", {"input_file_id": created["id"], "endpoint": "/v1/embeddings",
                                          "completion_window": "24h"})
    assert r.status_code == 413 and r.json()["error"]["code"] == "file_too_large", r.text
    assert set(r.json()["error"]) == {"message", "type", "param", "code"}


BATCH_CASES = {
    "job_upload_over_the_file_limit": _upload_over_the_file_limit,
    "job_upload_after_the_deadline": _upload_after_the_deadline,
    "job_never_uploaded": _job_never_uploaded,
    "job_line_naming_a_generation_model": _line_naming(GEN, "model_task_mismatch"),
    "job_line_naming_an_unknown_model": _line_naming("no-such-model", "model_not_found"),
    "batch_file_over_the_limit": _batch_file_over_the_limit,
}


@pytest.mark.parametrize("name", list(BATCH_CASES))
def test_bad_batch_input_ends_its_job_or_line_clearly_and_the_system_stays_healthy(local_cirrus, name):
    seen = (local_cirrus.state_dir / "cirrus-local.log").stat().st_size
    BATCH_CASES[name](local_cirrus)
    _assert_still_healthy(local_cirrus, seen)
