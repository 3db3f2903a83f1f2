"""The local SageMaker stand-in driven by the production heavy client over loopback HTTP.

boto3 ``sagemaker-runtime`` with ``endpoint_url`` talks to local/heavy_server.py, so the real
wire format, real timeouts and real retries run; only the GPU is replaced by the tiny ONNX model.
"""
from __future__ import annotations

import json
import time

import boto3
import pytest

import requests
from botocore.config import Config

from functions.core.errors import (BadRequest, ModelUnavailable, Throttled, UpstreamTimeout, ValidationFailed,
                                   to_response)
from functions.core.generation.breaker import CircuitBreaker
from functions.core.generation.heavy import HeavyClient
from functions.core.settings import Settings
from generation_support import TINY
from local.heavy_server import HeavyServer

CHAT = {"model": TINY, "messages": [{"role": "user", "content": "Where is my order?"}], "max_tokens": 8,
        "temperature": 0}


@pytest.fixture(scope="module")
def server(tiny_bundle):
    with HeavyServer(tiny_bundle, endpoint="cirrus-heavy") as srv:
        yield srv


@pytest.fixture
def heavy(server, aws_env):
    server.faults.clear()
    server.down = False
    settings = Settings(heavy_endpoint_name="cirrus-heavy", heavy_read_timeout_s=0.5, heavy_connect_timeout_s=0.5,
                        heavy_max_attempts=3, heavy_breaker_failures=2, heavy_breaker_reset_s=0.3)
    client = boto3.client("sagemaker-runtime", region_name="us-east-1", endpoint_url=server.url,
                          config=Config(connect_timeout=0.5, read_timeout=0.5, retries={"total_max_attempts": 1}))
    breaker = CircuitBreaker("cirrus-heavy", failures=2, reset_s=0.3)
    return HeavyClient(settings, client=client, breaker=breaker, sleep=lambda s: None)


def test_container_contract_ping_and_invocations(server):
    assert requests.get(f"{server.url}/ping", timeout=5).status_code == 200
    r = requests.post(f"{server.url}/invocations", json=CHAT, timeout=30)
    body = r.json()
    assert r.status_code == 200 and body["object"] == "chat.completion"
    assert body["usage"]["completion_tokens"] <= 8 and body["choices"][0]["finish_reason"] in {"stop", "length"}
    bad = requests.post(f"{server.url}/invocations", json={**CHAT, "messages": []}, timeout=5)
    assert bad.status_code == 422 and "error" in bad.json()


def test_production_client_gets_the_same_completion_as_the_local_generator(heavy, tiny_generator_from):
    answer = heavy.invoke(CHAT)
    [want] = tiny_generator_from.chat([("user", "Where is my order?")], _greedy(8))
    assert answer["choices"][0]["message"]["content"] == want.text
    assert answer["usage"]["prompt_tokens"] == want.prompt_tokens


def test_throttle_then_success_over_http(heavy, server):
    server.inject("throttle", "throttle")
    before = server.calls
    assert heavy.invoke(CHAT)["choices"]
    assert server.calls - before == 3


def test_read_timeout_is_504_then_breaker_opens_and_answers_503_fast(heavy, server):
    server.inject("slow:1.0", "slow:1.0")
    with pytest.raises(UpstreamTimeout):
        heavy.invoke(CHAT)
    with pytest.raises(UpstreamTimeout):
        heavy.invoke(CHAT)
    assert heavy.breaker.state == "open"
    calls = server.calls
    started = time.perf_counter()
    with pytest.raises(ModelUnavailable) as exc:
        heavy.invoke(CHAT)
    assert time.perf_counter() - started < 0.05 and server.calls == calls
    assert retry_after_header(exc.value) is not None


def test_endpoint_down_opens_the_breaker_and_recovers_after_reset(heavy, server):
    server.down = True
    with pytest.raises(ModelUnavailable):
        heavy.invoke(CHAT)
    assert heavy.breaker.state == "open"
    server.down = False
    time.sleep(0.35)
    assert heavy.breaker.state == "half_open"
    assert heavy.invoke(CHAT)["choices"]
    assert heavy.breaker.state == "closed"


def test_container_422_comes_back_as_validation_error(heavy):
    with pytest.raises(ValidationFailed) as exc:
        heavy.invoke({**CHAT, "messages": [{"role": "robot", "content": "x"}]})
    assert "messages" in exc.value.message


