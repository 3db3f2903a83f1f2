"""The OpenAI Batch API with the official ``openai`` client over HTTP against the local system."""
from __future__ import annotations

import base64
import io
import json
import time

import numpy as np
import openai
import pytest
import requests

EMBEDDER = "all-minilm-l6-v2"


@pytest.fixture
def client(local_cirrus):
    return openai.OpenAI(api_key=local_cirrus.key, base_url=f"{local_cirrus.url}/v1", max_retries=0, timeout=60)


def _request(custom_id: str, body: dict, url: str = "/v1/embeddings") -> dict:
    return {"custom_id": custom_id, "method": "POST", "url": url, "body": body}


def _jsonl(rows: list[dict]) -> bytes:
    return ("\n".join(json.dumps(r) for r in rows) + "\n").encode()


def _wait(client, batch_id: str, timeout: float = 120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        batch = client.batches.retrieve(batch_id)
        if batch.status in ("completed", "failed", "cancelled", "expired"):
            return batch
        time.sleep(0.5)
    raise AssertionError(f"batch {batch_id} not finished in {timeout} s: {batch}")


def test_files_create_batches_create_poll_and_files_content(client, local_cirrus):
    rows = [_request(f"req-{i}", {"model": EMBEDDER, "input": f"where is my parcel number {i}?"}) for i in range(30)]
    rows.append(_request("pair", {"model": EMBEDDER, "input": ["refund please", "cancel my order"],
                                  "encoding_format": "base64"}))
    rows.append(_request("missing-model", {"model": "no-such-model", "input": "x"}))
    uploaded = client.files.create(file=("requests.jsonl", io.BytesIO(_jsonl(rows))), purpose="batch")
    assert uploaded.id.startswith("file-") and uploaded.purpose == "batch" and uploaded.bytes > 0

    batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/embeddings", completion_window="24h",
                                  metadata={"team": "search"})
    assert batch.status in ("validating", "in_progress") and batch.metadata == {"team": "search"}
    done = _wait(client, batch.id)
    assert done.status == "completed", done
    assert done.request_counts.total == 32
    assert (done.request_counts.completed, done.request_counts.failed) == (31, 1)
    assert batch.id in [b.id for b in client.batches.list(limit=10).data]

    out = [json.loads(line) for line in client.files.content(done.output_file_id).text.splitlines()]
    by_id = {o["custom_id"]: o for o in out}
    assert sorted(by_id) == sorted(r["custom_id"] for r in rows[:-1])  # each request once, the bad one absent
    first = by_id["req-0"]["response"]
    assert first["status_code"] == 200 and first["body"]["model"] == EMBEDDER
    vec = np.array(first["body"]["data"][0]["embedding"])
    direct = client.embeddings.create(model=EMBEDDER, input="where is my parcel number 0?", encoding_format="float")
    # int8 activations are quantized per batch, so batch-mates shift a vector slightly (docs/quantization.md)
    assert float(vec @ np.array(direct.data[0].embedding)) > 0.99
    pair = by_id["pair"]["response"]["body"]
    assert [d["index"] for d in pair["data"]] == [0, 1] and isinstance(pair["data"][0]["embedding"], str)
    assert pair["usage"]["prompt_tokens"] > 0

    errors = [json.loads(line) for line in client.files.content(done.error_file_id).text.splitlines()]
    assert [e["custom_id"] for e in errors] == ["missing-model"]
    assert errors[0]["error"]["code"] == "model_not_found"
    meta = client.files.retrieve(done.output_file_id)
    assert meta.purpose == "batch_output" and meta.bytes > 0


