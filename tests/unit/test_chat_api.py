"""POST /v1/chat/completions and /v1/completions through the Lambda handler on real REST events.

Light path: the real cirrus-tiny-gpt2 bundle. Heavy and async paths: the production heavy client
against the local SageMaker stand-in (loopback HTTP), async job state in moto's S3 (in-process).
"""
from __future__ import annotations

import copy
import json
import time

import boto3
import pytest

from functions.core.generation import heavy as heavy_mod
from functions.core.generation.breaker import reset_breakers
from functions.core.inference.generator import SamplingParams
from generation_support import TINY
from light_support import api_event, assert_error, call_api
from local.heavy_server import HeavyServer
from functions.core.contract import JOBS_GENERATION_FAILURE_PREFIX, JOBS_GENERATION_OUTPUT_PREFIX

USER = [{"role": "user", "content": "Where is my order?"}]


@pytest.fixture
def gen_api(env, tiny_bundle):
    reset_breakers()
    env(model_dir=str(tiny_bundle.parent), models=[TINY], generation_models=[TINY], light_max_tokens=32,
        sync_max_tokens=64)
    yield env
    reset_breakers()


def as_key(event, key_id):
    """The event as the TOKEN authorizer passes it on for API key ``key_id``."""
    event = copy.deepcopy(event)
    event["requestContext"]["authorizer"].update(principalId=key_id, key_id=key_id)
    return event


def chat(body, headers=None, path="/v1/chat/completions", key_id=None):
    event = api_event("POST", path, body)
    for k, v in (headers or {}).items():
        event["headers"][k] = v
        event.setdefault("multiValueHeaders", {})[k] = [v]
    return call_api(as_key(event, key_id) if key_id else event)


def test_chat_completion_on_the_light_path_matches_the_generator(gen_api, tiny_generator):
    status, body, headers = chat({"model": TINY, "messages": USER, "max_tokens": 12, "temperature": 0})
    assert status == 200, body
    [want] = tiny_generator.chat([("user", "Where is my order?")], SamplingParams(max_new_tokens=12, temperature=0.0))
    assert body["object"] == "chat.completion" and body["model"] == TINY
    assert body["choices"][0]["message"] == {"role": "assistant", "content": want.text}
    assert body["usage"] == {"prompt_tokens": want.prompt_tokens, "completion_tokens": want.completion_tokens,
                             "total_tokens": want.prompt_tokens + want.completion_tokens}
    assert headers["x-cirrus-route"].startswith("light; ")


def test_completions_route_uses_the_prompt(gen_api, tiny_generator):
    status, body, _ = chat({"model": TINY, "prompt": "The quick brown fox", "max_tokens": 6, "temperature": 0},
                           path="/v1/completions")
    [want] = tiny_generator.complete("The quick brown fox", SamplingParams(max_new_tokens=6, temperature=0.0))
    assert status == 200 and body["object"] == "text_completion" and body["choices"][0]["text"] == want.text


def test_a_prompt_over_the_character_cap_is_413_naming_the_cap_before_any_model_is_loaded(gen_api, monkeypatch):
    from functions.core.generation import service, streaming

    gen_api(max_prompt_chars=40)
    loaded = []
    for module in (service, streaming):
        monkeypatch.setattr(module, "get_model", lambda name: loaded.append(name))
    messages = [{"role": "system", "content": "s" * 20}, {"role": "user", "content": [{"type": "text", "text": "u" * 21}]}]
    for body, path, param in (({"model": TINY, "messages": messages}, "/v1/chat/completions", "messages"),
                              ({"model": TINY, "messages": messages, "stream": True}, "/v1/chat/completions",
                               "messages"),
                              ({"model": TINY, "prompt": "p" * 41}, "/v1/completions", "prompt")):
        err = assert_error(*chat(body, path=path)[:2], 413, "prompt_too_long")
        assert err["param"] == param and "41 characters" in err["message"] and "limit is 40" in err["message"]
    assert loaded == []


