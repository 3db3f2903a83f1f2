"""A local API Gateway (REST, Lambda proxy): HTTP -> route -> TOKEN authorizer -> v1 event -> handler.

What the deployed REST API (infra/constructs/api.py) does in front of the api Lambda, in-process
and in milliseconds: only the routes of ``infra.resources.ROUTES`` exist (anything else is a 404
before any Lambda runs); the identity source (``Authorization`` header) is required; the TOKEN
authorizer's IAM policy is evaluated against the method ARN (optionally cached per token, like
API Gateway's authorizer cache); POST bodies must be JSON objects (the stack's request
validator); the proxy event is built in the v1 format with the route's ``resource`` and
``pathParameters``; the Lambda's proxy response goes back as HTTP (502 on a function error or a
malformed response, 504 past the integration timeout). Gateway-made errors carry the same
status, type and code as the stack's gateway responses (OpenAI-style bodies).

Routes in ``infra.resources.STREAMED_ROUTES`` go to the streaming function as STREAM transfer mode
sends them: its output is read as the streaming integration format (JSON prelude, 8 NUL bytes,
payload), the prelude becomes status and headers, and the payload goes out with chunked transfer
encoding, one chunk per piece the function produced, flushed at once. A client that disconnects
closes the function's iterator, which stops the generation behind it.

One file over ~300 lines on purpose: it mirrors one piece of AWS (the REST API in front of the
functions) end to end, and its steps read in request order.
"""
from __future__ import annotations

import base64
import itertools
import json
import logging
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from functions.core.errors import BadRequest, CirrusError
from functions.core.http.stream import read_prelude
from infra.resources import BODYLESS_POSTS, GATEWAY_RESPONSES, Cors
from local.config import ACCOUNT_ID, REGION
from local.lambdas import LambdaFunction

log = logging.getLogger("local.gateway")

MAX_PAYLOAD_BYTES = 10 * 1024 * 1024  # API Gateway REST request payload limit
INTEGRATION_TIMEOUT_S = 29            # API Gateway REST integration timeout
# After refusing a body, how much of the rest is read and dropped (never kept) before closing.
DISCARD_MAX_BYTES = 64 * 1024 * 1024
DISCARD_TIMEOUT_S = 2.0


class GatewayError(CirrusError):
    """An error the gateway answers itself: the stack's gateway response ``name``
    (``infra.resources.GATEWAY_RESPONSES``), with ``status`` for the families that keep
    API Gateway's own (DEFAULT_5XX: 500 for an authorizer failure, 502 for a function error)."""

    def __init__(self, name: str, status: int | None = None) -> None:
        spec = GATEWAY_RESPONSES[name]
        super().__init__(spec.message, code=spec.code, headers=dict(spec.headers))
        self.type = spec.type
        self.status = spec.status if spec.status is not None else status
        if self.status is None:
            raise ValueError(f"gateway response {name} needs a status")


# ----------------------------------------------------------------------------- routes


@dataclass(frozen=True)
class Route:
    method: str
    resource: str                 # API Gateway resource path, e.g. /v1/jobs/{id}
    pattern: re.Pattern

    @classmethod
    def of(cls, method: str, resource: str) -> "Route":
        regex = ""
        for part in re.split(r"(\{[^}]+\})", resource):
            if part.startswith("{") and part.endswith("+}"):
                regex += f"(?P<{part[1:-2]}>.+)"          # greedy {proxy+}
            elif part.startswith("{"):
                regex += f"(?P<{part[1:-1]}>[^/]+)"
            else:
                regex += re.escape(part)
        return cls(method.upper(), resource, re.compile(regex))


class Routes:
    """The API's resources and methods; a request matches one route or is API Gateway's 404."""

    def __init__(self, routes: Sequence[tuple[str, str]]) -> None:
        self._routes = [Route.of(m, r) for m, r in routes]

    def match(self, method: str, path: str) -> tuple[str, dict[str, str] | None]:
        # Literal segments win over {params} as in API Gateway: try the most literal resources first.
        for route in sorted(self._routes, key=lambda r: r.resource.count("{")):
            m = route.pattern.fullmatch(path)
            if m and route.method == method:
                return route.resource, (m.groupdict() or None)
        raise GatewayError("MISSING_AUTHENTICATION_TOKEN")  # REST APIs' answer to an unknown route

    def has_resource(self, path: str) -> bool:
        """Whether ``path`` is one of the API's resources, for any method (where the preflight lives)."""
        return any(route.pattern.fullmatch(path) for route in self._routes)


