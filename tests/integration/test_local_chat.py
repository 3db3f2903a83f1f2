"""Chat completions through the local system: light (ONNX in the api Lambda) and heavy (SageMaker stand-in).

The generator is smollm2-135m-instruct, the dev stage's real chat model: both routes must answer a
factual question correctly with the official openai client, besides the protocol and the routing.
"""
from __future__ import annotations

import time

import pytest

GEN_MODEL = "smollm2-135m-instruct"
FRANCE = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def openai_client(local_cirrus):
    from openai import OpenAI

    if GEN_MODEL not in local_cirrus.state["models"]:
        pytest.fail(f"{GEN_MODEL} was not published by `up` (models: {sorted(local_cirrus.state['models'])})")
    return OpenAI(base_url=local_cirrus.url + "/v1", api_key=local_cirrus.key, max_retries=0, timeout=60)


def _chat(client, model=GEN_MODEL, **kw):
    raw = client.chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": "Say hello"}], **kw)
    return raw.parse(), raw.headers


@pytest.fixture(scope="module")
def heavy_model(local_cirrus):
    if not local_cirrus.state.get("heavy_url"):
        pytest.fail("the heavy stand-in is not running: " + "; ".join(local_cirrus.state.get("notes", [])))
    return local_cirrus.state["heavy_model"]


def test_the_light_route_answers_the_france_question_with_paris(openai_client):
    raw = openai_client.chat.completions.with_raw_response.create(model=GEN_MODEL, messages=FRANCE, temperature=0,
                                                                  max_tokens=32)
    out = raw.parse()
    assert raw.headers["x-cirrus-route"].startswith("light")
    text = out.choices[0].message.content
    assert "Paris" in text and text[:1].isupper() and " " in text.strip(), text


def test_the_heavy_route_answers_the_france_question_with_paris(openai_client, heavy_model):
    raw = openai_client.chat.completions.with_raw_response.create(model=heavy_model, messages=FRANCE,
                                                                  temperature=0, max_tokens=32)
    assert raw.headers["x-cirrus-route"].startswith("heavy")
    text = raw.parse().choices[0].message.content
    assert "Paris" in text and " " in text.strip(), text


def test_openai_client_sampling_fields_on_the_light_path(openai_client):
    out = openai_client.chat.completions.create(model=GEN_MODEL, messages=FRANCE, max_completion_tokens=6, n=2,
                                                seed=11, temperature=0.8, presence_penalty=0.5,
                                                frequency_penalty=0.5, logprobs=True, top_logprobs=2,
                                                user="it-test", stop=["\n\n"])
    assert len(out.choices) == 2
    for c in out.choices:
        assert 1 <= len(c.logprobs.content) <= 6 and all(len(t.top_logprobs) == 2
                                                                         for t in c.logprobs.content)
    assert out.usage.completion_tokens <= 12


def test_tools_on_the_light_route_are_refused_by_name(openai_client):
    from openai import UnprocessableEntityError

    with pytest.raises(UnprocessableEntityError) as exc:
        openai_client.chat.completions.create(model=GEN_MODEL, messages=FRANCE, max_tokens=4, tools=[
            {"type": "function", "function": {"name": "capital", "parameters": {"type": "object"}}}])
    err = exc.value.body
    assert err["param"] == "tools" and "heavy route" in err["message"]


def test_openai_client_chat_completion_on_the_light_path(openai_client):
    out, headers = _chat(openai_client, max_tokens=8, temperature=0)
    assert headers["x-cirrus-route"].startswith("light")
    assert out.object == "chat.completion" and out.model == GEN_MODEL
    msg = out.choices[0].message
    assert msg.role == "assistant" and isinstance(msg.content, str)
    assert 1 <= out.usage.completion_tokens <= 8
    assert out.choices[0].finish_reason in ("stop", "length")
    again, _ = _chat(openai_client, max_tokens=8, temperature=0)
    assert again.choices[0].message.content == msg.content  # greedy is deterministic


def test_the_heavy_model_is_served_by_the_sagemaker_stand_in(openai_client, heavy_model):
    out, headers = _chat(openai_client, model=heavy_model, max_tokens=12, temperature=0)
    assert headers["x-cirrus-route"].startswith("heavy")
    assert out.object == "chat.completion" and out.choices[0].message.role == "assistant"
    assert 1 <= out.usage.completion_tokens <= 12
    # Same weights as the light model, run by the same ONNX loop: greedy output agrees.
    light, _ = _chat(openai_client, max_tokens=12, temperature=0)
    assert out.choices[0].message.content == light.choices[0].message.content


def test_over_the_light_token_budget_is_refused_clearly(local_cirrus):
    r = local_cirrus.post("/v1/chat/completions", {"model": GEN_MODEL, "max_tokens": 5000,
                                                   "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code in (400, 422) and r.json()["error"]["param"] == "max_tokens"


def test_async_generation_through_the_stand_in_and_s3(local_cirrus, heavy_model):
    r = local_cirrus.post("/v1/chat/completions", {"model": heavy_model, "max_tokens": 16,
                                                   "messages": [{"role": "user", "content": "hi"}]},
                          headers={"Prefer": "respond-async"})
    assert r.status_code == 202, r.text
    status_url = r.json()["status_url"]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        job = local_cirrus.get(status_url).json()
        if job["status"] != "in_progress":
            break
        time.sleep(0.5)
    assert job["status"] == "succeeded", job
    assert job["result"]["choices"][0]["message"]["role"] == "assistant"


def test_bad_chat_parameters_are_openai_style_errors(local_cirrus):
    for body in ({"model": GEN_MODEL, "messages": []},
                 {"model": GEN_MODEL, "messages": [{"role": "wizard", "content": "x"}]},
                 {"model": GEN_MODEL, "max_tokens": -1, "messages": [{"role": "user", "content": "x"}]}):
        r = local_cirrus.post("/v1/chat/completions", body)
        assert r.status_code in (400, 422), (body, r.status_code)
        assert r.json()["error"]["type"] == "invalid_request_error"