def test_a_prompt_at_the_character_cap_is_served(gen_api):
    gen_api(max_prompt_chars=40)
    status, body, _ = chat({"model": TINY, "messages": [{"role": "user", "content": "w " * 20}], "max_tokens": 2})
    assert status == 200, body


def test_logit_bias_token_outside_the_vocabulary_is_422(gen_api):
    status, resp, _ = chat({"model": TINY, "messages": USER, "max_tokens": 2, "logit_bias": {"999999": 5}})
    err = assert_error(status, resp, 422, "invalid_value")
    assert err["param"] == "logit_bias" and "vocabulary" in err["message"]


@pytest.mark.parametrize("field,value", [
    ("tools", [{"type": "function", "function": {"name": "f", "parameters": {}}}]),
    ("tool_choice", "auto"),
    ("parallel_tool_calls", True),
    ("response_format", {"type": "json_object"}),
])
def test_fields_the_light_route_cannot_honour_are_refused_by_name_with_the_route_that_can(gen_api, field, value):
    status, resp, _ = chat({"model": TINY, "messages": USER, "max_tokens": 4, field: value})
    err = assert_error(status, resp, 422, "unsupported_on_route")
    assert err["param"] == field and "light" in err["message"] and "heavy route" in err["message"]


def test_plain_text_response_format_is_what_the_light_route_does_anyway(gen_api):
    status, body, _ = chat({"model": TINY, "messages": USER, "max_tokens": 3, "response_format": {"type": "text"}})
    assert status == 200, body


def test_user_and_max_completion_tokens_are_accepted(gen_api):
    status, body, _ = chat({"model": TINY, "messages": USER, "max_completion_tokens": 3, "user": "customer-42",
                            "temperature": 0})
    assert status == 200 and body["usage"]["completion_tokens"] <= 3


def test_n_choices_share_the_prompt_and_are_reproducible_with_a_seed(gen_api):
    req = {"model": TINY, "messages": USER, "max_tokens": 8, "temperature": 1.0, "seed": 3, "n": 3}
    status, body, _ = chat(req)
    assert status == 200, body
    assert [c["index"] for c in body["choices"]] == [0, 1, 2]
    texts = [c["message"]["content"] for c in body["choices"]]
    assert len(set(texts)) > 1  # one random stream across the choices, not one reply copied
    assert chat(req)[1]["choices"] == body["choices"]
    u = body["usage"]
    assert u["total_tokens"] == u["prompt_tokens"] + u["completion_tokens"] and u["completion_tokens"] > 8


def test_chat_logprobs_have_the_openai_shape_and_are_log_probabilities(gen_api):
    status, body, _ = chat({"model": TINY, "messages": USER, "max_tokens": 5, "temperature": 0, "logprobs": True,
                            "top_logprobs": 3})
    assert status == 200, body
    content = body["choices"][0]["logprobs"]["content"]
    assert len(content) == body["usage"]["completion_tokens"]
    for entry in content:
        assert set(entry) == {"token", "logprob", "bytes", "top_logprobs"}
        assert entry["logprob"] <= 0 and entry["bytes"] == list(entry["token"].encode())
        tops = entry["top_logprobs"]
        assert len(tops) == 3 and tops[0]["logprob"] >= tops[1]["logprob"] >= tops[2]["logprob"]
        assert tops[0]["token"] == entry["token"] and tops[0]["logprob"] == entry["logprob"]  # greedy
    assert "".join(e["token"] for e in content) == body["choices"][0]["message"]["content"]


def test_completion_logprobs_use_the_legacy_shape(gen_api):
    status, body, _ = chat({"model": TINY, "prompt": "The quick brown fox", "max_tokens": 4, "temperature": 0,
                            "logprobs": 2}, path="/v1/completions")
    assert status == 200, body
    lp = body["choices"][0]["logprobs"]
    assert len(lp["tokens"]) == len(lp["token_logprobs"]) == len(lp["top_logprobs"]) == len(lp["text_offset"])
    assert all(len(t) == 2 for t in lp["top_logprobs"]) and lp["text_offset"][0] == 0


