"""The heavy path's adapter: SageMaker runtime ``invoke_endpoint`` behind timeouts, retries and a breaker.

botocore's own retries are off (one attempt per call) so that this module sees every attempt:
it retries throttling, 5xx and connection failures a bounded number of times with full jitter,
feeds each failure to the endpoint's circuit breaker, and never retries a read timeout (the time
budget under API Gateway's 29 s is already spent). Every outcome a client can see is a CirrusError:
429 throttled, 503 + Retry-After down/scaling/disabled, 504 timeout, 4xx the container's refusal.
"""
from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Callable
from typing import Any

from botocore.exceptions import (BotoCoreError, ClientError, ConnectionClosedError, ConnectTimeoutError,
                                 EndpointConnectionError, ReadTimeoutError)

from functions.core.aws.base import THROTTLING_CODES, error_code, error_message, make_client
from functions.core.errors import (BadRequest, CirrusError, ModelUnavailable, Throttled, UpstreamTimeout,
                                   ValidationFailed)
from functions.core.generation.breaker import CircuitBreaker, breaker_for
from functions.core.observability import logger
from functions.core.settings import Settings

RETRY_BASE_S = 0.2
RETRY_CAP_S = 2.0
SERVER_CODES = frozenset({"InternalFailure", "ServiceUnavailable", "InternalDependencyException"})

_clients: dict[tuple[float, float], Any] = {}
_lock = threading.Lock()


def runtime_client(settings: Settings) -> Any:
    """The container's ``sagemaker-runtime`` client (lazy, once per timeout pair)."""
    key = (settings.heavy_connect_timeout_s, settings.heavy_read_timeout_s)
    with _lock:
        found = _clients.get(key)
        if found is None:
            # One attempt per call: HeavyClient retries itself, with the breaker told of each failure.
            found = _clients[key] = make_client("sagemaker-runtime", options=dict(
                connect_timeout=key[0], read_timeout=key[1], retries={"total_max_attempts": 1, "mode": "standard"}))
        return found


def reset_clients() -> None:
    with _lock:
        _clients.clear()


class _Retry(Exception):
    """An attempt failed in a way worth another try (after the breaker has been told)."""

    def __init__(self, err: CirrusError) -> None:
        super().__init__(err.message)
        self.err = err


