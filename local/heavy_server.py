"""A local stand-in for the heavy SageMaker endpoint, serving an ONNX generation bundle over real HTTP.

It speaks both sides of SageMaker: the runtime API (``POST /endpoints/<name>/invocations``,
``/invocations-response-stream`` in AWS event-stream framing as botocore parses it, and
``/async-invocations``, so boto3 ``sagemaker-runtime`` with ``endpoint_url`` runs the production
client unchanged) and the container contract (``GET /ping``, ``POST /invocations``) with TGI's
Messages API payloads, ``stream: true`` answered with TGI's server-sent events. Like a real
container it answers every request: bad input is a 422 (TGI's input validation), a crash while
generating is a 500 with a JSON body, never a dropped connection. Faults can be queued (throttle,
5xx, slow, not-ready, drop, down, a stream that breaks or crawls) to exercise the client's retries,
timeouts and circuit breaker, from Python (``inject``) or from another process
(``POST /_faults {"faults": [...]}``); ``/ping`` also reports open and abandoned streams.

    python -m local.heavy_server --port 8081 --bundle .cache/bundles/cirrus-tiny-gpt2 --endpoint cirrus-heavy
"""
from __future__ import annotations

import argparse
import json
import logging
import re
import socket
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from functions.core.errors import CirrusError
from functions.core.generation.tgi import Tool
from functions.core.inference.generator import Delta, OnnxGenerator
from functions.core.generation.schemas import (ChatCompletionRequest, CompletionRequest, chat_completion_body,
                                               completion_body)
from local import eventstream

ACCOUNT = "000000000000"
FAULTS = ("throttle", "error", "slow", "not_ready", "no_capacity", "drop", "break_stream", "slow_tokens")
log = logging.getLogger("local.heavy_server")
_ENDPOINT_PATH = re.compile(r"^/endpoints/([^/]+)/(invocations|invocations-response-stream|async-invocations)$")
_GONE = (BrokenPipeError, ConnectionResetError, ConnectionAbortedError)