# ----------------------------------------------------------------------------- events


@dataclass
class HttpRequest:
    method: str
    target: str                          # path + query, as sent on the request line
    headers: list[tuple[str, str]]       # in order, repeated names kept
    body: bytes
    source_ip: str = "127.0.0.1"

    def header(self, name: str) -> str | None:
        found = [v for k, v in self.headers if k.lower() == name.lower()]
        return found[-1] if found else None


def method_arn(api_id: str, stage: str, method: str, path: str) -> str:
    return f"arn:aws:execute-api:{REGION}:{ACCOUNT_ID}:{api_id}/{stage}/{method}/{path.lstrip('/')}"


def build_proxy_event(req: HttpRequest, *, resource: str, path_parameters: dict[str, str] | None,
                      api_id: str, stage: str, request_id: str, authorizer: dict[str, Any] | None,
                      host: str) -> dict[str, Any]:
    """The API Gateway REST (v1) proxy event for ``req`` matched to ``resource``."""
    split = urlsplit(req.target)
    path = unquote(split.path) or "/"
    multi_q: dict[str, list[str]] = {}
    for k, v in parse_qsl(split.query, keep_blank_values=True):
        multi_q.setdefault(k, []).append(v)
    headers = list(req.headers) + [("X-Forwarded-For", req.source_ip), ("X-Forwarded-Proto", "http"),
                                   ("X-Amzn-Trace-Id", f"Root=1-{int(time.time()):08x}-{uuid.uuid4().hex[:24]}")]
    multi_h: dict[str, list[str]] = {}
    for k, v in headers:
        multi_h.setdefault(k, []).append(v)
    body, is_b64 = _event_body(req.body, req.header("content-type"))
    now = time.time()
    return {
        "resource": resource,
        "path": path,
        "httpMethod": req.method,
        "headers": {k: v[-1] for k, v in multi_h.items()},
        "multiValueHeaders": multi_h,
        "queryStringParameters": {k: v[-1] for k, v in multi_q.items()} or None,
        "multiValueQueryStringParameters": multi_q or None,
        "pathParameters": path_parameters,
        "stageVariables": None,
        "requestContext": {
            "accountId": ACCOUNT_ID,
            "apiId": api_id,
            "resourceId": "local",
            "resourcePath": resource,
            "httpMethod": req.method,
            "path": f"/{stage}{path}",
            "stage": stage,
            "requestId": request_id,
            "extendedRequestId": request_id,
            "requestTime": time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(now)),
            "requestTimeEpoch": int(now * 1000),
            "protocol": "HTTP/1.1",
            "domainName": host,
            "domainPrefix": host.split(".")[0],
            "identity": {
                "sourceIp": req.source_ip, "userAgent": req.header("user-agent"),
                "accessKey": None, "accountId": None, "apiKey": None, "apiKeyId": None,
                "caller": None, "cognitoAuthenticationProvider": None,
                "cognitoAuthenticationType": None, "cognitoIdentityId": None,
                "cognitoIdentityPoolId": None, "principalOrgId": None, "user": None, "userArn": None,
            },
            "authorizer": authorizer,
        },
        "body": body,
        "isBase64Encoded": is_b64,
    }


def _event_body(raw: bytes, content_type: str | None) -> tuple[str | None, bool]:
    if not raw:
        return None, False
    try:
        return raw.decode("utf-8"), False
    except UnicodeDecodeError:
        # Bytes that are not text reach the function base64-encoded (a binary media type in AWS).
        return base64.b64encode(raw).decode("ascii"), True


# ----------------------------------------------------------------------------- authorizer


def _iam_match(pattern: str, value: str) -> bool:
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.fullmatch(regex, value) is not None


def _as_list(v: Any) -> list:
    return v if isinstance(v, list) else [v]