class HeavyClient:
    """Calls one SageMaker endpoint; ``sleep``/``rng`` are injectable so tests do not wait."""

    def __init__(self, settings: Settings, *, client: Any = None, breaker: CircuitBreaker | None = None,
                 sleep: Callable[[float], None] = time.sleep, rng: Callable[[], float] = random.random) -> None:
        self.settings = settings
        self.endpoint = settings.heavy_endpoint_name
        self._client = client
        self._sleep = sleep
        self._rng = rng
        self.breaker = breaker or (breaker_for(self.endpoint, failures=settings.heavy_breaker_failures,
                                               reset_s=settings.heavy_breaker_reset_s) if self.endpoint else None)

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = runtime_client(self.settings)
        return self._client

    def require_enabled(self) -> None:
        if not self.endpoint:
            raise ModelUnavailable(f"the heavy generation endpoint is disabled in stage "
                                   f"'{self.settings.stage}' (CIRRUS_HEAVY_ENDPOINT_NAME is not set)",
                                   code="heavy_endpoint_disabled")

    # --- sync --------------------------------------------------------------------------------------
    def invoke(self, payload: dict) -> dict:
        """POST ``payload`` (TGI Messages/Completions JSON) to the endpoint; return its JSON answer."""
        self.require_enabled()
        assert self.breaker is not None
        body = json.dumps(payload).encode()
        kwargs: dict[str, Any] = {"EndpointName": self.endpoint, "Body": body,
                                  "ContentType": "application/json", "Accept": "application/json"}
        if self.settings.heavy_inference_component:
            kwargs["InferenceComponentName"] = self.settings.heavy_inference_component
        attempts = self.settings.heavy_max_attempts
        last: CirrusError | None = None
        for attempt in range(1, attempts + 1):
            probe = self.breaker.before_call()  # raises 503 at once while the breaker is open
            started = time.perf_counter()
            try:
                out = self._attempt(kwargs)
                self.breaker.success()
                logger.info("heavy call ok", extra={"endpoint": self.endpoint, "attempt": attempt,
                                                    "ms": round((time.perf_counter() - started) * 1000, 1)})
                return out
            except _Retry as r:
                last = r.err
                logger.warning("heavy call failed", extra={"endpoint": self.endpoint, "attempt": attempt,
                                                           "code": r.err.code, "breaker": self.breaker.state})
                if attempt == attempts or self.breaker.state == "open":
                    break
            finally:
                if probe:
                    # A throttle or a refusal neither closes nor reopens the breaker; without this the
                    # probe would stay "out" and every later call would get 503 until the container dies.
                    self.breaker.release_probe()
            # Full jitter: spread the retries of many containers instead of synchronising them.
            self._sleep(self._rng() * min(RETRY_CAP_S, RETRY_BASE_S * 2 ** (attempt - 1)))
        assert last is not None
        if self.breaker.state == "open" and not isinstance(last, Throttled):
            if last.retry_after is None:
                last.retry_after = self.breaker.retry_after()
        raise last

    def _attempt(self, kwargs: dict[str, Any]) -> dict:
        try:
            resp = self.client.invoke_endpoint(**kwargs)
            raw = resp["Body"].read()
        except ReadTimeoutError as exc:
            self.breaker.failure("read timeout")
            raise UpstreamTimeout(f"the generation endpoint did not answer within "
                                  f"{self.settings.heavy_read_timeout_s:g} s; for long generations send "
                                  f"the request as an async job (header 'Prefer: respond-async')") from exc
        except (ConnectTimeoutError, EndpointConnectionError, ConnectionClosedError) as exc:
            self.breaker.failure("connection failed")
            raise _Retry(ModelUnavailable("the generation endpoint cannot be reached",
                                          code="endpoint_unreachable")) from exc
        except ClientError as exc:
            raise self._classify(exc) from exc
        except BotoCoreError as exc:
            self.breaker.failure(exc.__class__.__name__)
            raise _Retry(ModelUnavailable("the generation endpoint call failed", code="endpoint_error")) from exc
        try:
            answer = json.loads(raw)
            if not isinstance(answer, dict) or not isinstance(answer.get("choices"), list) or not answer["choices"]:
                raise ValueError("no choices")
        except ValueError as exc:
            self.breaker.failure("unreadable response")
            raise ModelUnavailable("the generation endpoint returned an unreadable response",
                                   code="bad_endpoint_response") from exc
        return answer

    def _classify(self, exc: ClientError) -> BaseException:
        code = error_code(exc) or ""
        message = error_message(exc)
        retry_after = self.settings.heavy_breaker_reset_s
        if code in THROTTLING_CODES:
            # Too busy, not broken: retried, then a 429; the breaker does not count it.
            return _Retry(Throttled("the generation endpoint is throttling requests; retry shortly",
                                    retry_after=1))
        if code == "ModelNotReadyException" or (code == "ValidationError" and "capacity" in message.lower()):
            # Scaling up from zero (inference component with no copies) or still loading: minutes.
            self.breaker.trip("scaling from zero", retry_after)
            return ModelUnavailable("the generation endpoint is starting (scaling from zero); "
                                    f"retry in about {retry_after:g} s", code="endpoint_scaling",
                                    retry_after=retry_after)
        if code == "ValidationError" and "not found" in message.lower():
            self.breaker.trip("endpoint not found", retry_after)
            return ModelUnavailable("the generation endpoint does not exist (not deployed in this stage)",
                                    code="endpoint_not_found", retry_after=retry_after)
        if code == "ModelError":
            original = int(exc.response.get("OriginalStatusCode") or 0)
            if original == 429:
                return _Retry(Throttled("the generation endpoint is overloaded; retry shortly",
                                        retry_after=1))
            if 400 <= original < 500:
                # The container refused the request (e.g. TGI 422: prompt + max_tokens over its limit).
                # Its message describes the request's shape, not its content, so it is passed on.
                self.breaker.success()  # the container answered: the endpoint is up
                detail = _container_message(exc.response.get("OriginalMessage"))
                cls = ValidationFailed if original == 422 else BadRequest
                return cls(f"the model refused the request: {detail}", code="model_refused")
            self.breaker.failure(f"model error {original or '?'}")
            return _Retry(ModelUnavailable("the generation endpoint failed", code="endpoint_error"))
        if code in SERVER_CODES or exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) >= 500:
            self.breaker.failure(code or "5xx")
            return _Retry(ModelUnavailable("the generation endpoint failed", code="endpoint_error"))
        # Anything else is our own mistake (bad request shape, permissions): fail, do not retry.
        logger.error("heavy call refused", extra={"endpoint": self.endpoint, "code": code})
        return ModelUnavailable("the generation endpoint refused the call", code="endpoint_error")

    # --- async -------------------------------------------------------------------------------------
    def invoke_async(self, endpoint: str, input_location: str, inference_id: str) -> dict:
        """``invoke_endpoint_async``: SageMaker reads the request from S3 and writes the answer there."""
        try:
            resp = self.client.invoke_endpoint_async(
                EndpointName=endpoint, InputLocation=input_location, InferenceId=inference_id,
                ContentType="application/json", Accept="application/json")
        except (ClientError, BotoCoreError) as exc:
            code = error_code(exc)
            logger.warning("heavy async call failed", extra={"endpoint": endpoint, "code": code})
            if code in THROTTLING_CODES:
                raise Throttled("the async generation endpoint is throttling requests",
                                retry_after=1) from exc
            raise ModelUnavailable("the async generation endpoint is unavailable", code="endpoint_error",
                                   retry_after=5) from exc
        return {"output_location": resp.get("OutputLocation"), "failure_location": resp.get("FailureLocation"),
                "inference_id": resp.get("InferenceId", inference_id)}


def _container_message(original: Any) -> str:
    """TGI's error body is ``{"error": "...", "error_type": "..."}``; fall back to a generic text."""
    try:
        parsed = json.loads(original) if isinstance(original, str) else original
        msg = parsed.get("error") if isinstance(parsed, dict) else None
        if isinstance(msg, str) and msg:
            return msg[:500]
    except ValueError:
        pass
    return "invalid request"