def test_same_seed_gives_the_same_sampled_reply(gen_api):
    req = {"model": TINY, "messages": USER, "max_tokens": 10, "temperature": 0.9, "top_p": 0.9, "seed": 42}
    assert chat(req)[1]["choices"] == chat(req)[1]["choices"]


@pytest.mark.parametrize("body,param", [
    ({"model": TINY, "messages": USER, "max_tokens": -1}, "max_tokens"),
    ({"model": TINY, "messages": USER, "max_tokens": 0}, "max_tokens"),
    ({"model": TINY, "messages": USER, "max_tokens": "2"}, "max_tokens"),  # strict: no string coercion
    ({"model": TINY, "messages": USER, "max_completion_tokens": "2"}, "max_completion_tokens"),
    ({"model": TINY, "messages": USER, "seed": "7"}, "seed"),
    ({"model": TINY, "messages": []}, "messages"),
    ({"model": TINY, "messages": [{"role": "robot", "content": "hi"}]}, "messages.0.role"),
    ({"model": TINY, "messages": USER, "temperature": 3}, "temperature"),
    ({"model": TINY, "messages": USER, "top_p": 0}, "top_p"),
    ({"model": TINY, "messages": USER, "n": 0}, "n"),
    ({"model": TINY, "messages": USER, "n": 5}, "n"),
    ({"model": TINY, "messages": USER, "n": 1.5}, "n"),
    ({"model": TINY, "messages": USER, "seed": -1}, "seed"),
    ({"model": TINY, "messages": USER, "seed": 2**64}, "seed"),
    ({"model": TINY, "messages": USER, "temperature": -0.1}, "temperature"),
    ({"model": TINY, "messages": USER, "temperature": float("nan")}, "temperature"),
    ({"model": TINY, "messages": USER, "top_p": float("inf")}, "top_p"),
    ({"model": TINY, "messages": USER, "presence_penalty": 2.5}, "presence_penalty"),
    ({"model": TINY, "messages": USER, "presence_penalty": float("-inf")}, "presence_penalty"),
    ({"model": TINY, "messages": USER, "frequency_penalty": -2.01}, "frequency_penalty"),
    ({"model": TINY, "messages": USER, "frequency_penalty": float("nan")}, "frequency_penalty"),
    ({"model": TINY, "messages": USER, "logit_bias": {"5": 101}}, "logit_bias"),
    ({"model": TINY, "messages": USER, "logit_bias": {"5": float("nan")}}, "logit_bias"),
    ({"model": TINY, "messages": USER, "logit_bias": {"-3": 1}}, "logit_bias"),
    ({"model": TINY, "messages": USER, "logit_bias": {"hello": 1}}, "logit_bias"),
    ({"model": TINY, "messages": USER, "logit_bias": {str(i): 1 for i in range(301)}}, "logit_bias"),
    ({"model": TINY, "messages": USER, "logit_bias": [1, 2]}, "logit_bias"),
    ({"model": TINY, "messages": USER, "logprobs": "yes"}, "logprobs"),
    ({"model": TINY, "messages": USER, "top_logprobs": 3}, "top_logprobs"),  # needs logprobs: true
    ({"model": TINY, "messages": USER, "logprobs": True, "top_logprobs": 21}, "top_logprobs"),
    ({"model": TINY, "messages": USER, "logprobs": True, "top_logprobs": -1}, "top_logprobs"),
    ({"model": TINY, "messages": USER, "max_completion_tokens": 0}, "max_completion_tokens"),
    ({"model": TINY, "messages": USER, "user": 7}, "user"),
    ({"model": TINY, "messages": USER, "user": "u" * 257}, "user"),
    ({"model": TINY, "messages": USER, "stream": "yes"}, "stream"),  # strict: no string coercion
    ({"model": TINY, "messages": USER, "stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"messages": USER}, "model"),
])
def test_bad_parameters_are_422_in_the_openai_shape(gen_api, body, param):
    status, resp, _ = chat(body)
    err = assert_error(status, resp, 422, "invalid_value")
    assert err["param"] == param


def test_body_that_is_not_json_is_400(gen_api):
    status, resp, _ = call_api(api_event("POST", "/v1/chat/completions", raw="{nope"))
    assert_error(status, resp, 400, "invalid_json")


def test_unknown_model_is_404(gen_api):
    status, resp, _ = chat({"model": "gpt-9", "messages": USER})
    assert_error(status, resp, 404, "model_not_found")


def test_chat_on_a_light_model_that_does_not_generate_is_422_task_mismatch(gen_api, tiny_bundle):
    # Misconfigured stage: an embedding bundle listed as a generation model.
    gen_api(models=[TINY, "all-minilm-l6-v2"], generation_models=["all-minilm-l6-v2"])
    status, resp, _ = chat({"model": "all-minilm-l6-v2", "messages": USER, "max_tokens": 4})
    err = assert_error(status, resp, 422, "model_task_mismatch")
    assert err["param"] == "model" and "not text-generation" in err["message"]


def test_chat_and_completion_heavy_payloads_carry_the_same_sampling_fields():
    from functions.core.generation.schemas import ChatCompletionRequest, CompletionRequest

    sampling = {"temperature": 0.5, "top_p": 0.9, "seed": 7, "stop": "END"}
    chat_body = ChatCompletionRequest(model="big", messages=USER, max_completion_tokens=9,
                                      **sampling).heavy_payload(100)
    text_body = CompletionRequest(model="big", prompt="Hi", max_tokens=9, **sampling).heavy_payload(100)
    assert chat_body == {"model": "big", "messages": [{"role": "user", "content": "Where is my order?"}],
                         "max_tokens": 9, "stream": False, "temperature": 0.5, "top_p": 0.9, "seed": 7,
                         "stop": ["END"]}
    assert {k: v for k, v in text_body.items() if k != "prompt"} == {
        k: v for k, v in chat_body.items() if k != "messages"}
    assert text_body["prompt"] == "Hi"
    # Unset sampling fields are left to the container's defaults; the budget falls back to the stage's.
    assert CompletionRequest(model="big", prompt="Hi").heavy_payload(100) == {
        "model": "big", "prompt": "Hi", "max_tokens": 100, "stream": False}


def test_heavy_payload_passes_penalties_logprobs_and_tools_to_tgi():
    from functions.core.generation.schemas import ChatCompletionRequest

    tools = [{"type": "function", "function": {"name": "f", "parameters": {}}}]
    body = ChatCompletionRequest(model="big", messages=USER, presence_penalty=0.5, frequency_penalty=-0.5,
                                 logprobs=True, top_logprobs=2, tools=tools, tool_choice="auto",
                                 user="u1").heavy_payload(10)
    assert body["presence_penalty"] == 0.5 and body["frequency_penalty"] == -0.5
    assert body["logprobs"] is True and body["top_logprobs"] == 2
    assert body["tools"] == tools and body["tool_choice"] == "auto"
    assert "user" not in body  # accepted for the client's sake, not forwarded


def test_over_the_light_budget_without_a_heavy_endpoint_is_422(gen_api):
    status, resp, _ = chat({"model": TINY, "messages": USER, "max_tokens": 40})
    assert_error(status, resp, 422, "over_token_budget")


def test_heavy_model_with_the_endpoint_disabled_is_a_clear_503(gen_api):
    gen_api(heavy_models=["big-llm"], stage="dev")
    status, resp, _ = chat({"model": "big-llm", "messages": USER})
    err = assert_error(status, resp, 503, "heavy_endpoint_disabled")
    assert "dev" in err["message"]


# --- heavy and async through the stand-in ---------------------------------------------------------
@pytest.fixture
def standin(tiny_bundle, aws, monkeypatch):
    """The stand-in serving the tiny bundle as endpoint 'cirrus-heavy' (and its async twin)."""
    s3 = boto3.client("s3", region_name="us-east-1")
    s3.create_bucket(Bucket="cirrus-data")
    # Async outputs where the stack's endpoint config puts them (infra/constructs/heavy_async.py).
    srv = HeavyServer(tiny_bundle, endpoint="cirrus-heavy",
                      async_output=f"s3://cirrus-data/{JOBS_GENERATION_OUTPUT_PREFIX}",
                      async_failure=f"s3://cirrus-data/{JOBS_GENERATION_FAILURE_PREFIX}",
                      s3_client=s3).start()
    monkeypatch.setenv("AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME", srv.url)
    heavy_mod.reset_clients()
    yield srv
    srv.stop()
    heavy_mod.reset_clients()


def test_over_the_light_budget_goes_heavy_and_says_so(gen_api, standin):
    gen_api(heavy_models=[TINY], heavy_endpoint_name="cirrus-heavy")
    status, body, headers = chat({"model": TINY, "messages": USER, "max_tokens": 40, "temperature": 0})
    assert status == 200, body
    assert headers["x-cirrus-route"].startswith("heavy; max_tokens 40 > light budget 32")
    assert body["model"] == TINY and body["usage"]["completion_tokens"] <= 40


@pytest.mark.parametrize("field,value", [("logit_bias", {"5": 1.0}), ("n", 2)])
def test_fields_tgi_cannot_honour_are_refused_on_the_heavy_route_naming_the_light_one(gen_api, standin, field,
                                                                                      value):
    gen_api(heavy_models=["big-llm"], heavy_endpoint_name="cirrus-heavy")
    calls = standin.calls
    status, resp, _ = chat({"model": "big-llm", "messages": USER, "max_tokens": 8, field: value})
    err = assert_error(status, resp, 422, "unsupported_on_route")
    assert err["param"] == field and "heavy" in err["message"] and "light route" in err["message"]
    assert standin.calls == calls  # refused before any endpoint call


def test_heavy_faults_surface_as_503_with_retry_after_then_fast_refusals(gen_api, standin):
    gen_api(heavy_models=["big-llm"], heavy_endpoint_name="cirrus-heavy", heavy_max_attempts=2,
            heavy_breaker_failures=2, heavy_breaker_reset_s=60)
    standin.down = True
    status, resp, headers = chat({"model": "big-llm", "messages": USER, "max_tokens": 8})
    assert_error(status, resp, 503, "endpoint_error")
    assert headers["Retry-After"] == "60"
    calls = standin.calls
    status, resp, headers = chat({"model": "big-llm", "messages": USER, "max_tokens": 8})
    assert_error(status, resp, 503, "endpoint_unavailable")
    assert standin.calls == calls  # the breaker answered; the endpoint was not called


def finished_job(status_url: str, timeout_s: float = 20, key_id: str | None = None) -> tuple[int, dict]:
    """Poll the job status route until the job leaves in_progress (or the time is up)."""
    deadline = time.time() + timeout_s
    while True:
        event = api_event("GET", status_url)
        status, view, _ = call_api(as_key(event, key_id) if key_id else event)
        if view["status"] != "in_progress" or time.time() > deadline:
            return status, view
        time.sleep(0.1)


def test_async_request_becomes_a_job_whose_status_route_returns_the_completion(gen_api, standin):
    gen_api(heavy_models=[TINY], heavy_endpoint_name="cirrus-heavy", heavy_async_endpoint_name="cirrus-heavy",
            data_bucket="cirrus-data")
    status, job, headers = chat({"model": TINY, "messages": USER, "max_tokens": 8, "temperature": 0},
                                headers={"Prefer": "respond-async"})
    assert status == 202, job
    assert headers["x-cirrus-route"].startswith("async; async requested")
    assert job["status"] == "in_progress" and headers["Location"] == job["status_url"]
    status, view = finished_job(job["status_url"])
    assert status == 200 and view["status"] == "succeeded", view
    assert view["result"]["object"] == "chat.completion" and view["result"]["model"] == TINY


def test_async_failure_lands_under_the_failure_prefix_and_the_job_reads_failed(gen_api, standin):
    gen_api(heavy_models=[TINY], heavy_endpoint_name="cirrus-heavy", heavy_async_endpoint_name="cirrus-heavy",
            data_bucket="cirrus-data")
    # Longer than the model's context window: the container refuses it (422), SageMaker writes the failure.
    long_prompt = [{"role": "user", "content": "where is my order " * 2000}]
    status, job, _ = chat({"model": TINY, "messages": long_prompt, "max_tokens": 8},
                          headers={"Prefer": "respond-async"})
    assert status == 202, job
    status, view = finished_job(job["status_url"])
    assert status == 200 and view["status"] == "failed", view
    assert view["error"]["code"] == "generation_failed"
    s3 = boto3.client("s3", region_name="us-east-1")
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="cirrus-data")["Contents"]]
    failures = [k for k in keys if k.startswith(JOBS_GENERATION_FAILURE_PREFIX)]
    assert len(failures) == 1 and failures[0].endswith("-error.out"), keys
    assert not [k for k in keys if k.startswith(JOBS_GENERATION_OUTPUT_PREFIX)], keys