class HeavyServer:
    """Start/stop API for tests and the local system: ``HeavyServer(bundle).start()`` → ``.url``."""

    def __init__(self, bundle_dir: Path | str, *, endpoint: str = "cirrus-heavy", port: int = 0,
                 host: str = "127.0.0.1", async_output: str | None = None, async_failure: str | None = None,
                 s3_client: Any = None) -> None:
        self.generator = OnnxGenerator(Path(bundle_dir))
        self.endpoint = endpoint
        # s3://bucket/prefix URIs, as the endpoint config's S3OutputPath / S3FailurePath; without a
        # failure path, failures land beside the results.
        self.async_output = async_output
        self.async_failure = async_failure or async_output
        self._s3 = s3_client
        self.faults: deque[tuple[str, float]] = deque()
        self.down = False  # every runtime call fails with 5xx while True (endpoint broken)
        self.calls = 0     # runtime API invocations seen (tests count retries with it)
        # Streams whose reader went away, and the tokens each had generated when it stopped (tests
        # check that a closed connection stops the generation).
        self.abandoned: list[int] = []
        self.streams_open = 0
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer((host, port), _handler_for(self))
        self._httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> "HeavyServer":
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="heavy-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread:
            self._thread.join(timeout=5)

    def __enter__(self) -> "HeavyServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def inject(self, *faults: str) -> None:
        """Queue faults for the next runtime calls, one each: ``throttle``, ``error``, ``not_ready``,
        ``no_capacity``, ``drop`` (close the connection without answering), ``slow:<seconds>`` (before
        answering), ``break_stream:<n>`` (a streamed answer ends with a ModelStreamError after n tokens)
        or ``slow_tokens:<seconds>`` (a streamed answer waits this long before each token)."""
        with self._lock:
            for f in faults:
                kind, _, arg = f.partition(":")
                if kind not in FAULTS:
                    raise ValueError(f"unknown fault {f!r} (choose from {', '.join(FAULTS)})")
                self.faults.append((kind, float(arg or 0)))

    def _next_fault(self) -> tuple[str, float] | None:
        with self._lock:
            self.calls += 1
            if self.down:
                return ("error", 0.0)
            return self.faults.popleft() if self.faults else None

    # --- the model -----------------------------------------------------------------------------------
    def run(self, payload: Any, pace_s: float = 0.0) -> tuple[int, dict]:
        """The container's /invocations: TGI-style chat (``messages``) or completion (``prompt``).

        ``pace_s``: seconds per token (the ``slow_tokens`` fault), as the streamed answer is paced.
        """
        if not isinstance(payload, dict):
            return 422, {"error": "expected a JSON object", "error_type": "validation"}
        payload = {k: v for k, v in payload.items() if v is not None}
        try:
            fingerprint, token_text = f"local-{self.generator.version}", self.generator.token_text
            if "messages" in payload:
                # TGI's own shapes for tools and grammars (not OpenAI's): read them as TGI does.
                tgi = {k: payload.pop(k) for k in ("tools", "tool_choice", "parallel_tool_calls",
                                                   "response_format") if k in payload}
                req = ChatCompletionRequest.model_validate(payload)
                structured = _structured(tgi)
                if isinstance(structured, tuple):
                    return structured
                gens = self.generator.chat(req.turns(), req.sampling(20))
                time.sleep(pace_s * sum(g.completion_tokens for g in gens))  # as long as the paced stream
                body = chat_completion_body(req.model, gens, fingerprint=fingerprint, token_text=token_text)
                if structured is not None:
                    _apply(body, structured)
                return 200, body
            req2 = CompletionRequest.model_validate(payload)
            gens = self.generator.complete(req2.text(), req2.sampling(20))
            time.sleep(pace_s * sum(g.completion_tokens for g in gens))
            return 200, completion_body(req2.model, gens, fingerprint=fingerprint, token_text=token_text)
        except Exception as exc:  # noqa: BLE001 - a real container answers, it does not hang up
            return _refusal(exc)

    def open_stream(self, payload: Any) -> tuple[int, dict] | tuple[int, "TgiStream"]:
        """TGI's ``stream: true``: 200 and the SSE events to send, or the refusal as ``run`` gives it."""
        if not isinstance(payload, dict):
            return 422, {"error": "expected a JSON object", "error_type": "validation"}
        payload = {k: v for k, v in payload.items() if v is not None}
        try:
            chat = "messages" in payload
            req = (ChatCompletionRequest if chat else CompletionRequest).model_validate(payload)
            ids = self.generator.encode_chat(req.turns()) if chat else self.generator.encode(req.text())
            state = self.generator.prefill(ids)  # the prompt's checks, before the 200
            deltas = self.generator.stream(ids, req.sampling(20), state=state)
        except Exception as exc:  # noqa: BLE001 - a real container answers, it does not hang up
            return _refusal(exc)
        return 200, TgiStream(deltas, len(ids), req.model, chat=chat, include_usage=req.include_usage,
                              fingerprint=f"local-{self.generator.version}")

    # --- async ---------------------------------------------------------------------------------------
    def s3(self) -> Any:
        if self._s3 is None:
            import boto3  # endpoint from AWS_ENDPOINT_URL: the local moto server

            self._s3 = boto3.client("s3")
        return self._s3

    def run_async(self, input_location: str, output_uri: str, failure_uri: str) -> None:
        def split(uri: str) -> tuple[str, str]:
            bucket, _, key = uri[5:].partition("/")
            return bucket, key

        try:
            bucket, key = split(input_location)
            payload = json.loads(self.s3().get_object(Bucket=bucket, Key=key)["Body"].read())
            status, body = self.run(payload)
        except Exception as exc:  # noqa: BLE001 - any failure must land in the failure file
            status, body = 500, {"error": f"{exc.__class__.__name__}", "error_type": "internal"}
        bucket, key = split(output_uri if status == 200 else failure_uri)
        self.s3().put_object(Bucket=bucket, Key=key, Body=json.dumps(body).encode(), ContentType="application/json")


def _refusal(exc: Exception) -> tuple[int, dict]:
    """What a container answers when a request fails: 422 for the request's own fault, 500 otherwise."""
    if isinstance(exc, ValidationError):
        first = exc.errors(include_url=False, include_input=False)[0]
        where = ".".join(str(p) for p in first["loc"])
        return 422, {"error": f"Input validation error: {where}: {first['msg']}", "error_type": "validation"}
    if isinstance(exc, CirrusError):  # e.g. prompt longer than the context window
        return 422, {"error": exc.message, "error_type": "validation"}
    if isinstance(exc, (ValueError, TypeError, OverflowError)):
        # A value the schema let through but the sampler cannot take (e.g. a seed numpy refuses):
        # still the request's fault, so TGI's answer to it, 422, not a crash.
        return 422, {"error": f"Input validation error: {exc.__class__.__name__}", "error_type": "validation"}
    log.exception("generation failed")
    return 500, {"error": f"generation failed: {exc.__class__.__name__}", "error_type": "generation"}


