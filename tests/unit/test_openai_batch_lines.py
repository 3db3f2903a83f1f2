"""OpenAI batch input lines -> pipeline lines -> OpenAI batch output lines (functions/core/batch/openai_lines.py)."""
from __future__ import annotations

import base64
import json

import numpy as np
import pytest

from functions.core.batch import openai_lines as ol


def _line(**over) -> bytes:
    obj = {"custom_id": "a", "method": "POST", "url": "/v1/embeddings", "body": {"model": "m", "input": "hi"}}
    return json.dumps({**obj, **over}).encode()


@pytest.mark.parametrize(("raw", "why"), [
    (b"{nope", "not valid JSON"),
    (b"[1]", "JSON object"),
    (b"[" * 100_000 + b"]" * 100_000, "not valid JSON"),   # past the parser's recursion limit
    (_line(custom_id=""), "custom_id"),
    (_line(method="GET"), "method must be POST"),
    (_line(url="/v1/chat/completions"), "url must be"),   # not the batch's endpoint
    (_line(extra=1), "unknown field"),
    (_line(body={"model": "m", "input": []}), "body.input"),
    (_line(body={"model": "m", "input": "x", "dimensions": 384}), "dimensions"),
])
def test_bad_request_lines_are_refused_naming_the_problem(raw, why):
    with pytest.raises(ol.BadLine) as err:
        ol.parse_request(7, raw, "/v1/embeddings", "default")
    assert str(err.value).startswith("line 7:") and why in str(err.value)


def test_a_request_with_several_inputs_comes_back_as_one_output_line_in_order():
    req = ol.parse_request(1, _line(custom_id="r", body={"input": ["one", "two"], "encoding_format": "base64"}),
                           "/v1/embeddings", "default-model")
    lines = [json.loads(x) for x in ol.pipeline_lines(req)]
    assert [(x["input"], x["model"], x["task"]) for x in lines] == [("one", "default-model", "embed"),
                                                                    ("two", "default-model", "embed")]
    results = [json.dumps({"line": i + 1, "id": x["id"], "model": "default-model", "embedding": [float(i), 1.0],
                           "tokens": 3}).encode() for i, x in enumerate(lines)]
    (out,) = [json.loads(x) for x in ol.output_lines("batch_x", results, {})]
    assert out["custom_id"] == "r" and out["error"] is None and out["response"]["status_code"] == 200
    data = out["response"]["body"]["data"]
    assert [d["index"] for d in data] == [0, 1]
    assert np.frombuffer(base64.b64decode(data[1]["embedding"]), "<f4").tolist() == [1.0, 1.0]
    assert out["response"]["body"]["usage"] == {"prompt_tokens": 6, "total_tokens": 6}


def test_a_request_with_one_failed_input_is_one_error_line_and_no_output_line():
    req = ol.parse_request(1, _line(custom_id="r", body={"input": ["one", "two"]}), "/v1/embeddings", "m")
    ids = [json.loads(x)["id"] for x in ol.pipeline_lines(req)]
    results = [json.dumps({"line": 1, "id": ids[0], "model": "m", "embedding": [0.0]}).encode()]
    errors = [json.dumps({"line": 2, "id": ids[1], "error": {"code": "input_too_long", "message": "long"}}).encode()]
    failed = ol.failed_requests(errors)
    assert list(ol.output_lines("batch_x", results, failed)) == []
    (err,) = [json.loads(x) for x in ol.error_lines("batch_x", failed)]
    assert err["custom_id"] == "r" and err["error"] == {"code": "input_too_long", "message": "long"}
    assert err["response"]["status_code"] == 400


def _chat_line(**body) -> bytes:
    return _line(url=ol.CHAT, body={"model": "g", "messages": [{"role": "user", "content": "hi"}], **body})


def test_a_chat_request_is_one_pipeline_chat_line_and_its_response_comes_back_as_the_body():
    req = ol.parse_request(3, _chat_line(max_tokens=5, temperature=0), ol.CHAT, "default")
    (line,) = [json.loads(x) for x in ol.pipeline_lines(req)]
    assert (line["model"], line["task"]) == ("g", "chat") and "input" not in line
    assert line["body"] == {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 5, "temperature": 0}
    answer = {"object": "chat.completion", "model": "g", "choices": [{"index": 0, "message": {"role": "assistant",
              "content": "hello"}, "finish_reason": "stop"}], "usage": {"prompt_tokens": 3, "completion_tokens": 1}}
    result = json.dumps({"line": 1, "id": line["id"], "model": "g", "response": answer}).encode()
    (out,) = [json.loads(x) for x in ol.output_lines("batch_x", [result], {})]
    assert out["custom_id"] == "a" and out["response"]["body"] == answer


@pytest.mark.parametrize(("raw", "why"), [
    (_chat_line(stream=True), "body.stream"),
    (_chat_line(max_tokens=0), "body.max_tokens"),
    (_line(url=ol.CHAT, body={"model": "g", "input": "hi"}), "body.messages"),
    (_line(url=ol.CHAT, body={"messages": [{"role": "user", "content": "hi"}]}), "body.model"),
])
def test_bad_chat_requests_are_refused_naming_the_field(raw, why):
    with pytest.raises(ol.BadLine) as err:
        ol.parse_request(2, raw, ol.CHAT, "default")
    assert str(err.value).startswith("line 2:") and why in str(err.value)