def test_a_generation_job_is_visible_only_to_the_key_that_created_it(gen_api, standin):
    gen_api(heavy_models=[TINY], heavy_endpoint_name="cirrus-heavy", heavy_async_endpoint_name="cirrus-heavy",
            data_bucket="cirrus-data")
    key_a, key_b = "aaaaaaaaaaaaaaaa", "bbbbbbbbbbbbbbbb"
    status, job, _ = chat({"model": TINY, "messages": USER, "max_tokens": 8, "temperature": 0},
                          headers={"Prefer": "respond-async"}, key_id=key_a)
    assert status == 202, job
    status, view = finished_job(job["status_url"], key_id=key_a)
    assert status == 200 and view["status"] == "succeeded" and view["id"] == job["id"], view
    # Key B gets exactly what an unknown id gets, so job ids cannot be probed.
    status, resp, _ = call_api(as_key(api_event("GET", job["status_url"]), key_b))
    assert_error(status, resp, 404, "job_not_found")
    assert job["id"] in resp["error"]["message"] and "result" not in resp
    # No authorizer in front (direct/admin invocation of the function): every job is visible.
    event = api_event("GET", job["status_url"])
    event["requestContext"].pop("authorizer")
    status, view, _ = call_api(event)
    assert status == 200 and view["status"] == "succeeded", view


