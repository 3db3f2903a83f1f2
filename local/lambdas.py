"""In-process Lambda functions: a handler by import path, a Lambda-like context, one container each."""
from __future__ import annotations

import importlib
import logging
import threading
import time
import uuid
from dataclasses import dataclass
from collections.abc import Iterator
from typing import Any, Callable

from local.config import ACCOUNT_ID, REGION

log = logging.getLogger("local.lambda")


@dataclass
class LambdaContext:
    """The attributes and method of the context object the Python Lambda runtime passes."""

    function_name: str
    memory_limit_in_mb: int
    timeout_s: float
    aws_request_id: str
    function_version: str = "$LATEST"

    def __post_init__(self) -> None:
        self._deadline = time.monotonic() + self.timeout_s
        self.invoked_function_arn = f"arn:aws:lambda:{REGION}:{ACCOUNT_ID}:function:{self.function_name}"
        self.log_group_name = f"/aws/lambda/{self.function_name}"
        self.log_stream_name = time.strftime("%Y/%m/%d/[$LATEST]") + uuid.uuid4().hex
        self.identity = None
        self.client_context = None

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.monotonic()) * 1000))


class LambdaFunction:
    """One function = one warm container: its handler is imported once and runs one event at a time.

    Handlers keep per-container state in module globals (the Powertools resolver, model sessions),
    which is safe in Lambda because a container serves one request at a time. The lock keeps that
    true here, where the gateway and the pollers call from several threads.
    """

    def __init__(self, name: str, handler: str | Callable[[dict, Any], Any], *,
                 timeout_s: float = 30, memory_mb: int = 2048) -> None:
        self.name = name
        self._handler_ref = handler
        self._handler: Callable[[dict, Any], Any] | None = handler if callable(handler) else None
        self.timeout_s = timeout_s
        self.memory_mb = memory_mb
        self._lock = threading.Lock()
        self.invocations = 0
        self.errors = 0

    def load(self) -> Callable[[dict, Any], Any]:
        """Import the handler (the cold start). Raises ImportError if its module is not there yet."""
        if self._handler is None:
            module_name, _, attr = str(self._handler_ref).rpartition(".")
            self._handler = getattr(importlib.import_module(module_name), attr)
        return self._handler

    def _context(self) -> LambdaContext:
        """A fresh invocation context, as Lambda gives each request."""
        return LambdaContext(function_name=self.name, memory_limit_in_mb=self.memory_mb,
                             timeout_s=self.timeout_s, aws_request_id=str(uuid.uuid4()))

    def invoke(self, event: dict) -> Any:
        """Run the handler on ``event``; exceptions propagate like a Lambda function error."""
        with self._lock:
            handler = self.load()
            ctx = self._context()
            start = time.perf_counter()
            self.invocations += 1
            try:
                return handler(event, ctx)
            except BaseException:
                self.errors += 1
                raise
            finally:
                # The same REPORT line Lambda writes: ids and timings only, never the payload.
                log.info("REPORT function=%s request_id=%s duration_ms=%.1f", self.name,
                         ctx.aws_request_id, (time.perf_counter() - start) * 1000)

    def invoke_stream(self, event: dict) -> Iterator[bytes]:
        """Run a streaming handler (it returns an iterator of bytes): the pieces as they come.

        The container stays busy until the stream ends or is closed (a client that went away), and
        a stream running past the function timeout is cut as Lambda cuts it.
        """
        with self._lock:
            handler = self.load()
            ctx = self._context()
            start = time.perf_counter()
            self.invocations += 1
            chunks: Any = None
            try:
                chunks = iter(handler(event, ctx))
                for chunk in chunks:
                    yield chunk
                    if ctx.get_remaining_time_in_millis() == 0:
                        raise TimeoutError(f"{self.name} timed out after {self.timeout_s:g} s")
            except GeneratorExit:
                raise
            except BaseException:
                self.errors += 1
                raise
            finally:
                close = getattr(chunks, "close", None)
                if close:
                    close()
                log.info("REPORT function=%s request_id=%s duration_ms=%.1f streamed=true", self.name,
                         ctx.aws_request_id, (time.perf_counter() - start) * 1000)
