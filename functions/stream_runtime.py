"""A Lambda Runtime API client that streams: next invocation → handler → chunked response, in a loop.

Python's managed runtime answers an invocation only with a whole (buffered) payload. API Gateway's
STREAM transfer mode invokes the function with ``InvokeWithResponseStream`` and passes on what the
function streams, so the ``generation`` function runs this loop instead (started by
``functions/bin/stream-runtime``, its ``AWS_LAMBDA_EXEC_WRAPPER``). The handler (``_HANDLER``,
``module.function``) is the same one the local gateway calls: it takes the proxy event and a
context and returns an iterator of bytes, already in the integration format (prelude, 8 NULs,
payload; functions/core/http/stream.py). Each piece is sent as one HTTP chunk as soon as it
exists. A failure before anything was sent is reported as an invocation error; one after it as
the ``Lambda-Runtime-Function-Error-*`` trailers, which is how a streamed invocation fails.
"""
from __future__ import annotations

import base64
import http.client
import importlib
import json
import os
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from typing import Any

API_VERSION = "2018-06-01"
STREAM_CONTENT_TYPE = "application/vnd.awslambda.http-integration-response"
_ERROR_TYPE = "Lambda-Runtime-Function-Error-Type"
_ERROR_BODY = "Lambda-Runtime-Function-Error-Body"


class Context:
    """The context object handlers get (the attributes Powertools and Cirrus read)."""

    def __init__(self, headers: http.client.HTTPMessage) -> None:
        self.aws_request_id = headers["Lambda-Runtime-Aws-Request-Id"]
        self.invoked_function_arn = headers.get("Lambda-Runtime-Invoked-Function-Arn", "")
        self._deadline_ms = int(headers.get("Lambda-Runtime-Deadline-Ms") or 0)
        self.function_name = os.environ.get("AWS_LAMBDA_FUNCTION_NAME", "")
        self.function_version = os.environ.get("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
        self.memory_limit_in_mb = int(os.environ.get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE") or 0)
        self.log_group_name = os.environ.get("AWS_LAMBDA_LOG_GROUP_NAME", "")
        self.log_stream_name = os.environ.get("AWS_LAMBDA_LOG_STREAM_NAME", "")
        self.identity = None
        self.client_context = None

    def get_remaining_time_in_millis(self) -> int:
        return max(0, self._deadline_ms - int(time.time() * 1000))


def _error_body(exc: BaseException) -> dict[str, Any]:
    # Type and message only: a stack trace could carry request text from a local variable's repr.
    return {"errorType": type(exc).__name__, "errorMessage": str(exc)[:1000]}


class RuntimeClient:
    """One connection to the Runtime API (``AWS_LAMBDA_RUNTIME_API``, host:port)."""

    def __init__(self, address: str) -> None:
        host, _, port = address.partition(":")
        self.host, self.port = host, int(port or 80)

    def _conn(self, timeout: float | None = None) -> http.client.HTTPConnection:
        return http.client.HTTPConnection(self.host, self.port, timeout=timeout)

    def next(self) -> tuple[Any, Context]:
        conn = self._conn()  # no timeout: the call blocks until there is an invocation
        conn.request("GET", f"/{API_VERSION}/runtime/invocation/next")
        resp = conn.getresponse()
        body = resp.read()
        conn.close()
        if resp.status != 200:
            raise RuntimeError(f"Runtime API /next answered {resp.status}")
        trace = resp.headers.get("Lambda-Runtime-Trace-Id")
        if trace:
            os.environ["_X_AMZN_TRACE_ID"] = trace  # the X-Ray SDK reads the invocation's trace here
        return json.loads(body), Context(resp.headers)

    def _post(self, path: str, body: bytes, headers: dict[str, str]) -> int:
        conn = self._conn(timeout=10)
        conn.request("POST", path, body=body, headers=headers)
        status = conn.getresponse().status
        conn.close()
        return status

    def init_error(self, exc: BaseException) -> None:
        self._post(f"/{API_VERSION}/runtime/init/error", json.dumps(_error_body(exc)).encode(),
                   {"Content-Type": "application/json", "Lambda-Runtime-Function-Error-Type": "Runtime.InitError"})

    def invocation_error(self, request_id: str, exc: BaseException) -> None:
        self._post(f"/{API_VERSION}/runtime/invocation/{request_id}/error", json.dumps(_error_body(exc)).encode(),
                   {"Content-Type": "application/json", _ERROR_TYPE: type(exc).__name__})

    def stream(self, request_id: str, chunks: Iterator[bytes]) -> int:
        """Send ``chunks`` as a streamed response (chunked transfer); returns the Runtime API's status."""
        conn = self._conn()
        conn.putrequest("POST", f"/{API_VERSION}/runtime/invocation/{request_id}/response")
        conn.putheader("Lambda-Runtime-Function-Response-Mode", "streaming")
        conn.putheader("Content-Type", STREAM_CONTENT_TYPE)
        conn.putheader("Transfer-Encoding", "chunked")
        conn.putheader("Trailer", f"{_ERROR_TYPE}, {_ERROR_BODY}")
        conn.endheaders()
        failure: BaseException | None = None
        try:
            try:
                for chunk in chunks:
                    if chunk:
                        conn.send(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            except (BrokenPipeError, ConnectionResetError):
                raise  # the Runtime API closed the stream (the caller went away): nothing more to say
            except Exception as exc:  # noqa: BLE001 - reported to Lambda in the trailers
                failure = exc
                print(f"streamed invocation failed: {type(exc).__name__}", file=sys.stderr)
                traceback.print_exc()
            if failure is None:
                conn.send(b"0\r\n\r\n")
            else:
                encoded = base64.b64encode(json.dumps(_error_body(failure)).encode()).decode()
                conn.send(f"0\r\n{_ERROR_TYPE}: {type(failure).__name__}\r\n{_ERROR_BODY}: {encoded}\r\n\r\n".encode())
            status = conn.getresponse().status
        finally:
            close = getattr(chunks, "close", None)
            if close:
                close()  # stops the generation if the loop above ended early
            conn.close()
        return status


def load_handler(spec: str) -> Callable[[Any, Context], Iterator[bytes]]:
    module, _, name = spec.rpartition(".")
    return getattr(importlib.import_module(module), name)


def serve(client: RuntimeClient, handler: Callable[[Any, Context], Iterator[bytes]],
          invocations: int | None = None) -> None:
    """The invocation loop (``invocations``: stop after that many; None, as in Lambda: forever)."""
    done = 0
    while invocations is None or done < invocations:
        event, ctx = client.next()
        try:
            chunks = iter(handler(event, ctx))
            first = next(chunks, b"")  # a failure before any byte is a plain invocation error
        except Exception as exc:  # noqa: BLE001
            traceback.print_exc()
            client.invocation_error(ctx.aws_request_id, exc)
        else:
            try:
                client.stream(ctx.aws_request_id, _prepend(first, chunks))
            except (BrokenPipeError, ConnectionResetError):
                print("streamed response closed by the Runtime API", file=sys.stderr)
        done += 1


def _prepend(first: bytes, rest: Iterator[bytes]) -> Iterator[bytes]:
    try:
        yield first
        yield from rest
    finally:
        close = getattr(rest, "close", None)
        if close:
            close()


def main() -> None:
    client = RuntimeClient(os.environ["AWS_LAMBDA_RUNTIME_API"])
    try:
        handler = load_handler(os.environ["_HANDLER"])
    except Exception as exc:  # noqa: BLE001
        traceback.print_exc()
        client.init_error(exc)
        sys.exit(1)
    serve(client, handler)


if __name__ == "__main__":
    main()
