"""``stream=True`` with the official ``openai`` client against the local system over HTTP, light and heavy.

Light: the generation function's ONNX loop; heavy: the SageMaker stand-in through
``invoke_endpoint_with_response_stream``. The stand-in (another process) takes faults and reports
its open and abandoned streams over HTTP, which is how the tests see the server side.
"""
from __future__ import annotations

import time

import pytest
import requests

GEN_MODEL = "smollm2-135m-instruct"
USER = [{"role": "user", "content": "Tell me a long story"}]


@pytest.fixture(scope="module")
def client(local_cirrus):
    from openai import OpenAI

    return OpenAI(base_url=local_cirrus.url + "/v1", api_key=local_cirrus.key, max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def heavy(local_cirrus):
    if not local_cirrus.state.get("heavy_url"):
        pytest.fail("the heavy stand-in is not running: " + "; ".join(local_cirrus.state.get("notes", [])))
    return local_cirrus.state["heavy_model"], local_cirrus.state["heavy_url"]


def _faults(heavy_url: str, *faults: str) -> None:
    r = requests.post(heavy_url + "/_faults", json={"faults": list(faults)}, timeout=10)
    assert r.status_code == 200, r.text


def _ping(heavy_url: str) -> dict:
    return requests.get(heavy_url + "/ping", timeout=10).json()


def _stream_text(stream) -> tuple[str, list]:
    chunks = list(stream)
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices), chunks


@pytest.mark.parametrize("route", ["light", "heavy"])
def test_streamed_deltas_equal_the_buffered_answer_with_role_first_and_usage_last(client, heavy, route):
    model = GEN_MODEL if route == "light" else heavy[0]
    kw = {"model": model, "messages": USER, "max_tokens": 40, "temperature": 0}
    buffered = client.chat.completions.create(**kw)
    stream = client.chat.completions.create(**kw, stream=True, stream_options={"include_usage": True})
    assert stream.response.headers["content-type"].startswith("text/event-stream")
    assert stream.response.headers["x-cirrus-route"].startswith(route)
    text, chunks = _stream_text(stream)
    assert text == buffered.choices[0].message.content
    assert chunks[0].choices[0].delta.role == "assistant"
    with_choices = [c for c in chunks if c.choices]
    assert with_choices[-1].choices[0].finish_reason == buffered.choices[0].finish_reason
    assert all(c.choices[0].finish_reason is None for c in with_choices[:-1])
    assert len(with_choices) > 3
    usage = chunks[-1]
    assert usage.choices == [] and usage.usage.model_dump() == {
        **buffered.usage.model_dump(), **{k: v for k, v in usage.usage.model_dump().items() if v is None}}
    assert usage.usage.completion_tokens == buffered.usage.completion_tokens
    assert usage.usage.prompt_tokens == buffered.usage.prompt_tokens


def test_completions_stream_on_the_light_route(client):
    kw = {"model": GEN_MODEL, "prompt": "Once upon a time", "max_tokens": 20, "temperature": 0}
    buffered = client.completions.create(**kw)
    chunks = list(client.completions.create(**kw, stream=True))
    assert "".join(c.choices[0].text for c in chunks) == buffered.choices[0].text
    assert chunks[-1].choices[0].finish_reason == buffered.choices[0].finish_reason


def test_the_first_chunk_arrives_while_the_endpoint_is_still_generating(client, heavy):
    model, url = heavy
    _faults(url, "slow_tokens:0.05")  # a GPU's pace: the 30 tokens take ~1.5 s
    stream = client.chat.completions.create(model=model, messages=USER, max_tokens=30, temperature=0, stream=True)
    it = iter(stream)
    first = next(it)
    while not (first.choices and first.choices[0].delta.content):
        first = next(it)
    assert _ping(url)["streams_open"] == 1  # the answer is not finished: this chunk came before the last
    rest = list(it)
    assert rest and rest[-1].choices[0].finish_reason is not None
    assert _ping(url)["streams_open"] == 0


def test_closing_the_stream_stops_the_generation_and_the_system_stays_healthy(client, heavy, local_cirrus):
    model, url = heavy
    before = len(_ping(url)["abandoned"])
    _faults(url, "slow_tokens:0.05")
    stream = client.chat.completions.create(model=model, messages=USER, max_tokens=200, temperature=0, stream=True)
    received = 0
    for chunk in stream:
        received += 1
        if received == 4:
            break
    stream.close()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and len(_ping(url)["abandoned"]) == before:
        time.sleep(0.05)
    abandoned = _ping(url)["abandoned"]
    assert len(abandoned) == before + 1, abandoned
    # The model stopped a few tokens after the client left, not at 200 nor at its natural end (147
    # tokens for this prompt). Each hop (gateway, generation function, stand-in) notices a closed
    # connection on its next write, about two tokens later, and the stand-in runs one token ahead.
    assert abandoned[-1] <= received + 12, abandoned
    # The system stays healthy: both routes answer in full afterwards.
    for m in (model, GEN_MODEL):
        text, chunks = _stream_text(client.chat.completions.create(model=m, messages=USER, max_tokens=8,
                                                                   temperature=0, stream=True))
        assert chunks[-1].choices[0].finish_reason in ("stop", "length")
    assert local_cirrus.get("/health").status_code == 200


def test_a_light_stream_closed_early_leaves_the_system_healthy(client, local_cirrus):
    stream = client.chat.completions.create(model=GEN_MODEL, messages=USER, max_tokens=200, stream=True)
    next(iter(stream))
    stream.close()
    out = client.chat.completions.create(model=GEN_MODEL, messages=USER, max_tokens=8, temperature=0)
    assert out.choices[0].finish_reason in ("stop", "length")


def test_a_bad_streamed_request_is_a_plain_json_error(client):
    from openai import UnprocessableEntityError

    with pytest.raises(UnprocessableEntityError) as err:
        client.chat.completions.create(model=GEN_MODEL, messages=USER, max_tokens=5000, stream=True)
    assert err.value.body["code"] == "over_token_budget"


def test_a_failure_mid_stream_reaches_the_client_as_an_error(client, heavy):
    from openai import APIError

    model, url = heavy
    _faults(url, "break_stream:3")
    stream = client.chat.completions.create(model=model, messages=USER, max_tokens=30, temperature=0, stream=True)
    got = []
    with pytest.raises(APIError) as err:
        for chunk in stream:
            got.append(chunk)
    assert got and err.value.code == "endpoint_error" and err.value.type == "server_error"


def test_curl_shows_the_stream_as_server_sent_events(local_cirrus):
    import shutil
    import subprocess

    if not shutil.which("curl"):
        pytest.skip("curl is not installed")
    out = subprocess.run(
        ["curl", "-sN", local_cirrus.url + "/v1/chat/completions", "-H", f"Authorization: Bearer {local_cirrus.key}",
         "-H", "Content-Type: application/json",
         "-d", '{"model": "%s", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8, "stream": true}'
         % GEN_MODEL], capture_output=True, text=True, timeout=60)
    events = [e for e in out.stdout.split("\n\n") if e]
    assert all(e.startswith("data: ") for e in events) and events[-1] == "data: [DONE]", out.stdout[:500]