def evaluate_policy(policy: dict[str, Any], arn: str) -> bool:
    """IAM evaluation for execute-api:Invoke on ``arn``: an explicit Deny wins, else an Allow is needed.

    Raises ValueError on a policy API Gateway would reject (it answers 500 then).
    """
    doc = policy.get("policyDocument")
    if not isinstance(policy.get("principalId"), str) or not isinstance(doc, dict):
        raise ValueError("authorizer response needs principalId and policyDocument")
    allowed = False
    for st in _as_list(doc.get("Statement", [])):
        if not isinstance(st, dict) or st.get("Effect") not in ("Allow", "Deny"):
            raise ValueError("policy statement needs Effect Allow|Deny")
        actions = [str(a).lower() for a in _as_list(st.get("Action", []))]
        if not any(_iam_match(a, "execute-api:invoke") for a in actions):
            continue
        if any(_iam_match(str(r), arn) for r in _as_list(st.get("Resource", []))):
            if st["Effect"] == "Deny":
                return False
            allowed = True
    return allowed


class AuthorizerCache:
    """Policies by token for ``ttl_s`` seconds, as API Gateway caches TOKEN authorizer results."""

    def __init__(self, ttl_s: int) -> None:
        self.ttl_s = ttl_s
        self._entries: dict[str, tuple[float, dict]] = {}
        self._lock = threading.Lock()

    def get(self, token: str) -> dict | None:
        if self.ttl_s <= 0:
            return None
        with self._lock:
            hit = self._entries.get(token)
            if hit and hit[0] > time.monotonic():
                return hit[1]
            self._entries.pop(token, None)
            return None

    def put(self, token: str, policy: dict) -> None:
        if self.ttl_s > 0:
            with self._lock:
                self._entries[token] = (time.monotonic() + self.ttl_s, policy)


# ----------------------------------------------------------------------------- usage plans


class UsageLimiter:
    """API Gateway usage plans with ``apiKeySource: AUTHORIZER``: the authorizer's
    ``usageIdentifierKey`` must name an enabled key in a plan (else 403), and is held to the plan's
    token bucket (``burst`` requests, refilled at ``rate``/s: 429 THROTTLED) and its quota per UTC
    day/week/month (429 QUOTA_EXCEEDED). ``lookup(value)`` gives the plan's limits
    (``ops.usage_plans.limits_for`` on moto's API Gateway); answers are cached ``cache_s``."""

    def __init__(self, lookup: Callable[[str], Any], *, cache_s: float = 5.0,
                 clock: Callable[[], float] = time.monotonic, now: Callable[[], float] = time.time) -> None:
        self._lookup = lookup
        self._cache_s = cache_s
        self._clock = clock
        self._now = now
        self._limits: dict[str, tuple[float, Any]] = {}
        self._buckets: dict[str, tuple[float, float]] = {}     # value -> (tokens, at)
        self._used: dict[tuple[str, str], int] = {}            # (value, period) -> requests
        self._lock = threading.Lock()

    def _limits_of(self, value: str) -> Any:
        hit = self._limits.get(value)
        if hit and hit[0] > self._clock():
            return hit[1]
        limits = self._lookup(value)
        self._limits[value] = (self._clock() + self._cache_s, limits)
        return limits

    def _period(self, period: str) -> str:
        t = time.gmtime(self._now())
        if period == "WEEK":
            return time.strftime("%G-W%V", t)
        return time.strftime("%Y-%m" if period == "MONTH" else "%Y-%m-%d", t)

    def admit(self, value: str | None) -> None:
        if not value:
            raise GatewayError("INVALID_API_KEY")
        with self._lock:
            limits = self._limits_of(value)
            if limits is None:
                raise GatewayError("INVALID_API_KEY")
            if limits.rate is not None:
                burst = float(limits.burst or max(1, int(limits.rate)))
                tokens, at = self._buckets.get(value, (burst, self._clock()))
                now = self._clock()
                tokens = min(burst, tokens + (now - at) * limits.rate)
                if tokens < 1:
                    self._buckets[value] = (tokens, now)
                    raise GatewayError("THROTTLED")
                self._buckets[value] = (tokens - 1, now)
            if limits.quota is not None:
                slot = (value, self._period(limits.period))
                if self._used.get(slot, 0) >= limits.quota:
                    raise GatewayError("QUOTA_EXCEEDED")
                self._used[slot] = self._used.get(slot, 0) + 1