def test_over_the_sync_budget_becomes_a_job(gen_api, standin):
    gen_api(heavy_models=[TINY], heavy_endpoint_name="cirrus-heavy", heavy_async_endpoint_name="cirrus-heavy",
            data_bucket="cirrus-data")
    status, job, headers = chat({"model": TINY, "messages": USER, "max_tokens": 100})
    assert status == 202 and headers["x-cirrus-route"].startswith("async; max_tokens 100 > sync budget 64")


def test_unknown_job_is_404(gen_api, standin):
    gen_api(data_bucket="cirrus-data")
    status, resp, _ = call_api(api_event("GET", "/v1/generation/jobs/genjob-" + "0" * 32))
    assert_error(status, resp, 404, "job_not_found")


# --- OpenAI fields only the heavy endpoint (TGI) honours --------------------------------------------
WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
                                            "parameters": {"type": "object", "required": ["city", "days"],
                                                           "properties": {"city": {"type": "string"},
                                                                          "days": {"type": "integer",
                                                                                   "minimum": 1}}}}}
HEAVY = {"heavy_models": ["big-llm"], "heavy_endpoint_name": "cirrus-heavy"}


def test_tools_go_to_tgi_and_its_tool_call_comes_back_in_openai_shape(gen_api, standin):
    gen_api(**HEAVY)
    status, body, _ = chat({"model": "big-llm", "messages": USER, "max_tokens": 8, "tools": [WEATHER],
                            "tool_choice": "required"})
    assert status == 200, body
    choice = body["choices"][0]
    assert choice["finish_reason"] == "tool_calls"  # TGI said eos_token
    (call,) = choice["message"]["tool_calls"]
    assert call["type"] == "function" and call["id"].startswith("call_")
    assert call["function"]["name"] == "get_weather"
    assert json.loads(call["function"]["arguments"]) == {"city": "", "days": 1}  # TGI sent an object
    assert choice["message"]["content"] is None