def test_unknown_endpoint_name_is_503_not_found(server, aws_env):
    client = boto3.client("sagemaker-runtime", region_name="us-east-1", endpoint_url=server.url)
    heavy = HeavyClient(Settings(heavy_endpoint_name="other"), client=client,
                        breaker=CircuitBreaker("other", failures=5, reset_s=30), sleep=lambda s: None)
    with pytest.raises(ModelUnavailable) as exc:
        heavy.invoke(CHAT)
    assert exc.value.code == "endpoint_not_found"


def client_for(server, *, attempts: int, failures: int = 5) -> HeavyClient:
    settings = Settings(heavy_endpoint_name="cirrus-heavy", heavy_read_timeout_s=0.5, heavy_connect_timeout_s=0.5,
                        heavy_max_attempts=attempts, heavy_breaker_failures=failures, heavy_breaker_reset_s=30)
    client = boto3.client("sagemaker-runtime", region_name="us-east-1", endpoint_url=server.url,
                          config=Config(connect_timeout=0.5, read_timeout=0.5, retries={"total_max_attempts": 1}))
    return HeavyClient(settings, client=client, breaker=CircuitBreaker("cirrus-heavy", failures=failures, reset_s=30),
                       sleep=lambda s: None)


BAD_ROLE = {**CHAT, "messages": [{"role": "robot", "content": "x"}]}

# One failure of each kind, then what the client did: (fault or bad payload, error seen with one
# attempt, counted toward the breaker, calls made with three attempts allowed).
FAULT_TABLE = [
    ("container_4xx", ValidationFailed, 0, 1),   # the request's own fault: no retry, never counted
    ("error", ModelUnavailable, 1, 2),           # container 5xx: counted, retried (then succeeds)
    ("slow:1.0", UpstreamTimeout, 1, 1),         # read timeout: counted, not retried (budget spent)
    ("throttle", Throttled, 0, 2),               # busy, not broken: retried, not counted
    ("drop", ModelUnavailable, 1, 2),            # connection closed without an answer: counted, retried
]


@pytest.mark.parametrize(("fault", "error", "counted", "calls"), FAULT_TABLE, ids=[f[0] for f in FAULT_TABLE])
def test_each_heavy_failure_is_counted_toward_the_breaker_or_not(server, aws_env, fault, error, counted, calls):
    server.faults.clear()
    payload = BAD_ROLE if fault == "container_4xx" else CHAT
    once = client_for(server, attempts=1)
    if fault != "container_4xx":
        server.inject(fault)
    with pytest.raises(error):
        once.invoke(payload)
    assert once.breaker.consecutive_failures == counted and once.breaker.state == "closed"

    retrying = client_for(server, attempts=3)
    if fault != "container_4xx":
        server.inject(fault)
    before = server.calls
    if fault == "container_4xx" or fault.startswith("slow"):
        with pytest.raises(error):
            retrying.invoke(payload)
    else:
        assert retrying.invoke(payload)["choices"]  # the retry got through
    assert server.calls - before == calls
    time.sleep(0.6 if fault.startswith("slow") else 0)  # let the slow answer finish before the next test


@pytest.mark.parametrize("bad", [
    {"seed": -1, "temperature": 0.7}, {"messages": [{"role": "robot", "content": "x"}]}, {"messages": []},
    {"temperature": -1},
], ids=["seed_negative", "bad_role", "no_messages", "temperature_negative"])
def test_the_stand_in_answers_bad_input_with_422_like_a_container(server, bad):
    r = requests.post(f"{server.url}/invocations", json={**CHAT, **bad}, timeout=30)
    assert r.status_code == 422 and r.json()["error_type"] == "validation"


def test_one_tenants_bad_requests_never_open_the_breaker_for_others(server, aws_env):
    server.faults.clear()
    heavy = client_for(server, attempts=3, failures=2)
    before = server.calls
    for bad in ({"seed": -1, "temperature": 0.7}, {"messages": []}, {"messages": [{"role": "robot", "content": "x"}]}) * 3:
        with pytest.raises((ValidationFailed, BadRequest)):
            heavy.invoke({**CHAT, **bad})
    assert server.calls - before == 9  # one call each: a refusal is never retried
    assert heavy.breaker.state == "closed" and heavy.breaker.consecutive_failures == 0
    assert heavy.invoke(CHAT)["choices"]  # another tenant's valid request still goes through


@pytest.fixture(scope="module")
def tiny_generator_from(server):
    return server.generator


def _greedy(n: int):
    from functions.core.inference.generator import SamplingParams

    return SamplingParams(max_new_tokens=n, temperature=0.0)


def retry_after_header(err) -> str | None:
    """The Retry-After header the one error mapper sends for ``err``."""
    return to_response(err)[2].get("Retry-After")