# ----------------------------------------------------------------------------- gateway


@dataclass
class HttpResponse:
    status: int
    headers: list[tuple[str, str]]
    body: bytes
    chunks: Iterator[bytes] | None = None  # a streamed body (sent after ``body``, chunk by chunk)


class Gateway:
    """Turns one HTTP request into the authorizer + api Lambda calls API Gateway would make."""

    def __init__(self, api: LambdaFunction, authorizer: LambdaFunction | None, *,
                 routes: Sequence[tuple[str, str]], stage: str, api_id: str = "cirruslocal",
                 cache_ttl_s: int = 0, timeout_s: float = INTEGRATION_TIMEOUT_S,
                 host: str = "127.0.0.1", stream: LambdaFunction | None = None,
                 streamed_routes: frozenset[tuple[str, str]] = frozenset(),
                 public: Sequence[tuple[str, str]] = (), usage: UsageLimiter | None = None,
                 cors: Cors | None = None) -> None:
        self.routes = Routes(list(routes) + [r for r in public if r not in routes])
        self.cors_routes = Routes(routes)   # the REST API has a preflight on each route's resource
        self.cors = cors if cors is not None and cors.enabled else None
        self.public = {resource for _, resource in public}  # methods without the authorizer or a usage key
        self.stream = stream
        self.streamed_routes = streamed_routes if stream is not None else frozenset()
        self.usage = usage
        self.api = api
        self.authorizer = authorizer
        self.stage = stage
        self.api_id = api_id
        self.cache = AuthorizerCache(cache_ttl_s)
        self.timeout_s = timeout_s
        self.host = host

    def handle(self, req: HttpRequest) -> HttpResponse:
        request_id = str(uuid.uuid4())
        start = time.perf_counter()
        try:
            resp = self._handle(req, request_id)
        except CirrusError as err:
            resp = self._with_cors(_error_response(err), req)
        except Exception:  # noqa: BLE001 - a gateway bug must still answer, and be in the log
            log.exception("gateway error request_id=%s", request_id)
            resp = self._with_cors(_error_response(GatewayError("DEFAULT_5XX", 500)), req)
        resp.headers += [("x-amzn-RequestId", request_id), ("x-amz-apigw-id", request_id[:16])]
        # Access log: ids, sizes and timings only; never the body or the Authorization header.
        log.info("ACCESS request_id=%s method=%s path=%s status=%d bytes_in=%d bytes_out=%d ms=%.1f",
                 request_id, req.method, urlsplit(req.target).path, resp.status, len(req.body),
                 len(resp.body), (time.perf_counter() - start) * 1000)
        return resp

    def _handle(self, req: HttpRequest, request_id: str) -> HttpResponse:
        # API Gateway's order: size limit, route, authorizer, request validation, integration.
        if len(req.body) > MAX_PAYLOAD_BYTES:
            raise GatewayError("REQUEST_TOO_LARGE")
        path = unquote(urlsplit(req.target).path) or "/"
        if req.method == "OPTIONS" and self.cors is not None and self.cors_routes.has_resource(path):
            # The REST API's preflight: a mock integration, no authorizer, no usage key, no function.
            return HttpResponse(204, list(self.cors.preflight_headers(req.header("origin")).items()), b"")
        resource, path_params = self.routes.match(req.method, path)
        if resource in self.public:
            authorizer_ctx = None
        else:
            authorizer_ctx, usage_key = self._authorize(req, method_arn(self.api_id, self.stage, req.method, path))
            if self.usage is not None and self.authorizer is not None:
                self.usage.admit(usage_key)  # every API method requires a usage key (infra/constructs/api.py)
        if req.method == "POST" and resource not in BODYLESS_POSTS:
            _validate_json_object(req)
        event = build_proxy_event(req, resource=resource, path_parameters=path_params, api_id=self.api_id,
                                  stage=self.stage, request_id=request_id, authorizer=authorizer_ctx,
                                  host=self.host)
        if (req.method, resource) in self.streamed_routes:
            return self._stream(event, request_id)
        started = time.monotonic()
        try:
            result = self.api.invoke(event)
        except Exception as exc:  # noqa: BLE001 - any function error is a 502 at the gateway
            log.error("api function error request_id=%s error=%s", request_id, type(exc).__name__)
            raise GatewayError("DEFAULT_5XX", 502) from exc
        if time.monotonic() - started > self.timeout_s:
            raise GatewayError("INTEGRATION_TIMEOUT")
        return proxy_response_to_http(result)

    def _stream(self, event: dict[str, Any], request_id: str) -> HttpResponse:
        """STREAM transfer mode: the prelude is the status and headers; the rest is passed on as it comes."""
        assert self.stream is not None
        chunks = self.stream.invoke_stream(event)
        try:
            prelude, head = read_prelude(chunks)
        except Exception as exc:  # noqa: BLE001 - a function error or a malformed prelude is a 502
            chunks.close()
            log.error("stream function error request_id=%s error=%s", request_id, type(exc).__name__)
            raise GatewayError("DEFAULT_5XX", 502) from exc
        headers = [(k, str(v)) for k, v in (prelude.get("headers") or {}).items()]
        for k, values in (prelude.get("multiValueHeaders") or {}).items():
            headers += [(k, str(v)) for v in _as_list(values)]
        headers += [("Set-Cookie", str(c)) for c in prelude.get("cookies") or []]
        if not any(k.lower() == "content-type" for k, _ in headers):
            headers.append(("Content-Type", "application/json"))
        return HttpResponse(prelude["statusCode"], headers, head, chunks=chunks)

    def _authorize(self, req: HttpRequest, arn: str) -> tuple[dict[str, Any] | None, str | None]:
        """The integration's authorizer context and the policy's usageIdentifierKey."""
        if self.authorizer is None:
            return None, None
        if sum(1 for k, _ in req.headers if k.lower() == "authorization") > 1:
            # Which one would count is ambiguous (proxies differ: first, last, joined): refuse both.
            raise BadRequest("send exactly one Authorization header", code="duplicate_authorization")
        token = req.header("authorization")
        if not token:
            # API Gateway answers 401 without calling the authorizer when the identity source is empty.
            raise GatewayError("UNAUTHORIZED")
        policy = self.cache.get(token)
        started = time.perf_counter()
        if policy is None:
            try:
                policy = self.authorizer.invoke({"type": "TOKEN", "authorizationToken": token,
                                                 "methodArn": arn})
            except Exception as exc:  # noqa: BLE001
                # A Lambda authorizer signals 401 by failing with exactly "Unauthorized".
                if str(exc) == "Unauthorized":
                    raise GatewayError("UNAUTHORIZED") from None
                log.error("authorizer error type=%s", type(exc).__name__)
                raise GatewayError("DEFAULT_5XX", 500) from exc
            if not isinstance(policy, dict):
                log.error("authorizer returned no policy")
                raise GatewayError("DEFAULT_5XX", 500)
        try:
            allowed = evaluate_policy(policy, arn)
        except ValueError as exc:
            log.error("authorizer returned an invalid policy: %s", exc)
            raise GatewayError("DEFAULT_5XX", 500) from None
        self.cache.put(token, policy)
        if not allowed:
            raise GatewayError("ACCESS_DENIED")
        # API Gateway hands the context to the integration with string values + principalId.
        ctx = {k: (json.dumps(v) if isinstance(v, bool) else str(v))
               for k, v in (policy.get("context") or {}).items()}
        ctx["principalId"] = policy["principalId"]
        ctx["integrationLatency"] = int((time.perf_counter() - started) * 1000)
        usage_key = policy.get("usageIdentifierKey")
        return ctx, (usage_key if isinstance(usage_key, str) else None)


    def _with_cors(self, resp: HttpResponse, req: HttpRequest) -> HttpResponse:
        """The stage's CORS headers on one of the gateway's own answers, as its gateway responses add them."""
        if self.cors is not None:
            origin = req.header("origin")
            for name, value in self.cors.error_headers().items():
                value = origin if value is None else value
                if value:
                    resp.headers.append((name, value))
        return resp


