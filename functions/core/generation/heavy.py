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
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from botocore.exceptions import (BotoCoreError, ClientError, ConnectionClosedError, ConnectTimeoutError,
                                 EndpointConnectionError, ReadTimeoutError)

from functions.core.aws.base import THROTTLING_CODES, error_code, error_message, make_client
from functions.core.errors import (BadRequest, CirrusError, ModelUnavailable, Throttled, UpstreamTimeout,
                                   ValidationFailed)
from functions.core.generation.breaker import CircuitBreaker, breaker_for
from functions.core.generation.sse import SseDecoder
from functions.core.observability import logger
from functions.core.settings import Settings

RETRY_BASE_S = 0.2
RETRY_CAP_S = 2.0
SERVER_CODES = frozenset({"InternalFailure", "ServiceUnavailable", "InternalDependencyException",
                          "ModelStreamError", "InternalStreamFailure"})  # the last two: a broken stream
T = TypeVar("T")

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

    # --- sync ---------------------------------------------------------------------------------------
    def _kwargs(self, payload: dict, accept: str) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"EndpointName": self.endpoint, "Body": json.dumps(payload).encode(),
                                  "ContentType": "application/json", "Accept": accept}
        if self.settings.heavy_inference_component:
            kwargs["InferenceComponentName"] = self.settings.heavy_inference_component
        return kwargs

    def invoke(self, payload: dict) -> dict:
        """POST ``payload`` (TGI Messages/Completions JSON) to the endpoint; return its JSON answer."""
        kwargs = self._kwargs(payload, "application/json")
        return self._with_retries(lambda: self._attempt(kwargs))

    def invoke_stream(self, payload: dict) -> Iterator[dict]:
        """``invoke_endpoint_with_response_stream`` with ``stream: true``: TGI's SSE chunks, as dicts.

        Returns once the first chunk has arrived, so everything before it (throttling, 5xx, a cold
        endpoint, a refusal) is retried, counted by the breaker and raised as for ``invoke``: the
        caller can still answer with a plain JSON error. Failures after it are raised from the
        iterator (a CirrusError; the breaker has been told). Closing the iterator closes the
        connection, which is how the endpoint learns that nobody reads any more.
        """
        kwargs = self._kwargs({**payload, "stream": True}, "text/event-stream")
        return self._with_retries(lambda: self._open_stream(kwargs))

    def _with_retries(self, attempt_once: Callable[[], T]) -> T:
        self.require_enabled()
        assert self.breaker is not None
        attempts = self.settings.heavy_max_attempts
        last: CirrusError | None = None
        for attempt in range(1, attempts + 1):
            probe = self.breaker.before_call()  # raises 503 at once while the breaker is open
            started = time.perf_counter()
            try:
                out = attempt_once()
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

    def _transport_error(self, exc: Exception) -> BaseException:
        """What a failed call or read means (the breaker told), as ``_attempt`` and the stream see it."""
        if isinstance(exc, ReadTimeoutError):
            self.breaker.failure("read timeout")
            return UpstreamTimeout(f"the generation endpoint did not answer within "
                                   f"{self.settings.heavy_read_timeout_s:g} s; for long generations stream the "
                                   f"answer (\"stream\": true) or send an async job (header 'Prefer: respond-async')")
        if isinstance(exc, (ConnectTimeoutError, EndpointConnectionError, ConnectionClosedError)):
            self.breaker.failure("connection failed")
            return _Retry(ModelUnavailable("the generation endpoint cannot be reached", code="endpoint_unreachable"))
        if isinstance(exc, ClientError):
            return self._classify(exc)
        self.breaker.failure(exc.__class__.__name__)
        return _Retry(ModelUnavailable("the generation endpoint call failed", code="endpoint_error"))

    def _open_stream(self, kwargs: dict[str, Any]) -> Iterator[dict]:
        try:
            resp = self.client.invoke_endpoint_with_response_stream(**kwargs)
        except (ClientError, BotoCoreError) as exc:
            raise self._transport_error(exc) from exc
        body = resp["Body"]
        chunks = self._chunks(body)
        try:
            first = next(chunks)
        except StopIteration:
            body.close()
            self.breaker.failure("empty stream")
            raise _Retry(ModelUnavailable("the generation endpoint ended the stream without an answer",
                                          code="bad_endpoint_response")) from None
        except BaseException:
            body.close()
            raise
        return self._rest(first, chunks, body)

    @staticmethod
    def _rest(first: dict, chunks: Iterator[dict], body: Any) -> Iterator[dict]:
        try:
            yield first
            try:
                yield from chunks
            except _Retry as r:  # too late to retry: the client has the first tokens
                raise r.err from r
        finally:
            body.close()  # also when the consumer stops early: the endpoint sees the connection go

    def _chunks(self, body: Any) -> Iterator[dict]:
        """TGI chunks from the event stream's payload parts; errors become CirrusErrors (breaker told)."""
        from urllib3.exceptions import HTTPError, ReadTimeoutError as SocketReadTimeout

        decoder = SseDecoder()
        events = iter(body)
        while True:
            try:
                ev = next(events)
            except StopIteration:
                break
            except SocketReadTimeout as exc:
                # Between two events: botocore's read timeout is an idle timeout here.
                raise self._transport_error(ReadTimeoutError(endpoint_url=self.endpoint or "")) from exc
            except HTTPError as exc:  # the connection broke mid-stream
                raise self._transport_error(ConnectionClosedError(endpoint_url=self.endpoint or "")) from exc
            except (ClientError, BotoCoreError) as exc:
                # ModelStreamError / InternalStreamFailure arrive as EventStreamError (a ClientError).
                raise self._transport_error(exc) from exc
            part = ev.get("PayloadPart", {}).get("Bytes", b"")
            for data in decoder.feed(part):
                chunk = self._chunk(data)
                if chunk is not None:
                    yield chunk
        for data in decoder.close():
            chunk = self._chunk(data)
            if chunk is not None:
                yield chunk

    def _chunk(self, data: str) -> dict | None:
        if data.strip() == "[DONE]":
            return None
        try:
            chunk = json.loads(data)
            if not isinstance(chunk, dict):
                raise ValueError("not an object")
        except ValueError as exc:
            self.breaker.failure("unreadable stream event")
            raise ModelUnavailable("the generation endpoint sent an unreadable stream event",
                                   code="bad_endpoint_response") from exc
        if "error" in chunk and "choices" not in chunk:
            # TGI reports a failure inside the stream as {"error": "...", "error_type": "..."}.
            if chunk.get("error_type") == "validation":
                raise ValidationFailed(f"the model refused the request: {_container_message(chunk)}",
                                       code="model_refused")
            self.breaker.failure("generation error")
            raise _Retry(ModelUnavailable("the generation endpoint failed while generating", code="endpoint_error"))
        return chunk

    def _attempt(self, kwargs: dict[str, Any]) -> dict:
        try:
            resp = self.client.invoke_endpoint(**kwargs)
            raw = resp["Body"].read()
        except (ClientError, BotoCoreError) as exc:
            raise self._transport_error(exc) from exc
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