# --- tools and grammars, as TGI answers them -------------------------------------------------------
# TGI constrains decoding with a grammar so the reply matches a tool's parameters or a JSON schema.
# This ONNX stand-in has no grammar engine: it answers with the smallest instance of the schema, in
# TGI 3.0's wire shape (tool-call arguments as an object, ids "0", finish_reason "eos_token"), so the
# production translation (functions/core/generation/tgi.py) runs against the shape TGI sends.
def minimal_instance(schema: Any) -> Any:
    """The smallest value valid for a (simple) JSON schema: required properties only."""
    if not isinstance(schema, dict):
        return {}
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return schema["enum"][0]
    for key in ("anyOf", "oneOf", "allOf"):
        if schema.get(key):
            return minimal_instance(schema[key][0])
    kind = schema.get("type", "object")
    kind = kind[0] if isinstance(kind, list) and kind else kind
    if kind == "object":
        props = schema.get("properties") or {}
        return {name: minimal_instance(props.get(name, {})) for name in schema.get("required", [])}
    if kind == "array":
        return [minimal_instance(schema.get("items", {}))] * int(schema.get("minItems", 0))
    if kind in ("integer", "number"):
        return schema.get("minimum", 0)
    if kind == "boolean":
        return False
    if kind == "null":
        return None
    return "x" * int(schema.get("minLength", 0))


def _structured(tgi: dict[str, Any]) -> dict[str, Any] | tuple[int, dict] | None:
    """What the reply must be (a tool call or a JSON document), or TGI's 422 for a malformed field."""
    def refuse(msg: str) -> tuple[int, dict]:
        return 422, {"error": f"Input validation error: {msg}", "error_type": "validation"}

    choice = tgi.get("tool_choice", "auto")
    if tgi.get("tools") and choice != "none":
        try:
            tools = [Tool.model_validate(t) for t in tgi["tools"]]
        except ValidationError:
            return refuse("tools: expected a list of {type: function, function: {name, parameters}}")
        wanted = choice.get("function", {}).get("name") if isinstance(choice, dict) else None
        found = [t for t in tools if wanted in (None, t.function.name)]
        if not found:
            return refuse(f"tool_choice: no tool named {wanted!r}")
        fn = found[0].function
        return {"tool_call": {"id": "0", "type": "function",
                              "function": {"description": None, "name": fn.name,
                                           "arguments": minimal_instance(fn.parameters or {})}}}
    grammar = tgi.get("response_format")
    if grammar is not None:
        if not isinstance(grammar, dict) or grammar.get("type") not in ("json", "json_object") \
                or not isinstance(grammar.get("value"), dict):
            return refuse("response_format: expected {type: json, value: <JSON schema>}")
        return {"json": minimal_instance(grammar["value"])}
    return None


def _apply(body: dict, structured: dict[str, Any]) -> None:
    choice = body["choices"][0]
    if "tool_call" in structured:
        choice["message"] = {"role": "assistant", "tool_calls": [structured["tool_call"]]}
    else:
        choice["message"]["content"] = json.dumps(structured["json"])
    choice["finish_reason"] = "eos_token"


