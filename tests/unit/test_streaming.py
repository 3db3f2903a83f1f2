"""``stream: true`` through the streaming handler (functions/handlers/generation.py) on real REST events.

The handler's output is read as API Gateway's STREAM mode reads it (prelude, 8 NULs, payload) and
the payload as the ``openai`` client reads it (SSE ``data:`` events). Light path: the real
cirrus-tiny-gpt2 bundle; heavy path: the production heavy client against the local SageMaker
stand-in over loopback (``invoke_endpoint_with_response_stream``, event-stream framing).
"""
from __future__ import annotations

import json

import pytest

from functions.core.generation import heavy as heavy_mod
from functions.core.generation.breaker import reset_breakers
from functions.core.inference.generator import SamplingParams
from functions.core.http.stream import read_prelude
from functions.core.inference.model_store import get_model
from generation_support import TINY
from light_support import api_event, assert_error, call_api, lambda_context
from local.heavy_server import HeavyServer

USER = [{"role": "user", "content": "Where is my order?"}]


@pytest.fixture
def gen_api(env, tiny_bundle):
    reset_breakers()
    env(model_dir=str(tiny_bundle.parent), models=[TINY], generation_models=[TINY], light_max_tokens=64,
        sync_max_tokens=64)
    yield env
    reset_breakers()


def stream_call(body, path="/v1/chat/completions", headers=None):
    """The handler's iterator, the prelude it starts with, and the payload bytes after it."""
    from functions.handlers.generation import handler

    event = api_event("POST", path, body)
    for k, v in (headers or {}).items():
        event["headers"][k] = v
        event.setdefault("multiValueHeaders", {})[k] = [v]
    chunks = handler(event, lambda_context("cirrus-generation"))
    prelude, rest = read_prelude(chunks)
    return chunks, prelude, rest


def events(payload: bytes) -> list:
    """The SSE ``data`` values, JSON-decoded except the final ``[DONE]``."""
    out = []
    for block in payload.decode().split("\n\n"):
        if not block:
            continue
        assert block.startswith("data: "), block
        data = block[len("data: "):]
        out.append(data if data == "[DONE]" else json.loads(data))
    return out


def streamed(body, path="/v1/chat/completions", headers=None):
    chunks, prelude, rest = stream_call(body, path, headers)
    return prelude, events(rest + b"".join(chunks))


def text_of(evs, chat=True) -> str:
    return "".join((e["choices"][0]["delta"].get("content") or "") if chat else e["choices"][0]["text"]
                   for e in evs if isinstance(e, dict) and e.get("choices"))