def test_named_tool_choice_and_json_schema_reach_tgi_in_its_own_shape():
    from functions.core.generation.schemas import ChatCompletionRequest

    req = ChatCompletionRequest(model="big", messages=USER, tools=[WEATHER, {**WEATHER, "function": {
        "name": "other"}}], tool_choice={"type": "function", "function": {"name": "other"}},
        logprobs=True, top_logprobs=3,
        response_format={"type": "json_schema", "json_schema": {"name": "w", "schema": {"type": "object"}}})
    body = req.heavy_payload(10)
    assert body["tools"][0] == WEATHER and body["tools"][1] == {"type": "function", "function": {"name": "other"}}
    assert body["tool_choice"] == {"type": "function", "function": {"name": "other"}}
    assert body["logprobs"] is True and body["top_logprobs"] == 3
    assert body["response_format"] == {"type": "json", "value": {"type": "object"}}
    plain = ChatCompletionRequest(model="big", messages=USER, response_format={"type": "json_object"})
    assert plain.heavy_payload(10)["response_format"] == {"type": "json", "value": {"type": "object"}}


def test_response_format_json_schema_gives_a_document_of_that_schema(gen_api, standin):
    gen_api(**HEAVY)
    schema = {"type": "object", "required": ["answer"], "properties": {"answer": {"type": "string", "minLength": 2}}}
    status, body, _ = chat({"model": "big-llm", "messages": USER, "max_tokens": 8,
                            "response_format": {"type": "json_schema", "json_schema": {"name": "a", "schema": schema}}})
    assert status == 200, body
    assert json.loads(body["choices"][0]["message"]["content"]) == {"answer": "xx"}
    assert body["choices"][0]["finish_reason"] == "stop"


