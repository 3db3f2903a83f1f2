"""functions/stream_runtime.py against a Runtime API over loopback HTTP (the protocol Lambda speaks).

The fake Runtime API below hands out one invocation and reads the streamed response the way
Lambda does: chunked transfer, the streaming headers, the error trailers.
"""
from __future__ import annotations

import base64
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from functions import stream_runtime
from functions.core.http.stream import SEPARATOR, integration_response, read_prelude

EVENT = {"httpMethod": "POST", "path": "/v1/chat/completions", "body": "{}"}
REQUEST_ID = "8476a536-e9f4-11e8-9739-2dfe598c3fcd"


class FakeRuntimeApi:
    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.trailers: dict[str, str] = {}
        self.headers: dict[str, str] = {}
        self.errors: list[tuple[str, dict]] = []
        self.first_chunk = threading.Event()
        self.done = threading.Event()
        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802
                body = json.dumps(EVENT).encode()
                self.send_response(200)
                self.send_header("Lambda-Runtime-Aws-Request-Id", REQUEST_ID)
                self.send_header("Lambda-Runtime-Deadline-Ms", "9999999999999")
                self.send_header("Lambda-Runtime-Trace-Id", "Root=1-5759e988-bd862e3fe1be46a994272793")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self) -> None:  # noqa: N802
                api.headers = {k.lower(): v for k, v in self.headers.items()}
                if self.path.endswith("/error"):
                    api.errors.append((self.path, json.loads(self.rfile.read(int(self.headers["Content-Length"])))))
                else:
                    while True:
                        size = int(self.rfile.readline().strip(), 16)
                        if size == 0:
                            break
                        api.chunks.append(self.rfile.read(size))
                        self.rfile.readline()
                        api.first_chunk.set()
                    while (line := self.rfile.readline().strip()):
                        k, _, v = line.decode().partition(": ")
                        api.trailers[k] = v
                self.send_response(202)
                self.send_header("Content-Length", "0")
                self.end_headers()
                api.done.set()

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.address = f"127.0.0.1:{self.httpd.server_address[1]}"

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def runtime_api():
    api = FakeRuntimeApi()
    yield api
    api.stop()


def test_each_piece_reaches_the_runtime_api_before_the_next_is_produced(runtime_api):
    seen_before_second = []

    def handler(event, ctx):
        assert event == EVENT and ctx.aws_request_id == REQUEST_ID
        assert ctx.get_remaining_time_in_millis() > 0

        def body():
            yield b"data: one\n\n"
            # The runtime must have sent the first piece already: wait for the Runtime API to have it.
            seen_before_second.append(runtime_api.first_chunk.wait(5))
            yield b"data: two\n\n"
        return integration_response({"statusCode": 200, "headers": {"Content-Type": "text/event-stream"}}, body())

    stream_runtime.serve(stream_runtime.RuntimeClient(runtime_api.address), handler, invocations=1)
    assert runtime_api.done.wait(5)
    assert seen_before_second == [True]
    h = runtime_api.headers
    assert h["lambda-runtime-function-response-mode"] == "streaming"
    assert h["content-type"] == "application/vnd.awslambda.http-integration-response"
    assert h["transfer-encoding"] == "chunked"
    prelude, rest = read_prelude(iter(runtime_api.chunks))
    assert prelude == {"statusCode": 200, "headers": {"Content-Type": "text/event-stream"},
                       "multiValueHeaders": {}, "cookies": []}
    assert runtime_api.chunks[0].endswith(SEPARATOR)
    assert rest + b"".join(runtime_api.chunks[1:]) == b"data: one\n\ndata: two\n\n"
    assert runtime_api.trailers == {}


def test_a_failure_mid_stream_is_reported_in_the_error_trailers(runtime_api):
    def handler(event, ctx):
        def body():
            yield b"data: one\n\n"
            raise RuntimeError("boom")
        return integration_response({"statusCode": 200, "headers": {}}, body())

    stream_runtime.serve(stream_runtime.RuntimeClient(runtime_api.address), handler, invocations=1)
    assert runtime_api.done.wait(5)
    assert runtime_api.trailers["Lambda-Runtime-Function-Error-Type"] == "RuntimeError"
    err = json.loads(base64.b64decode(runtime_api.trailers["Lambda-Runtime-Function-Error-Body"]))
    assert err == {"errorType": "RuntimeError", "errorMessage": "boom"}


def test_a_failure_before_the_first_byte_is_an_invocation_error(runtime_api):
    def handler(event, ctx):
        raise ValueError("bad handler")

    stream_runtime.serve(stream_runtime.RuntimeClient(runtime_api.address), handler, invocations=1)
    assert runtime_api.done.wait(5)
    path, body = runtime_api.errors[0]
    assert path == f"/2018-06-01/runtime/invocation/{REQUEST_ID}/error"
    assert body == {"errorType": "ValueError", "errorMessage": "bad handler"}
    assert not runtime_api.chunks


def test_the_exec_wrapper_is_an_executable_that_starts_this_runtime():
    wrapper = Path(stream_runtime.__file__).parent / "bin" / "stream-runtime"
    assert wrapper.stat().st_mode & 0o111, "the exec wrapper must be executable (the zip keeps the mode)"
    text = wrapper.read_text()
    assert text.startswith("#!/bin/sh\n") and "-m functions.stream_runtime" in text
