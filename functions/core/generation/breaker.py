"""A circuit breaker per heavy endpoint, so a dead or cold GPU endpoint costs callers milliseconds.

Closed: calls pass; ``failures`` consecutive failures open it. Open: calls are refused at once
with 503 + Retry-After until ``reset_s`` passed. Half-open: exactly one probe call is let through;
its success closes the breaker, its failure opens it again for another ``reset_s``; an outcome that is
neither (throttled, a refusal of our own making) hands the probe back with ``release_probe``.
State lives in the container (each Lambda container learns on its own, which is enough to stop
one container from piling 25-second timeouts onto a dead endpoint).
"""
from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from typing import Literal

from functions.core.errors import ModelUnavailable

State = Literal["closed", "open", "half_open"]


class CircuitBreaker:
    def __init__(self, name: str, *, failures: int, reset_s: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.name = name
        self.failures = failures
        self.reset_s = reset_s
        self._clock = clock
        self._lock = threading.Lock()
        self._state: State = "closed"
        self._count = 0
        self._opened_at = 0.0
        self._open_for = reset_s
        self._probing = False
        self.last_reason = ""

    @property
    def state(self) -> State:
        with self._lock:
            self._tick()
            return self._state

    def _tick(self) -> None:
        if self._state == "open" and self._clock() - self._opened_at >= self._open_for:
            self._state, self._probing = "half_open", False

    @property
    def consecutive_failures(self) -> int:
        """Failures counted since the last success (what opens the breaker at ``failures``)."""
        with self._lock:
            return self._count

    def retry_after(self) -> int:
        with self._lock:
            left = self._open_for - (self._clock() - self._opened_at)
        return max(1, math.ceil(left))

    def before_call(self) -> bool:
        """Raise 503 if no call may go out now; in half-open, admit one probe (returns True for it)."""
        with self._lock:
            self._tick()
            if self._state == "closed":
                return False
            if self._state == "half_open" and not self._probing:
                self._probing = True
                return True
            wait = max(1, math.ceil(self._open_for - (self._clock() - self._opened_at))) \
                if self._state == "open" else 1
            reason = self.last_reason
        raise ModelUnavailable(
            f"the generation endpoint is unavailable ({reason or 'recent failures'}); retry in {wait} s",
            code="endpoint_unavailable", retry_after=wait)

    def success(self) -> None:
        with self._lock:
            self._state, self._count, self._probing, self.last_reason = "closed", 0, False, ""

    def release_probe(self) -> None:
        """The probe ended with neither success() nor failure(): let the next call probe again,
        instead of refusing every call forever while a probe nobody is waiting for stays "out"."""
        with self._lock:
            if self._state == "half_open":
                self._probing = False

    def failure(self, reason: str) -> None:
        with self._lock:
            self._count += 1
            self.last_reason = reason
            if self._state == "half_open" or self._count >= self.failures:
                self._open(self.reset_s)

    def trip(self, reason: str, seconds: float | None = None) -> None:
        """Open now (e.g. the endpoint says it is scaling from zero: no point asking again soon)."""
        with self._lock:
            self.last_reason = reason
            self._open(seconds or self.reset_s)

    def _open(self, seconds: float) -> None:
        self._state, self._opened_at, self._open_for, self._probing = "open", self._clock(), seconds, False


_breakers: dict[str, CircuitBreaker] = {}
_guard = threading.Lock()


def breaker_for(endpoint: str, *, failures: int, reset_s: float) -> CircuitBreaker:
    """The container's breaker for ``endpoint`` (created on first use)."""
    with _guard:
        found = _breakers.get(endpoint)
        if found is None:
            found = _breakers[endpoint] = CircuitBreaker(endpoint, failures=failures, reset_s=reset_s)
        return found


def reset_breakers() -> None:
    """Forget all breaker state (tests)."""
    with _guard:
        _breakers.clear()