def _validate_json_object(req: HttpRequest) -> None:
    """The stack's request validator: a POST body (JSON content type or none) must be a JSON object."""
    ctype = (req.header("content-type") or "application/json").split(";")[0].strip().lower()
    if ctype != "application/json":
        return
    try:
        ok = isinstance(json.loads(req.body.decode("utf-8")), dict)
    except (UnicodeDecodeError, ValueError, RecursionError):
        # RecursionError: nested past Python's parser (~1,000 levels), a 400 here rather than the
        # gateway's 500. Shallower nesting is a valid object; the function bounds its depth itself.
        ok = False
    if not ok:
        raise GatewayError("BAD_REQUEST_BODY")


def _error_response(err: CirrusError) -> HttpResponse:
    body = json.dumps(err.body()).encode()
    headers = [("Content-Type", "application/json")] + list(err.headers.items())
    if err.status == 401:
        headers.append(("WWW-Authenticate", 'Bearer realm="cirrus"'))
    return HttpResponse(err.status, headers, body)


def proxy_response_to_http(result: Any) -> HttpResponse:
    """Map a Lambda proxy response to HTTP; anything malformed is API Gateway's 502."""
    if not isinstance(result, dict) or not isinstance(result.get("statusCode"), int):
        log.error("malformed Lambda proxy response (no integer statusCode)")
        raise GatewayError("DEFAULT_5XX", 502)
    headers: list[tuple[str, str]] = []
    multi = result.get("multiValueHeaders") or {}
    single = result.get("headers") or {}
    if not isinstance(multi, dict) or not isinstance(single, dict):
        raise GatewayError("DEFAULT_5XX", 502)
    for k, values in multi.items():
        headers += [(k, str(v)) for v in _as_list(values)]
    seen = {k.lower() for k in multi}
    headers += [(k, str(v)) for k, v in single.items() if k.lower() not in seen]
    body = result.get("body")
    if body is None:
        raw = b""
    elif not isinstance(body, str):
        raise GatewayError("DEFAULT_5XX", 502)
    elif result.get("isBase64Encoded"):
        raw = base64.b64decode(body)
    else:
        raw = body.encode("utf-8")
    if not any(k.lower() == "content-type" for k, _ in headers):
        headers.append(("Content-Type", "application/json"))
    return HttpResponse(result["statusCode"], headers, raw)


