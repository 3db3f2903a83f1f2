"""The heavy SageMaker client: retries, circuit breaker, and the errors a client sees (botocore Stubber)."""
from __future__ import annotations

import io
import json

import boto3
import pytest

from botocore.response import StreamingBody
from botocore.stub import Stubber

from functions.core.errors import ModelUnavailable, Throttled, ValidationFailed, to_response
from functions.core.generation.breaker import CircuitBreaker
from functions.core.generation.heavy import HeavyClient
from functions.core.settings import Settings

ANSWER = {"id": "x", "object": "chat.completion", "created": 1, "model": "tgi",
          "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
          "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}}
PAYLOAD = {"model": "big", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 8}


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def rig(aws_env):
    """A stubbed sagemaker-runtime client, a breaker on a fake clock, and a recorder of sleeps."""
    client = boto3.client("sagemaker-runtime", region_name="us-east-1")
    clock = Clock()
    sleeps: list[float] = []
    settings = Settings(heavy_endpoint_name="ep", heavy_max_attempts=3, heavy_breaker_failures=3,
                        heavy_breaker_reset_s=30)
    breaker = CircuitBreaker("ep", failures=3, reset_s=30, clock=clock)
    heavy = HeavyClient(settings, client=client, breaker=breaker, sleep=sleeps.append, rng=lambda: 1.0)
    with Stubber(client) as stub:
        yield heavy, stub, clock, sleeps


def ok(stub: Stubber) -> None:
    raw = json.dumps(ANSWER).encode()
    stub.add_response("invoke_endpoint", {"Body": StreamingBody(io.BytesIO(raw), len(raw)),
                                          "ContentType": "application/json"})


def err(stub: Stubber, code: str, status: int, message: str = "", **fields) -> None:
    stub.add_client_error("invoke_endpoint", service_error_code=code, service_message=message,
                          http_status_code=status, modeled_fields=fields or None)


def open_breaker(heavy, stub) -> None:
    """Every attempt of one call fails with 503: the breaker opens (reset 30 s)."""
    for _ in range(3):
        err(stub, "ServiceUnavailable", 503)
    with pytest.raises(ModelUnavailable):
        heavy.invoke(PAYLOAD)


def open_then_half_open(heavy, stub, clock) -> None:
    open_breaker(heavy, stub)
    clock.t += 31
    assert heavy.breaker.state == "half_open"


def test_heavy_call_sends_tgi_payload_and_returns_the_completion(rig):
    heavy, stub, _, _ = rig
    raw = json.dumps(ANSWER).encode()
    stub.add_response("invoke_endpoint", {"Body": StreamingBody(io.BytesIO(raw), len(raw))},
                      expected_params={"EndpointName": "ep", "Body": json.dumps(PAYLOAD).encode(),
                                       "ContentType": "application/json", "Accept": "application/json"})
    assert heavy.invoke(PAYLOAD)["choices"][0]["message"]["content"] == "hi"
    stub.assert_no_pending_responses()


def test_throttling_is_retried_with_jittered_backoff_then_succeeds(rig):
    heavy, stub, _, sleeps = rig
    err(stub, "ThrottlingException", 400)
    err(stub, "ThrottlingException", 400)
    ok(stub)
    assert heavy.invoke(PAYLOAD)["usage"]["total_tokens"] == 4
    assert sleeps == [0.2, 0.4]  # rng()=1.0: the full-jitter ceiling, doubling per attempt
    assert heavy.breaker.state == "closed"  # throttling is "busy", not "broken"


def test_throttling_on_every_attempt_is_a_429_with_retry_after(rig):
    heavy, stub, _, _ = rig
    for _ in range(3):
        err(stub, "ThrottlingException", 400)
    with pytest.raises(Throttled) as exc:
        heavy.invoke(PAYLOAD)
    assert exc.value.status == 429 and retry_after_header(exc.value) == "1"


def test_5xx_opens_the_breaker_and_later_calls_get_503_without_calling(rig):
    heavy, stub, _, _ = rig
    err(stub, "ModelError", 424, OriginalStatusCode=500, OriginalMessage='{"error":"oom"}')
    err(stub, "InternalFailure", 500)
    err(stub, "ServiceUnavailable", 503)
    with pytest.raises(ModelUnavailable) as first:
        heavy.invoke(PAYLOAD)
    assert first.value.status == 503 and retry_after_header(first.value) == "30"
    assert heavy.breaker.state == "open"
    stub.assert_no_pending_responses()
    # No response queued: any call to the client would fail the Stubber. The breaker answers alone.
    with pytest.raises(ModelUnavailable) as fast:
        heavy.invoke(PAYLOAD)
    assert fast.value.code == "endpoint_unavailable" and int(retry_after_header(fast.value)) <= 30


def test_breaker_half_opens_after_the_reset_and_a_good_probe_closes_it(rig):
    heavy, stub, clock, _ = rig
    open_breaker(heavy, stub)
    clock.t += 10
    assert heavy.breaker.state == "open" and heavy.breaker.retry_after() == 20
    clock.t += 20
    assert heavy.breaker.state == "half_open"
    ok(stub)
    assert heavy.invoke(PAYLOAD)["choices"]
    assert heavy.breaker.state == "closed"


def test_a_failed_half_open_probe_reopens_the_breaker(rig):
    heavy, stub, clock, _ = rig
    open_then_half_open(heavy, stub, clock)
    err(stub, "ServiceUnavailable", 503)
    with pytest.raises(ModelUnavailable):
        heavy.invoke(PAYLOAD)
    assert heavy.breaker.state == "open"
    stub.assert_no_pending_responses()  # one probe only, no retries while reopened


def test_half_open_admits_one_probe_at_a_time():
    clock = Clock()
    b = CircuitBreaker("ep", failures=1, reset_s=5, clock=clock)
    b.failure("boom")
    clock.t += 5
    b.before_call()  # the probe
    with pytest.raises(ModelUnavailable):
        b.before_call()  # a concurrent caller is refused while the probe is out


def test_scaling_from_zero_is_503_with_retry_after_and_trips_the_breaker(rig):
    heavy, stub, _, _ = rig
    err(stub, "ValidationError", 400, "Inference Component has no capacity to process this request.")
    with pytest.raises(ModelUnavailable) as exc:
        heavy.invoke(PAYLOAD)
    assert exc.value.code == "endpoint_scaling" and retry_after_header(exc.value) == "30"
    assert heavy.breaker.state == "open"


def test_model_not_ready_is_503_scaling(rig):
    heavy, stub, _, _ = rig
    err(stub, "ModelNotReadyException", 429)
    with pytest.raises(ModelUnavailable) as exc:
        heavy.invoke(PAYLOAD)
    assert exc.value.code == "endpoint_scaling"


def test_container_validation_error_becomes_422_with_its_message_and_no_retry(rig):
    heavy, stub, _, _ = rig
    err(stub, "ModelError", 424, OriginalStatusCode=422,
        OriginalMessage='{"error":"Input validation error: max_new_tokens must be <= 4096","error_type":"validation"}')
    with pytest.raises(ValidationFailed) as exc:
        heavy.invoke(PAYLOAD)
    assert "max_new_tokens must be <= 4096" in exc.value.message
    assert heavy.breaker.state == "closed"
    stub.assert_no_pending_responses()


def test_disabled_endpoint_is_a_clear_503_without_any_call(aws_env):
    heavy = HeavyClient(Settings(heavy_endpoint_name=None, stage="prod"))
    with pytest.raises(ModelUnavailable) as exc:
        heavy.invoke(PAYLOAD)
    assert exc.value.code == "heavy_endpoint_disabled" and "prod" in exc.value.message


def test_unreadable_endpoint_answer_is_503_not_a_crash(rig):
    heavy, stub, _, _ = rig
    raw = b"<html>bad gateway</html>"
    stub.add_response("invoke_endpoint", {"Body": StreamingBody(io.BytesIO(raw), len(raw))})
    with pytest.raises(ModelUnavailable) as exc:
        heavy.invoke(PAYLOAD)
    assert exc.value.code == "bad_endpoint_response"


def test_a_half_open_probe_refused_by_the_container_closes_the_breaker(rig):
    heavy, stub, clock, _ = rig
    open_then_half_open(heavy, stub, clock)
    err(stub, "ModelError", 424, OriginalStatusCode=422, OriginalMessage='{"error":"too long"}')
    with pytest.raises(ValidationFailed):
        heavy.invoke(PAYLOAD)
    assert heavy.breaker.state == "closed"  # the container answered: it is reachable
    ok(stub)
    assert heavy.invoke(PAYLOAD)["choices"]


def test_a_throttled_half_open_probe_lets_the_next_call_probe_again(rig):
    heavy, stub, clock, _ = rig
    open_then_half_open(heavy, stub, clock)
    for _ in range(3):
        err(stub, "ThrottlingException", 400)
    with pytest.raises(Throttled):
        heavy.invoke(PAYLOAD)  # every attempt may probe: each throttle hands the probe back
    assert heavy.breaker.state == "half_open"
    ok(stub)
    assert heavy.invoke(PAYLOAD)["choices"]  # not a 503 endpoint_unavailable forever
    assert heavy.breaker.state == "closed"


def test_a_half_open_probe_with_an_unknown_client_error_lets_the_next_call_probe_again(rig):
    heavy, stub, clock, _ = rig
    open_then_half_open(heavy, stub, clock)
    err(stub, "AccessDeniedException", 400, "not allowed")
    with pytest.raises(ModelUnavailable) as exc:
        heavy.invoke(PAYLOAD)
    assert exc.value.code == "endpoint_error"
    ok(stub)
    assert heavy.invoke(PAYLOAD)["choices"]
    assert heavy.breaker.state == "closed"


def retry_after_header(err) -> str | None:
    """The Retry-After header the one error mapper sends for ``err``."""
    return to_response(err)[2].get("Retry-After")
