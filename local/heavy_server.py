"""A local stand-in for the heavy SageMaker endpoint, serving an ONNX generation bundle over real HTTP.

It speaks both sides of SageMaker: the runtime API (``POST /endpoints/<name>/invocations`` and
``/async-invocations``, so boto3 ``sagemaker-runtime`` with ``endpoint_url`` runs the production
client unchanged) and the container contract (``GET /ping``, ``POST /invocations``) with TGI's
Messages API payloads. Like a real container it answers every request: bad input is a 422 (TGI's
input validation), a crash while generating is a 500 with a JSON body, never a dropped connection.
Faults can be queued (throttle, 5xx, slow, not-ready, drop, down) to exercise the client's retries,
timeouts and circuit breaker.

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
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from functions.core.errors import CirrusError
from functions.core.inference.generator import OnnxGenerator
from functions.core.generation.schemas import (ChatCompletionRequest, CompletionRequest, chat_completion_body,
                                               completion_body)

ACCOUNT = "000000000000"
FAULTS = ("throttle", "error", "slow", "not_ready", "no_capacity", "drop")
log = logging.getLogger("local.heavy_server")
_ENDPOINT_PATH = re.compile(r"^/endpoints/([^/]+)/(invocations|async-invocations)$")


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
        ``no_capacity``, ``drop`` (close the connection without answering) or ``slow:<seconds>``."""
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
    def run(self, payload: Any) -> tuple[int, dict]:
        """The container's /invocations: TGI-style chat (``messages``) or completion (``prompt``)."""
        if not isinstance(payload, dict):
            return 422, {"error": "expected a JSON object", "error_type": "validation"}
        payload = {k: v for k, v in payload.items() if v is not None}
        try:
            fingerprint, token_text = f"local-{self.generator.version}", self.generator.token_text
            if "messages" in payload:
                req = ChatCompletionRequest.model_validate(payload)
                if req.light_refusals():  # TGI would run tools / grammars; this ONNX stand-in cannot
                    return 422, {"error": f"Input validation error: {req.light_refusals()[0]} is not "
                                          f"implemented by the local stand-in", "error_type": "validation"}
                gens = self.generator.chat(req.turns(), req.sampling(20))
                return 200, chat_completion_body(req.model, gens, fingerprint=fingerprint, token_text=token_text)
            req2 = CompletionRequest.model_validate(payload)
            gens = self.generator.complete(req2.text(), req2.sampling(20))
            return 200, completion_body(req2.model, gens, fingerprint=fingerprint, token_text=token_text)
        except ValidationError as exc:
            first = exc.errors(include_url=False, include_input=False)[0]
            where = ".".join(str(p) for p in first["loc"])
            return 422, {"error": f"Input validation error: {where}: {first['msg']}", "error_type": "validation"}
        except CirrusError as exc:  # e.g. prompt longer than the context window
            return 422, {"error": exc.message, "error_type": "validation"}
        except (ValueError, TypeError, OverflowError) as exc:
            # A value the schema let through but the sampler cannot take (e.g. a seed numpy refuses):
            # still the request's fault, so TGI's answer to it, 422, not a crash.
            return 422, {"error": f"Input validation error: {exc.__class__.__name__}", "error_type": "validation"}
        except Exception as exc:  # noqa: BLE001 - a real container answers 500, it does not hang up
            log.exception("generation failed")
            return 500, {"error": f"generation failed: {exc.__class__.__name__}", "error_type": "generation"}

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
                self._send(200, {"status": "ok", "model": server.generator.name})
            else:
                self._send(404, {"error": "not found"})

        def do_POST(self) -> None:  # noqa: N802
            raw = self._body()
            if self.path == "/invocations":  # the container contract
                try:
                    payload = json.loads(raw or b"null")
                except ValueError:
                    self._send(422, {"error": "body is not JSON", "error_type": "validation"})
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
            if fault and self._fault(*fault):
                return
            try:
                payload = json.loads(raw or b"null")
            except ValueError:
                payload = None
            status, body = server.run(payload)
            if status != 200:
                # SageMaker wraps a container's non-2xx as ModelError (424) with the original status.
                side = "client" if status < 500 else "server"
                self._aws_error(424, "ModelError", f"Received {side} error ({status}) from primary",
                                OriginalStatusCode=status, OriginalMessage=json.dumps(body),
                                LogStreamArn="local")
                return
            self._send(200, body, {"x-Amzn-Invoked-Production-Variant": "AllTraffic"})

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