# ----------------------------------------------------------------------------- HTTP server

_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length"}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "cirrus-local-gateway"
    # Headers and body go out in two writes; with Nagle on, the body waits for the client's
    # delayed ACK (~40 ms per keep-alive request). API Gateway has no such stall.
    disable_nagle_algorithm = True
    gateway: Gateway  # set on the subclass made per server

    def _serve(self) -> None:
        try:
            body = self._read_body()
        except CirrusError as err:
            # Framing we cannot trust (or a body we will not read): answer in the API's error shape,
            # then close, since the rest of the stream cannot be parsed as a next request.
            self.close_connection = True
            self._send(_error_response(err))
            self._discard_rest()
            return
        req = HttpRequest(method=self.command, target=self.path,
                          headers=[(k, v) for k, v in self.headers.items()],
                          body=body, source_ip=self.client_address[0])
        self._send(self.gateway.handle(req))

    def _send(self, resp: HttpResponse) -> None:
        self.send_response(resp.status)
        for k, v in resp.headers:
            if k.lower() not in _HOP_BY_HOP:
                self.send_header(k, v)
        if resp.chunks is not None:
            self._send_chunked(resp)
            return
        if self.close_connection:
            self.send_header("Connection", "close")
        self.send_header("Content-Length", str(len(resp.body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(resp.body)

    def _send_chunked(self, resp: HttpResponse) -> None:
        """One HTTP chunk per piece, flushed; a client that went away closes the function's stream."""
        assert resp.chunks is not None
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        sent, started, outcome = 0, time.perf_counter(), "done"
        try:
            for data in itertools.chain([resp.body], resp.chunks):  # the bytes after the prelude first
                if data:
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                    self.wfile.flush()
                    sent += len(data)
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError):
            outcome = "client_gone"
            self.close_connection = True
        except Exception:  # noqa: BLE001 - the function failed mid-stream: API Gateway cuts the connection
            outcome = "function_error"
            log.exception("stream function failed mid-stream")
            self.close_connection = True
        finally:
            resp.chunks.close()
            log.info("STREAM status=%d bytes_out=%d ms=%.1f outcome=%s", resp.status, sent,
                     (time.perf_counter() - started) * 1000, outcome)

    def _read_body(self) -> bytes:
        """The body, never more than MAX_PAYLOAD_BYTES read: 413 before reading a declared or
        chunked body over the limit, 400 for framing that is malformed or ambiguous."""
        chunked = (self.headers.get("Transfer-Encoding") or "").lower()
        declared = self.headers.get_all("Content-Length") or []
        if chunked and declared:
            raise BadRequest("Content-Length with Transfer-Encoding is ambiguous", code="bad_framing")
        if chunked:
            if chunked != "chunked":
                raise BadRequest(f"unsupported Transfer-Encoding {chunked[:40]!r}", code="bad_framing")
            return self._read_chunked()
        if len(set(declared)) > 1:
            raise BadRequest("conflicting Content-Length headers", code="bad_framing")
        raw = (declared[0] if declared else "0").strip()
        if not raw.isdigit() or len(raw) > 18:
            if raw.isdigit():  # 19+ digits: far past the limit, not worth parsing
                raise GatewayError("REQUEST_TOO_LARGE")
            raise BadRequest("Content-Length must be a non-negative integer", code="bad_framing")
        length = int(raw)
        if length > MAX_PAYLOAD_BYTES:
            raise GatewayError("REQUEST_TOO_LARGE")  # before reading a byte of it
        body = self.rfile.read(length) if length else b""
        if len(body) != length:
            raise BadRequest("the body ended before Content-Length bytes", code="bad_framing")
        return body

    def _discard_rest(self) -> None:
        """Read and drop what the client is still sending (bounded in bytes and time), so that a
        client writing its whole body before reading sees the answer instead of a reset."""
        self.wfile.flush()
        self.connection.settimeout(DISCARD_TIMEOUT_S)
        left = DISCARD_MAX_BYTES
        try:
            while left > 0:
                chunk = self.connection.recv(min(left, 65536))
                if not chunk:
                    break
                left -= len(chunk)
        except OSError:  # timeout or reset: the answer is out, the connection closes either way
            pass

    def _read_chunked(self) -> bytes:
        chunks, total = [], 0
        while True:
            line = self.rfile.readline(1026)
            size_hex = line.split(b";")[0].strip()
            try:
                if not line.endswith(b"\n") or not size_hex:
                    raise ValueError
                size = int(size_hex, 16)
            except ValueError:
                raise BadRequest("malformed chunk size line", code="bad_framing") from None
            if size == 0:
                while self.rfile.readline(8192) not in (b"\r\n", b"\n", b""):
                    pass
                return b"".join(chunks)
            total += size
            if total > MAX_PAYLOAD_BYTES:
                raise GatewayError("REQUEST_TOO_LARGE")  # stop reading: the rest is never buffered
            chunk = self.rfile.read(size)
            if len(chunk) != size or self.rfile.readline(3) not in (b"\r\n", b"\n"):
                raise BadRequest("malformed chunk", code="bad_framing")
            chunks.append(chunk)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _serve

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        # The gateway writes its own access log line; the stdlib one would go to stderr.
        pass


class _ThreadingServer(ThreadingHTTPServer):
    # socketserver listens with a backlog of 5; under 32 concurrent clients the kernel then resets
    # connections (seen in the API benchmark). API Gateway accepts them all.
    request_queue_size = 128
    daemon_threads = True


class GatewayServer:
    """A threaded HTTP server on ``host:port`` in front of a ``Gateway``; ``port=0`` picks a free one."""

    def __init__(self, gateway: Gateway, host: str = "127.0.0.1", port: int = 0) -> None:
        handler = type("GatewayHandler", (_Handler,), {"gateway": gateway})
        self._httpd = _ThreadingServer((host, port), handler)  # raises OSError if the port is taken
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> str:
        # A short poll interval makes shutdown (Ctrl-C, test teardown) prompt.
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="gateway", daemon=True)
        self._thread.start()
        return self.url

    def stop(self) -> None:
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join(timeout=10)
            self._thread = None
        self._httpd.server_close()