def _handler_for(server: HeavyServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, fmt: str, *args: Any) -> None:  # quiet: tests and the local system log enough
            pass

        def _send(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
            raw = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(raw)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(raw)

        def _aws_error(self, status: int, code: str, message: str, **fields: Any) -> None:
            self._send(status, {"message": message, **fields}, {"x-amzn-ErrorType": code})

        def _body(self) -> bytes:
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def do_GET(self) -> None:  # noqa: N802
            if self.path == "/ping":
                with server._lock:
                    stats = {"streams_open": server.streams_open, "abandoned": list(server.abandoned)}
                self._send(200, {"status": "ok", "model": server.generator.name, **stats})
            else:
                self._send(404, {"error": "not found"})

        def do_POST(self) -> None:  # noqa: N802
            raw = self._body()
            if self.path == "/_faults":  # local only: queue faults from another process (integration tests)
                try:
                    server.inject(*json.loads(raw)["faults"])
                except (ValueError, KeyError, TypeError) as exc:
                    self._send(400, {"error": str(exc)})
                    return
                self._send(200, {"queued": len(server.faults)})
                return
            if self.path == "/invocations":  # the container contract
                try:
                    payload = json.loads(raw or b"null")
                except ValueError:
                    self._send(422, {"error": "body is not JSON", "error_type": "validation"})
                    return
                if isinstance(payload, dict) and payload.get("stream"):
                    status, out = server.open_stream(payload)
                    if status != 200:
                        self._send(status, out)
                        return
                    self._chunked(200, {"Content-Type": "text/event-stream"}, out, _container_event)
                    return
                self._send(*server.run(payload))
                return
            m = _ENDPOINT_PATH.match(self.path)
            if not m:
                self._send(404, {"error": "not found"})
                return
            name, kind = m.groups()
            if name != server.endpoint:
                self._aws_error(400, "ValidationError", f"Endpoint {name} of account {ACCOUNT} not found.")
                return
            if kind == "async-invocations":
                self._async(raw)
                return
            fault = server._next_fault()
            if fault and fault[0] in ("break_stream", "slow_tokens"):
                stream_fault, fault = fault, None
            else:
                stream_fault = None
            if fault and self._fault(*fault):
                return
            try:
                payload = json.loads(raw or b"null")
            except ValueError:
                payload = None
            if kind == "invocations-response-stream":
                self._stream(payload, stream_fault)
                return
            status, body = server.run(payload, stream_fault[1] if stream_fault and stream_fault[0] == "slow_tokens"
                                      else 0.0)
            if status != 200:
                # SageMaker wraps a container's non-2xx as ModelError (424) with the original status.
                side = "client" if status < 500 else "server"
                self._aws_error(424, "ModelError", f"Received {side} error ({status}) from primary",
                                OriginalStatusCode=status, OriginalMessage=json.dumps(body),
                                LogStreamArn="local")
                return
            self._send(200, body, {"x-Amzn-Invoked-Production-Variant": "AllTraffic"})

        def _stream(self, payload: Any, fault: tuple[str, float] | None) -> None:
            """InvokeEndpointWithResponseStream: TGI's SSE events, one PayloadPart each, as they come."""
            status, out = server.open_stream(payload)
            if status != 200:
                side = "client" if status < 500 else "server"
                self._aws_error(424, "ModelError", f"Received {side} error ({status}) from primary",
                                OriginalStatusCode=status, OriginalMessage=json.dumps(out), LogStreamArn="local")
                return
            assert isinstance(out, TgiStream)
            if fault is not None:
                out.fault = fault
            self._chunked(200, {"Content-Type": eventstream.CONTENT_TYPE,
                                "X-Amzn-SageMaker-Content-Type": "text/event-stream",
                                "x-Amzn-Invoked-Production-Variant": "AllTraffic"}, out, _runtime_event)

        def _chunked(self, status: int, headers: dict[str, str], events: "TgiStream", frame: Any) -> None:
            """HTTP/1.1 chunked transfer, one chunk per event, flushed; a reader that left stops the model."""
            self.send_response(status)
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            with server._lock:
                server.streams_open += 1
            try:
                for raw in events:
                    data = frame(raw)
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                    self.wfile.flush()
                self.wfile.write(b"0\r\n\r\n")
                self.wfile.flush()
            except _GONE:
                with server._lock:
                    server.abandoned.append(events.tokens)
                self.close_connection = True
            finally:
                events.close()
                with server._lock:
                    server.streams_open -= 1

        def _fault(self, kind: str, arg: float) -> bool:
            if kind == "drop":
                # The container died mid-request: no status line, the connection just closes.
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
                return True
            if kind == "slow":
                time.sleep(arg)
                return False  # then answer normally (the client may have given up already)
            if kind == "throttle":
                self._aws_error(400, "ThrottlingException", "Rate exceeded")
            elif kind == "not_ready":
                self._aws_error(429, "ModelNotReadyException", "Model is not ready")
            elif kind == "no_capacity":
                self._aws_error(400, "ValidationError", "Inference Component has no capacity to process this "
                                                        "request. ApplicationAutoScaling may be in-progress.")
            else:
                self._aws_error(424, "ModelError", "Received server error (500) from primary",
                                OriginalStatusCode=500, OriginalMessage='{"error": "CUDA out of memory"}',
                                LogStreamArn="local")
            return True

        def _async(self, raw: bytes) -> None:
            location = self.headers.get("X-Amzn-SageMaker-InputLocation")
            inference_id = self.headers.get("X-Amzn-SageMaker-Inference-Id") or f"local-{time.time_ns()}"
            if not location or not location.startswith("s3://"):
                self._aws_error(400, "ValidationError", "InputLocation must be an s3:// URI")
                return
            if not server.async_output:
                self._aws_error(400, "ValidationError", f"Endpoint {server.endpoint} is not an async endpoint")
                return
            output = f"{server.async_output.rstrip('/')}/{inference_id}.out"
            failure = f"{server.async_failure.rstrip('/')}/{inference_id}-error.out"
            threading.Thread(target=server.run_async, args=(location, output, failure), daemon=True).start()
            self._send(202, {"InferenceId": inference_id},
                       {"X-Amzn-SageMaker-OutputLocation": output, "X-Amzn-SageMaker-FailureLocation": failure})

    return Handler


@dataclass(frozen=True)
class StreamBreak:
    """The model failed mid-stream: SageMaker turns it into a ModelStreamError, TGI into an error event."""

    message: str


def _runtime_event(item: "bytes | StreamBreak") -> bytes:
    if isinstance(item, StreamBreak):
        return eventstream.exception("ModelStreamError", item.message, "ModelStreamError")
    return eventstream.payload_part(item)


def _container_event(item: "bytes | StreamBreak") -> bytes:
    if isinstance(item, StreamBreak):
        return b"data: " + json.dumps({"error": item.message, "error_type": "generation"}).encode() + b"\n\n"
    return item


class TgiStream:
    """TGI's streamed answer: one SSE event per token (role in every chat delta, ``finish_reason`` on the
    last token's chunk), a usage chunk if asked, ``data: [DONE]``. Its ``fault`` may break it."""

    def __init__(self, deltas: Iterator[Delta], prompt_tokens: int, model: str, *, chat: bool, include_usage: bool,
                 fingerprint: str) -> None:
        self.deltas, self.prompt_tokens = deltas, prompt_tokens
        self.tokens = 0  # generated so far (read while it runs: the abandoned-stream count)
        self.model, self.chat, self.include_usage, self.fingerprint = model, chat, include_usage, fingerprint
        self.fault: tuple[str, float] | None = None
        self.created = int(time.time())

    def _chunk(self, text: str, finish: str | None) -> bytes:
        choice = ({"index": 0, "delta": {"role": "assistant", "content": text}, "logprobs": None,
                   "finish_reason": finish} if self.chat else
                  {"index": 0, "text": text, "logprobs": None, "finish_reason": finish})
        body = {"id": "", "object": "chat.completion.chunk" if self.chat else "text_completion",
                "created": self.created, "model": self.model, "system_fingerprint": self.fingerprint,
                "choices": [choice], "usage": None}
        return b"data: " + json.dumps(body).encode() + b"\n\n"

    def __iter__(self) -> Any:
        kind, arg = self.fault or ("", 0.0)
        pending: str | None = None
        sent = 0
        while True:
            try:
                delta = next(self.deltas)
            except StopIteration as done:
                finish = done.value or "stop"
                break
            if delta.token_id >= 0:
                self.tokens += 1
            if not delta.text:
                continue
            if kind == "break_stream" and sent >= arg:
                yield StreamBreak("CUDA error: an illegal memory access")
                return
            if kind == "slow_tokens":
                time.sleep(arg)
            # One token behind, so the last token's chunk can carry finish_reason (as TGI does).
            if pending is not None:
                yield self._chunk(pending, None)
                sent += 1
            pending = delta.text
        yield self._chunk(pending or "", finish)
        if self.include_usage:
            usage = {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.tokens,
                     "total_tokens": self.prompt_tokens + self.tokens}
            yield b"data: " + json.dumps({"id": "", "object": "chat.completion.chunk" if self.chat else
                                          "text_completion", "created": self.created, "model": self.model,
                                          "choices": [], "usage": usage}).encode() + b"\n\n"
        yield b"data: [DONE]\n\n"

    def close(self) -> None:
        self.deltas.close()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m local.heavy_server", description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", required=True, help="a text-generation bundle folder")
    ap.add_argument("--port", type=int, default=8081)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--endpoint", default="cirrus-heavy", help="the SageMaker endpoint name to answer to")
    ap.add_argument("--async-output", default=None, help="s3://bucket/prefix for async results (S3OutputPath)")
    ap.add_argument("--async-failure", default=None,
                    help="s3://bucket/prefix for async failures (S3FailurePath; default: --async-output)")
    args = ap.parse_args(argv)
    srv = HeavyServer(args.bundle, endpoint=args.endpoint, port=args.port, host=args.host,
                      async_output=args.async_output, async_failure=args.async_failure).start()
    print(f"heavy stand-in: {srv.url} endpoint={srv.endpoint} model={srv.generator.name}", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        srv.stop()


if __name__ == "__main__":
    main()