# --- light --------------------------------------------------------------------------------------------
def test_light_stream_is_openai_chunks_role_first_finish_last_then_done(gen_api, tiny_generator):
    prelude, evs = streamed({"model": TINY, "messages": USER, "max_tokens": 24, "temperature": 0, "stream": True})
    assert prelude["statusCode"] == 200
    assert prelude["headers"]["Content-Type"].startswith("text/event-stream")
    assert prelude["headers"]["x-cirrus-route"].startswith("light; ")
    assert evs[-1] == "[DONE]"
    chunks = evs[:-1]
    assert all(c["object"] == "chat.completion.chunk" and c["model"] == TINY for c in chunks)
    assert len({c["id"] for c in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert all("role" not in c["choices"][0]["delta"] for c in chunks[1:])
    assert [c["choices"][0]["finish_reason"] for c in chunks[:-1]] == [None] * (len(chunks) - 1)
    want = tiny_generator.chat([("user", "Where is my order?")], SamplingParams(max_new_tokens=24, temperature=0.0))[0]
    assert chunks[-1]["choices"][0] == {"index": 0, "delta": {}, "logprobs": None,
                                        "finish_reason": want.finish_reason}
    assert len(chunks) > 3  # text came in several deltas, not one
    assert text_of(chunks) == want.text


def test_streamed_deltas_equal_the_buffered_answer_and_usage_matches(gen_api):
    req = {"model": TINY, "messages": USER, "max_tokens": 30, "temperature": 0, "stop": ["ab", "the"]}
    status, body, _ = call_api(api_event("POST", "/v1/chat/completions", req))
    assert status == 200, body
    _, evs = streamed({**req, "stream": True, "stream_options": {"include_usage": True}})
    assert text_of(evs) == body["choices"][0]["message"]["content"]
    usage_chunk = evs[-2]
    assert usage_chunk["choices"] == [] and usage_chunk["usage"] == body["usage"]
    assert all(e["usage"] is None for e in evs[:-2])  # as OpenAI: null on every other chunk
    assert evs[-3]["choices"][0]["finish_reason"] == body["choices"][0]["finish_reason"]


def test_completions_stream_uses_text_completion_chunks(gen_api, tiny_generator):
    _, evs = streamed({"model": TINY, "prompt": "The quick brown fox", "max_tokens": 12, "temperature": 0,
                       "stream": True}, path="/v1/completions")
    want = tiny_generator.complete("The quick brown fox", SamplingParams(max_new_tokens=12, temperature=0.0))[0]
    assert evs[-1] == "[DONE]" and all(e["object"] == "text_completion" for e in evs[:-1])
    assert text_of(evs, chat=False) == want.text


@pytest.mark.parametrize("body,status,code", [
    ({"model": TINY, "messages": USER, "stream": True, "max_tokens": 0}, 422, None),
    ({"model": TINY, "messages": USER, "stream_options": {"include_usage": True}}, 422, None),
    ({"model": TINY, "messages": USER, "stream": True, "n": 2}, 422, None),        # one choice per stream
    ({"model": TINY, "messages": USER, "stream": True, "logprobs": True}, 422, None),  # not streamed
    ({"model": TINY, "messages": USER, "stream": True,                                # tool calls: not streamed
      "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]}, 422, None),
    ({"model": "gpt-9", "messages": USER, "stream": True}, 404, "model_not_found"),
    ({"model": TINY, "messages": [{"role": "user", "content": "order " * 3000}], "stream": True, "max_tokens": 8}, 400,
     "context_length_exceeded"),
    ({"model": TINY, "messages": USER, "stream": True, "max_tokens": 500}, 422, "over_token_budget"),
])
def test_errors_before_the_first_byte_are_plain_json_with_their_status(gen_api, body, status, code):
    chunks, prelude, rest = stream_call(body)
    payload = json.loads(rest + b"".join(chunks))
    assert prelude["statusCode"] == status, payload
    assert prelude["headers"]["Content-Type"] == "application/json"
    assert_error(status, payload, status, code)


def test_stream_and_respond_async_together_are_refused(gen_api):
    chunks, prelude, rest = stream_call({"model": TINY, "messages": USER, "stream": True},
                                        headers={"Prefer": "respond-async"})
    assert_error(prelude["statusCode"], json.loads(rest + b"".join(chunks)), 422, "stream_async_conflict")


def test_closing_the_stream_stops_the_generator_within_a_token(gen_api, monkeypatch):
    model = get_model(TINY)
    steps = []
    real_step = model.session.run_with_iobinding  # one call per forward pass (prefill, then one per token)
    monkeypatch.setattr(model.session, "run_with_iobinding", lambda *a, **k: steps.append(1) or real_step(*a, **k))
    chunks, prelude, _ = stream_call({"model": TINY, "messages": USER, "max_tokens": 64, "temperature": 0,
                                      "stream": True})
    assert prelude["statusCode"] == 200
    read = [next(chunks) for _ in range(4)]  # role chunk + 3 text chunks
    assert all(r.startswith(b"data: ") for r in read)
    steps_when_closed = len(steps)
    assert 3 <= steps_when_closed < 64  # the prompt pass and a few tokens ran, not the whole answer
    chunks.close()  # what the gateway does when the client's connection is gone
    with pytest.raises(StopIteration):
        next(chunks)
    assert len(steps) == steps_when_closed  # no model step after the close


def test_buffered_handler_answers_a_stream_request_with_the_same_events_at_once(gen_api):
    from functions.handlers.api import handler

    req = {"model": TINY, "messages": USER, "max_tokens": 10, "temperature": 0, "stream": True}
    resp = handler(api_event("POST", "/v1/chat/completions", req), lambda_context("cirrus-generation"))
    assert resp["statusCode"] == 200
    evs = events(resp["body"].encode())
    _, streamed_evs = streamed(req)
    assert evs[-1] == "[DONE]" and text_of(evs) == text_of(streamed_evs)


def test_buffered_request_on_the_streaming_handler_is_the_json_answer(gen_api):
    req = {"model": TINY, "messages": USER, "max_tokens": 10, "temperature": 0}
    chunks, prelude, rest = stream_call(req)
    body = json.loads(rest + b"".join(chunks))
    assert prelude["statusCode"] == 200 and body["object"] == "chat.completion"
    assert body["choices"] == call_api(api_event("POST", "/v1/chat/completions", req))[1]["choices"]


# --- heavy ------------------------------------------------------------------------------------------
@pytest.fixture
def standin(tiny_bundle, aws_env, monkeypatch):
    srv = HeavyServer(tiny_bundle, endpoint="cirrus-heavy").start()
    monkeypatch.setenv("AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME", srv.url)
    heavy_mod.reset_clients()
    yield srv
    srv.stop()
    heavy_mod.reset_clients()


@pytest.fixture
def heavy_api(gen_api, standin):
    gen_api(heavy_models=["big-llm"], heavy_endpoint_name="cirrus-heavy", heavy_max_attempts=3,
            heavy_breaker_failures=3, heavy_breaker_reset_s=60)
    return standin


def test_heavy_stream_turns_tgi_events_into_openai_chunks(heavy_api):
    req = {"model": "big-llm", "messages": USER, "max_tokens": 20, "temperature": 0}
    status, body, _ = call_api(api_event("POST", "/v1/chat/completions", req))
    assert status == 200, body
    prelude, evs = streamed({**req, "stream": True, "stream_options": {"include_usage": True}})
    assert prelude["statusCode"] == 200 and prelude["headers"]["x-cirrus-route"].startswith("heavy; ")
    assert evs[-1] == "[DONE]"
    assert evs[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert all("role" not in e["choices"][0]["delta"] for e in evs[1:-2])  # TGI repeats it; Cirrus does not
    assert all(e["model"] == "big-llm" and e["id"] == evs[0]["id"] for e in evs[:-1])
    assert text_of(evs) == body["choices"][0]["message"]["content"]
    assert evs[-3]["choices"][0]["finish_reason"] == body["choices"][0]["finish_reason"]
    assert evs[-2]["usage"] == body["usage"]


def test_heavy_stream_over_the_sync_budget_stays_synchronous_never_async(heavy_api):
    prelude, evs = streamed({"model": "big-llm", "messages": USER, "max_tokens": 100, "stream": True})
    assert prelude["headers"]["x-cirrus-route"].startswith("heavy; ")
    assert evs[-1] == "[DONE]"


def test_heavy_faults_before_the_first_chunk_are_retried(heavy_api):
    heavy_api.inject("throttle", "error")
    calls = heavy_api.calls
    prelude, evs = streamed({"model": "big-llm", "messages": USER, "max_tokens": 8, "stream": True})
    assert prelude["statusCode"] == 200 and evs[-1] == "[DONE]"
    assert heavy_api.calls - calls == 3


def test_heavy_down_is_a_json_503_then_the_breaker_answers_without_calling(heavy_api):
    heavy_api.down = True
    chunks, prelude, rest = stream_call({"model": "big-llm", "messages": USER, "stream": True})
    assert_error(prelude["statusCode"], json.loads(rest + b"".join(chunks)), 503, "endpoint_error")
    calls = heavy_api.calls
    chunks, prelude, rest = stream_call({"model": "big-llm", "messages": USER, "stream": True})
    assert_error(prelude["statusCode"], json.loads(rest + b"".join(chunks)), 503, "endpoint_unavailable")
    assert heavy_api.calls == calls


def test_a_container_refusal_is_a_json_422(heavy_api):
    long = [{"role": "user", "content": "order " * 3000}]
    chunks, prelude, rest = stream_call({"model": "big-llm", "messages": long, "stream": True})
    assert_error(prelude["statusCode"], json.loads(rest + b"".join(chunks)), 422, "model_refused")


def test_heavy_failure_after_the_first_byte_ends_with_an_error_event(heavy_api):
    heavy_api.inject("break_stream:3")
    # Seeded sampling: the random-weight fixture's greedy answer can end before the break.
    prelude, evs = streamed({"model": "big-llm", "messages": USER, "max_tokens": 20, "temperature": 1.0,
                             "seed": 7, "stream": True})
    assert prelude["statusCode"] == 200
    assert "[DONE]" not in evs
    assert evs[-1]["error"]["code"] == "endpoint_error" and evs[-1]["error"]["type"] == "server_error"
    assert text_of(evs[:-1])  # the tokens before the failure were delivered


def test_closing_a_heavy_stream_stops_the_endpoints_generation(heavy_api):
    heavy_api.inject("slow_tokens:0.02")
    chunks, prelude, _ = stream_call({"model": "big-llm", "messages": USER, "max_tokens": 200,
                                      "temperature": 1.0, "seed": 7, "stream": True})
    [next(chunks) for _ in range(3)]
    chunks.close()
    for _ in range(100):  # the stand-in notices on its next write
        if heavy_api.abandoned:
            break
        __import__("time").sleep(0.05)
    assert heavy_api.abandoned and heavy_api.abandoned[0] < 20, heavy_api.abandoned


def test_an_endpoint_silent_past_the_read_timeout_is_a_json_504_before_the_first_byte(heavy_api, gen_api):
    gen_api(heavy_read_timeout_s=0.5, heavy_max_attempts=1)
    heavy_mod.reset_clients()
    heavy_api.inject("slow_tokens:1.5")
    chunks, prelude, rest = stream_call({"model": "big-llm", "messages": USER, "max_tokens": 4, "stream": True})
    assert_error(prelude["statusCode"], json.loads(rest + b"".join(chunks)), 504, "upstream_timeout")