def test_a_bad_line_refuses_the_batch_naming_the_line(client):
    rows = [_request("a", {"model": EMBEDDER, "input": "ok"}), _request("a", {"model": EMBEDDER, "input": "dup"})]
    uploaded = client.files.create(file=("dup.jsonl", io.BytesIO(_jsonl(rows))), purpose="batch")
    with pytest.raises(openai.BadRequestError) as err:
        client.batches.create(input_file_id=uploaded.id, endpoint="/v1/embeddings", completion_window="24h")
    assert "line 2" in err.value.body["message"] and "duplicate custom_id" in err.value.body["message"]
    with pytest.raises(openai.BadRequestError) as chat:  # embeddings lines are not chat requests
        client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h")
    assert "line 1" in chat.value.body["message"] and chat.value.body["code"] == "invalid_batch_line"
    with pytest.raises(openai.UnprocessableEntityError) as other:
        client.batches.create(input_file_id=uploaded.id, endpoint="/v1/completions", completion_window="24h")
    assert other.value.body["param"] == "endpoint"


GEN_MODEL = "smollm2-135m-instruct"  # the dev stage's light chat model


def test_chat_completion_batches_answer_as_the_api_does(client):
    ask = lambda q, **kw: {"model": GEN_MODEL, "messages": [{"role": "user", "content": q}],  # noqa: E731
                           "max_tokens": 8, "temperature": 0, **kw}
    rows = [_request(f"q{i}", ask(q), url="/v1/chat/completions")
            for i, q in enumerate(["What is the capital of France?", "Name a colour.", "Say hello.",
                                   "What is 2 + 2?", "Name a fruit.", "Say goodbye.", "Name an animal.",
                                   "What is the opposite of hot?", "Name a month."])]  # 9: two chunks of 8 + 1
    rows.append(_request("too-long", ask("x", max_tokens=100_000), url="/v1/chat/completions"))
    uploaded = client.files.create(file=("chat.jsonl", io.BytesIO(_jsonl(rows))), purpose="batch")
    batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h")
    done = _wait(client, batch.id, timeout=240)
    assert done.status == "completed", done
    assert (done.request_counts.total, done.request_counts.completed, done.request_counts.failed) == (10, 9, 1)
    out = {o["custom_id"]: o for o in map(json.loads, client.files.content(done.output_file_id).text.splitlines())}
    assert sorted(out) == sorted(f"q{i}" for i in range(9))
    for row in rows[:3]:  # the same answer as the API's (temperature 0)
        body = out[row["custom_id"]]["response"]["body"]
        direct = client.chat.completions.create(**row["body"])
        assert body["object"] == "chat.completion" and body["model"] == GEN_MODEL
        assert body["choices"][0]["message"]["content"] == direct.choices[0].message.content
        assert body["usage"]["completion_tokens"] == direct.usage.completion_tokens
    (err,) = map(json.loads, client.files.content(done.error_file_id).text.splitlines())
    assert err["custom_id"] == "too-long" and err["error"]["code"] == "over_token_budget"