def test_tgi_logprobs_and_finish_reasons_are_passed_on_in_openai_shape():
    from functions.core.generation.service import normalise_answer

    lp = {"content": [{"token": "Hi", "logprob": -0.1, "top_logprobs": [{"token": "Hi", "logprob": -0.1}]}]}
    answer = {"choices": [{"index": 0, "message": {"role": "assistant", "content": "Hi", "tool_calls": None},
                           "logprobs": lp, "finish_reason": "stop_sequence"}], "model": "tgi"}
    out = normalise_answer(answer, "big", chat=True)
    assert out["choices"][0]["logprobs"] == lp and out["choices"][0]["finish_reason"] == "stop"
    assert "tool_calls" not in out["choices"][0]["message"] and out["model"] == "big"


@pytest.mark.parametrize(("body", "param"), [
    ({"tools": [{"type": "retrieval"}]}, "tools.0.type"),
    ({"tools": [{"type": "function", "function": {"name": "bad name"}}]}, "tools.0.function.name"),
    ({"tool_choice": "sometimes"}, "tool_choice"),
    ({"response_format": {"type": "xml"}}, "response_format.type"),
    ({"response_format": {"type": "json_schema"}}, None),
    ({"top_logprobs": 2}, None),
    ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
])
def test_malformed_tool_and_format_fields_are_422_before_reaching_the_endpoint(gen_api, standin, body, param):
    gen_api(**HEAVY)
    calls = standin.calls
    status, resp, _ = chat({"model": "big-llm", "messages": USER, "max_tokens": 8, **body})
    err = assert_error(status, resp, 422)
    if param:
        assert err["param"] == param
    assert standin.calls == calls