def test_a_streamed_or_malformed_chat_request_refuses_the_batch(client):
    for body, words in (({"model": GEN_MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": True},
                         "body.stream"),
                        ({"model": GEN_MODEL, "messages": "hi"}, "body.messages")):
        uploaded = client.files.create(file=("c.jsonl", io.BytesIO(_jsonl([_request("a", body, "/v1/chat/completions")]))),
                                       purpose="batch")
        with pytest.raises(openai.BadRequestError) as err:
            client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h")
        assert "line 1" in err.value.body["message"] and words in err.value.body["message"]


def test_batches_and_files_are_visible_only_to_their_key(client, local_cirrus):
    uploaded = client.files.create(file=("one.jsonl", io.BytesIO(_jsonl([_request("x", {"input": "hi"})]))),
                                   purpose="batch")
    batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/embeddings", completion_window="24h")
    created = local_cirrus.cli("keys", "create", "--name", "other-team")
    assert created.returncode == 0, created.stderr
    other = client.with_options(api_key=json.loads(created.stdout)["api_key"])
    with pytest.raises(openai.NotFoundError):
        other.batches.retrieve(batch.id)
    with pytest.raises(openai.NotFoundError):
        other.files.retrieve(uploaded.id)
    assert batch.id not in [b.id for b in other.batches.list().data]
    _wait(client, batch.id)


def test_cancel_stops_a_batch_and_a_finished_one_cannot_be_cancelled(client):
    rows = [_request(f"c{i}", {"input": f"text {i}"}) for i in range(5)]
    uploaded = client.files.create(file=("c.jsonl", io.BytesIO(_jsonl(rows))), purpose="batch")
    batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/embeddings", completion_window="24h")
    cancelled = client.batches.cancel(batch.id)
    # Either it was stopped, or the pipeline finished it before the cancel arrived.
    assert cancelled.status in ("cancelled", "completed"), cancelled
    if cancelled.status == "cancelled":
        assert cancelled.output_file_id is None and _wait(client, batch.id).status == "cancelled"
        assert client.batches.cancel(batch.id).status == "cancelled"  # asking twice is fine
    finished = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/embeddings", completion_window="24h")
    assert _wait(client, finished.id).status == "completed"
    with pytest.raises(openai.ConflictError):
        client.batches.cancel(finished.id)


def _upload(form: dict, data: bytes) -> requests.Response:
    return requests.post(form["url"], data=form["fields"], files={"file": ("batch.jsonl", data)}, timeout=60)


def test_large_files_go_through_a_presigned_upload_form(client, local_cirrus):
    r = local_cirrus.post("/v1/files", {"purpose": "batch", "filename": "big.jsonl"})
    assert r.status_code == 201, r.text
    body = r.json()
    form, limit = body["upload"], local_cirrus.state["batch_max_file_bytes"]
    policy = json.loads(base64.b64decode(form["fields"]["policy"]))
    assert form["method"] == "POST" and form["max_bytes"] == limit and form["expires_in"] == 900
    assert ["content-length-range", 1, limit] in policy["conditions"]
    assert {"key": form["fields"]["key"]} in policy["conditions"] and body["id"] in form["fields"]["key"]
    rows = [_request(f"p{i}", {"input": f"presigned text {i}"}) for i in range(3)]
    assert _upload(form, _jsonl(rows)).status_code == 204
    assert client.files.retrieve(body["id"]).bytes == len(_jsonl(rows))
    batch = client.batches.create(input_file_id=body["id"], endpoint="/v1/embeddings", completion_window="24h")
    done = _wait(client, batch.id)
    assert done.status == "completed" and done.request_counts.completed == 3


def test_a_batch_of_an_uploaded_file_over_the_limit_is_413_and_the_file_is_deleted(client, local_cirrus):
    body = local_cirrus.post("/v1/files", {"purpose": "batch"}).json()
    limit = local_cirrus.state["batch_max_file_bytes"]
    row = _jsonl([_request("big", {"input": "x" * 1000})])
    # moto stores what S3 would refuse by the form's content-length-range (400 EntityTooLarge).
    assert _upload(body["upload"], row * (limit // len(row) + 1)).status_code == 204
    r = local_cirrus.post("/v1/batches", {"input_file_id": body["id"], "endpoint": "/v1/embeddings",
                                          "completion_window": "24h"})
    assert r.status_code == 413 and r.json()["error"]["code"] == "file_too_large", r.text
    assert f"the limit is {limit}" in r.json()["error"]["message"]
    listed = local_cirrus.aws("s3").list_object_versions(Bucket=local_cirrus.state["buckets"]["Data"],
                                                         Prefix=body["upload"]["fields"]["key"])
    assert listed.get("Versions", []) == [], listed
    assert client.files.retrieve(body["id"]).status == "error"
    again = local_cirrus.post("/v1/batches", {"input_file_id": body["id"], "endpoint": "/v1/embeddings",
                                              "completion_window": "24h"})
    assert again.status_code == 400 and again.json()["error"]["code"] == "file_rejected", again.text
