"""The local API gateway: HTTP -> TOKEN authorizer -> API Gateway v1 event -> handler -> HTTP."""
from __future__ import annotations

import base64
import json

import pytest
import requests
from aws_lambda_powertools.event_handler import APIGatewayRestResolver, Response

from infra.resources import GATEWAY_RESPONSES, ROUTES
from local.gateway import (MAX_PAYLOAD_BYTES, Gateway, GatewayError, GatewayServer, HttpRequest, Routes,
                           _error_response, evaluate_policy, method_arn)
from local.lambdas import LambdaFunction

ARN_PREFIX = "arn:aws:execute-api:us-east-1:123456789012:cirruslocal/local"
# A small API for the fake handlers; the real one is infra.resources.ROUTES (tested below too).
TEST_ROUTES = (("GET", "/health"), ("GET", "/v1/models"), ("POST", "/v1/embeddings"), ("POST", "/v1/echo"),
               ("GET", "/v1/jobs/{id}"), ("GET", "/bin"), ("POST", "/v1/upload"), ("GET", "/x"),
               ("GET", "/files/{path+}"))


def allow_all(token_event, context=None, *, effect="Allow", resource=None):
    # The policy the project's authorizer returns: the whole stage, so the cache works across routes.
    return {"principalId": "key-1",
            "policyDocument": {"Version": "2012-10-17", "Statement": [{
                "Action": "execute-api:Invoke", "Effect": effect,
                "Resource": resource or ARN_PREFIX + "/*"}]},
            "context": {"key_id": "key-1", "key_name": "dev", "admin": False}}


class Recorder:
    """A fake function that remembers its events and answers like the real handlers do."""

    def __init__(self, answer=None):
        self.events = []
        self.answer = answer or (lambda e, c: {"statusCode": 200, "headers": {"Content-Type": "application/json"},
                                               "body": json.dumps({"ok": True})})

    def __call__(self, event, context):
        self.events.append((event, context))
        return self.answer(event, context)


def make_gateway(api_answer=None, authorizer=allow_all, cache_ttl_s=0):
    api = Recorder(api_answer)
    auth = Recorder(authorizer) if authorizer else None
    gw = Gateway(LambdaFunction("api", api), LambdaFunction("authorizer", auth) if auth else None,
                 routes=TEST_ROUTES, stage="local", cache_ttl_s=cache_ttl_s)
    return gw, api, auth


@pytest.fixture()
def served():
    """A gateway on a free loopback port; yields a factory (answer, authorizer) -> (url, api, auth)."""
    servers = []

    def start(api_answer=None, authorizer=allow_all, cache_ttl_s=0):
        gw, api, auth = make_gateway(api_answer, authorizer, cache_ttl_s)
        srv = GatewayServer(gw, "127.0.0.1", 0)
        servers.append(srv)
        return srv.start(), api, auth

    yield start
    for s in servers:
        s.stop()


AUTH = {"Authorization": "Bearer cir_abc_secret"}


def test_gateway_builds_a_v1_proxy_event_with_authorizer_context(served):
    url, api, auth = served()
    r = requests.post(url + "/v1/embeddings?a=1&a=2&b=x%20y", data=b'{"input": "hi"}',
                      headers={**AUTH, "Content-Type": "application/json", "X-Multi": "one"})
    assert r.status_code == 200 and r.json() == {"ok": True}
    event, ctx = api.events[0]
    assert event["resource"] == "/v1/embeddings"
    assert event["path"] == "/v1/embeddings"
    assert event["httpMethod"] == "POST"
    assert event["pathParameters"] is None
    assert event["queryStringParameters"] == {"a": "2", "b": "x y"}
    assert event["multiValueQueryStringParameters"] == {"a": ["1", "2"], "b": ["x y"]}
    assert event["headers"]["Content-Type"] == "application/json"
    assert event["multiValueHeaders"]["X-Multi"] == ["one"]
    assert event["body"] == '{"input": "hi"}' and event["isBase64Encoded"] is False
    rc = event["requestContext"]
    assert rc["stage"] == "local" and rc["path"] == "/local/v1/embeddings"
    assert rc["requestId"] == r.headers["x-amzn-RequestId"]
    assert rc["identity"]["sourceIp"] == "127.0.0.1"
    assert rc["authorizer"]["principalId"] == "key-1"
    assert rc["authorizer"]["key_name"] == "dev" and rc["authorizer"]["admin"] == "false"
    # The authorizer got a TOKEN event for this method's ARN.
    token_event = auth.events[0][0]
    assert token_event == {"type": "TOKEN", "authorizationToken": AUTH["Authorization"],
                           "methodArn": ARN_PREFIX + "/POST/v1/embeddings"}
    assert ctx.function_name == "api" and ctx.get_remaining_time_in_millis() > 0
    assert ctx.aws_request_id and ctx.invoked_function_arn.endswith(":function:api")


def test_powertools_rest_resolver_routes_gateway_events(served):
    app = APIGatewayRestResolver()

    @app.get("/v1/jobs/<job_id>")
    def get_job(job_id):
        ev = app.current_event
        return {"job": job_id, "q": ev.get_query_string_value("x"), "resource": ev.resource,
                "params": ev.path_parameters, "principal": ev.request_context.authorizer.get("principalId")}

    @app.post("/v1/echo")
    def echo():
        return Response(201, "text/plain", app.current_event.body)

    url, _, _ = served(api_answer=lambda e, c: app.resolve(e, c))
    r = requests.get(url + "/v1/jobs/j-42?x=7", headers=AUTH)
    assert r.status_code == 200
    assert r.json() == {"job": "j-42", "q": "7", "resource": "/v1/jobs/{id}", "params": {"id": "j-42"},
                        "principal": "key-1"}
    r = requests.post(url + "/v1/echo", data='{"text": "héllo ✓"}'.encode(), headers=AUTH)
    assert r.status_code == 201 and json.loads(r.content.decode()) == {"text": "héllo ✓"}
    assert r.headers["Content-Type"] == "text/plain"


def test_unknown_route_or_method_is_404_before_any_function_runs(served):
    url, api, auth = served()
    for method, path in (("GET", "/nope"), ("DELETE", "/v1/models"), ("GET", "/v1/jobs/a/b"), ("GET", "/v1/models/")):
        r = requests.request(method, url + path, headers=AUTH)
        assert r.status_code == 404, (method, path)
        assert r.json()["error"]["code"] == "not_found"
    assert auth.events == [] and api.events == []


def test_greedy_path_parameter_takes_the_rest_of_the_path(served):
    url, api, _ = served()
    assert requests.get(url + "/files/a/b%20c.txt", headers=AUTH).status_code == 200
    event = api.events[0][0]
    assert event["resource"] == "/files/{path+}" and event["pathParameters"] == {"path": "a/b c.txt"}


def test_post_body_that_is_not_a_json_object_is_400_after_authorization(served):
    url, api, auth = served()
    for body in (b"{not json", b"[1, 2]", b"", b"\xff\xfe"):
        r = requests.post(url + "/v1/embeddings", data=body, headers={**AUTH, "Content-Type": "application/json"})
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
    assert api.events == [] and len(auth.events) == 4


def test_deeply_nested_json_is_the_gateways_400_not_a_500(served):
    url, api, _ = served()
    for body in (b"[" * 5000 + b"]" * 5000, b'{"a": ' * 3000 + b"1" + b"}" * 3000):
        r = requests.post(url + "/v1/embeddings", data=body, headers={**AUTH, "Content-Type": "application/json"})
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
    assert api.events == []


def test_deeply_nested_text_plain_body_reaches_the_function_which_answers_400(served):
    # The request validator only reads JSON content types; the function's parser must hold by itself.
    from functions.core.errors import to_response
    from functions.core.http.body import decode_json

    def parse(event, context):
        try:
            decode_json(event["body"])
        except Exception as exc:  # noqa: BLE001 - the test shows what the mapper makes of it
            status, body, _ = to_response(exc)
            return {"statusCode": status, "body": json.dumps(body)}
        return {"statusCode": 200, "body": "{}"}

    url, api, _ = served(parse)
    r = requests.post(url + "/v1/embeddings", data=b"[" * 5000 + b"]" * 5000,
                      headers={**AUTH, "Content-Type": "text/plain"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "json_too_deep" and len(api.events) == 1


def test_the_real_route_table_matches_literal_segments_and_parameters():
    routes = Routes(ROUTES)
    assert routes.match("GET", "/v1/jobs") == ("/v1/jobs", None)
    assert routes.match("GET", "/v1/jobs/job_1") == ("/v1/jobs/{id}", {"id": "job_1"})
    assert routes.match("POST", "/v1/embeddings") == ("/v1/embeddings", None)


def test_missing_authorization_is_401_without_calling_the_authorizer(served):
    url, api, auth = served()
    r = requests.post(url + "/v1/embeddings", json={"input": "x"})
    assert r.status_code == 401
    assert r.json()["error"]["type"] == "authentication_error"
    assert r.json()["error"]["code"] == "invalid_api_key"
    assert auth.events == [] and api.events == []


def test_authorizer_unauthorized_error_is_401(served):
    def reject(event, context):
        raise Exception("Unauthorized")

    url, api, _ = served(authorizer=reject)
    r = requests.get(url + "/v1/models", headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    assert api.events == []


def test_authorizer_deny_policy_is_the_stacks_401(served):
    # The stack maps ACCESS_DENIED to 401 invalid_api_key (infra.resources.GATEWAY_RESPONSES).
    url, api, _ = served(authorizer=lambda e, c: allow_all(e, effect="Deny"))
    r = requests.get(url + "/v1/models", headers=AUTH)
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    assert r.json() == GATEWAY_RESPONSES["ACCESS_DENIED"].body()
    assert api.events == []



@pytest.mark.parametrize("name", ["THROTTLED", "QUOTA_EXCEEDED"])
def test_gateway_429_answers_carry_retry_after_like_the_stack(name):
    resp = _error_response(GatewayError(name))
    assert resp.status == 429 and ("Retry-After", "1") in resp.headers
    assert json.loads(resp.body) == GATEWAY_RESPONSES[name].body()

def test_allow_for_another_route_only_is_denied(served):
    url, api, _ = served(authorizer=lambda e, c: allow_all(e, resource=ARN_PREFIX + "/GET/v1/models"))
    assert requests.get(url + "/v1/models", headers=AUTH).status_code == 200
    assert requests.post(url + "/v1/embeddings", headers=AUTH, json={}).status_code == 401
    assert len(api.events) == 1


def test_authorizer_crash_or_bad_policy_is_500(served):
    def crash(event, context):
        raise RuntimeError("table missing")

    url, api, _ = served(authorizer=crash)
    r = requests.get(url + "/health", headers=AUTH)
    assert r.status_code == 500 and r.json()["error"]["code"] == "internal_error"
    assert "table missing" not in r.text
    url2, _, _ = served(authorizer=lambda e, c: {"principalId": "x"})
    assert requests.get(url2 + "/health", headers=AUTH).status_code == 500
    assert api.events == []


def test_authorizer_cache_reuses_a_policy_per_token_within_ttl(served):
    url, api, auth = served(cache_ttl_s=60)
    for path in ("/v1/models", "/health", "/v1/models"):
        assert requests.get(url + path, headers=AUTH).status_code == 200
    assert len(auth.events) == 1 and len(api.events) == 3
    requests.get(url + "/v1/models", headers={"Authorization": "Bearer other"})
    assert len(auth.events) == 2


def test_function_error_is_502_with_openai_style_body(served):
    def boom(event, context):
        raise ValueError("bug")

    url, _, _ = served(api_answer=boom)
    r = requests.get(url + "/v1/models", headers=AUTH)
    assert r.status_code == 502
    assert set(r.json()["error"]) == {"message", "type", "param", "code"}
    assert r.json()["error"]["type"] == "server_error"
    assert "bug" not in r.text  # never a stack trace or exception text


@pytest.mark.parametrize("answer", [None, "text", {"body": "x"}, {"statusCode": "200"},
                                    {"statusCode": 200, "body": {"not": "a string"}}])
def test_malformed_proxy_response_is_502(served, answer):
    url, _, _ = served(api_answer=lambda e, c: answer)
    assert requests.get(url + "/x", headers=AUTH).status_code == 502


def test_proxy_response_headers_and_base64_body_reach_the_client(served):
    payload = bytes(range(256))
    url, _, _ = served(api_answer=lambda e, c: {
        "statusCode": 206, "multiValueHeaders": {"X-Many": ["a", "b"]},
        "headers": {"Content-Type": "application/octet-stream"},
        "body": base64.b64encode(payload).decode(), "isBase64Encoded": True})
    r = requests.get(url + "/bin", headers=AUTH)
    assert r.status_code == 206 and r.content == payload
    assert r.headers["X-Many"] == "a, b"
    assert r.headers["Content-Type"] == "application/octet-stream"


def test_binary_request_body_reaches_the_function_base64_encoded(served):
    url, api, _ = served()
    requests.post(url + "/v1/upload", data=b"\xff\xfe\x00binary",
                  headers={**AUTH, "Content-Type": "application/octet-stream"})
    event = api.events[0][0]
    assert event["isBase64Encoded"] is True
    assert base64.b64decode(event["body"]) == b"\xff\xfe\x00binary"


def test_body_over_api_gateway_limit_is_413_before_any_function_runs():
    gw, api, auth = make_gateway()
    resp = gw.handle(HttpRequest("POST", "/v1/embeddings", list(AUTH.items()), b"x" * (MAX_PAYLOAD_BYTES + 1)))
    assert resp.status == 413 and json.loads(resp.body)["error"]["code"] == "payload_too_large"
    assert api.events == [] and auth.events == []


def test_port_taken_raises_oserror():
    gw, _, _ = make_gateway()
    first = GatewayServer(gw, "127.0.0.1", 0)
    try:
        port = int(first.url.rsplit(":", 1)[1])
        with pytest.raises(OSError):
            GatewayServer(gw, "127.0.0.1", port)
    finally:
        first.stop()


@pytest.mark.parametrize("resource, allowed", [
    (ARN_PREFIX + "/*", True), (ARN_PREFIX + "/GET/*", True), (ARN_PREFIX + "/POST/*", False),
    ("arn:aws:execute-api:us-east-1:123456789012:otherapi/local/*", False),
    (ARN_PREFIX + "/GET/v1/model?", True), ("*", True),
])
def test_policy_resource_wildcards(resource, allowed):
    policy = allow_all(None, resource=resource)
    assert evaluate_policy(policy, method_arn("cirruslocal", "local", "GET", "/v1/models")) is allowed


def test_explicit_deny_wins_over_allow():
    policy = allow_all(None)
    policy["policyDocument"]["Statement"] = [
        policy["policyDocument"]["Statement"][0],
        {"Action": "execute-api:Invoke", "Effect": "Deny", "Resource": ARN_PREFIX + "/DELETE/*"}]
    assert evaluate_policy(policy, method_arn("cirruslocal", "local", "GET", "/v1/models"))
    assert not evaluate_policy(policy, method_arn("cirruslocal", "local", "DELETE", "/v1/jobs/1"))


# --- streamed routes (STREAM transfer mode) ----------------------------------------------------------
class StreamingFunction:
    """A streaming handler: the integration format (prelude, NULs, pieces); records how it ended."""

    def __init__(self, pieces=(b"data: a\n\n", b"data: b\n\n"), gate=None, prelude=None, forever=False):
        self.pieces, self.gate, self.forever = list(pieces), gate, forever
        self.prelude = prelude if prelude is not None else (
            json.dumps({"statusCode": 200, "headers": {"Content-Type": "text/event-stream"},
                        "multiValueHeaders": {"X-Two": ["1", "2"]}, "cookies": ["a=b"]}).encode() + b"\0" * 8)
        self.produced = 0
        self.closed = False

    def __call__(self, event, context):
        def body():
            try:
                yield self.prelude
                n = 0
                while self.forever or n < len(self.pieces):
                    if self.gate is not None and n == 1:
                        assert self.gate.wait(5), "the client never saw the first piece"
                    yield self.pieces[n % len(self.pieces)]
                    self.produced += 1
                    n += 1
            finally:
                self.closed = True
        return body()


def served_stream(fn):
    api = Recorder()
    gw = Gateway(LambdaFunction("api", api), LambdaFunction("authorizer", Recorder(allow_all)),
                 routes=TEST_ROUTES, stage="local", stream=LambdaFunction("generation", fn),
                 streamed_routes=frozenset({("POST", "/v1/echo")}))
    srv = GatewayServer(gw, "127.0.0.1", 0)
    return srv, srv.start(), api


def test_streamed_route_sends_each_piece_as_a_chunk_before_the_next_exists():
    import threading

    gate = threading.Event()
    fn = StreamingFunction(gate=gate)
    srv, url, api = served_stream(fn)
    try:
        with requests.post(url + "/v1/echo", json={}, headers=AUTH, stream=True, timeout=10) as r:
            assert r.status_code == 200 and r.headers["Transfer-Encoding"] == "chunked"
            assert r.headers["Content-Type"] == "text/event-stream" and r.headers["X-Two"] == "1, 2"
            assert r.headers["Set-Cookie"] == "a=b"
            it = r.iter_content(chunk_size=None)
            assert next(it) == b"data: a\n\n"  # arrived while the function waits for this very read
            gate.set()
            assert b"".join(it) == b"data: b\n\n"
        assert not api.events  # the buffered function was not called
        # Buffered routes are unchanged.
        assert requests.get(url + "/health", headers=AUTH, timeout=10).json() == {"ok": True}
    finally:
        srv.stop()


def test_a_client_that_disconnects_closes_the_functions_stream_and_the_gateway_stays_up():
    import socket
    import time

    fn = StreamingFunction(forever=True, pieces=[b"data: " + b"x" * 200 + b"\n\n"])
    srv, url, _ = served_stream(fn)
    try:
        host, port = url.removeprefix("http://").split(":")
        sock = socket.create_connection((host, int(port)))
        sock.sendall(b"POST /v1/echo HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer k\r\n"
                     b"Content-Type: application/json\r\nContent-Length: 2\r\n\r\n{}")
        assert b"200 OK" in sock.recv(4096)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        sock.close()  # reset: the next write of the gateway fails
        deadline = time.monotonic() + 10
        while not fn.closed and time.monotonic() < deadline:
            time.sleep(0.01)
        assert fn.closed
        produced = fn.produced
        time.sleep(0.1)
        assert fn.produced == produced  # nothing produced after the close
        assert requests.get(url + "/health", headers=AUTH, timeout=10).status_code == 200
    finally:
        srv.stop()


def test_a_stream_without_a_valid_prelude_is_a_502():
    srv, url, _ = served_stream(StreamingFunction(prelude=b'{"no": "status"}' + b"\0" * 8))
    try:
        r = requests.post(url + "/v1/echo", json={}, headers=AUTH, timeout=10)
        assert r.status_code == 502 and r.json()["error"]["code"] == "internal_error"
    finally:
        srv.stop()


# ------------------------------------------------------------------------------ usage plans
class FakeClock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def limiter(plans: dict, clock=None, now=lambda: 1_700_000_000.0):
    from local.gateway import UsageLimiter

    return UsageLimiter(lambda value: plans.get(value), cache_s=0, clock=clock or FakeClock(), now=now)


def test_usage_limiter_is_a_token_bucket_per_key_with_burst_and_rate():
    from ops.usage_plans import KeyLimits

    clock = FakeClock()
    lim = limiter({"a": KeyLimits(rate=2, burst=3), "b": KeyLimits(rate=2, burst=3)}, clock)
    for _ in range(3):
        lim.admit("a")
    with pytest.raises(GatewayError) as exc:
        lim.admit("a")
    assert exc.value.status == 429 and exc.value.code == "rate_limited" and exc.value.headers["Retry-After"]
    lim.admit("b")             # another key has its own bucket
    clock.t += 0.5             # 2/s refills one request in 0.5 s
    lim.admit("a")
    with pytest.raises(GatewayError):
        lim.admit("a")


def test_usage_limiter_quota_per_day_then_the_next_day_resets():
    from ops.usage_plans import KeyLimits

    day = [1_700_000_000.0]
    lim = limiter({"a": KeyLimits(quota=2, period="DAY")}, now=lambda: day[0])
    lim.admit("a"), lim.admit("a")
    with pytest.raises(GatewayError) as exc:
        lim.admit("a")
    assert exc.value.status == 429 and exc.value.code == "quota_exceeded"
    day[0] += 86_400
    lim.admit("a")


def test_usage_limiter_refuses_a_missing_or_unknown_usage_key_with_403():
    lim = limiter({})
    for value in (None, "", "nope"):
        with pytest.raises(GatewayError) as exc:
            lim.admit(value)
        assert exc.value.status == 403 and exc.value.code == "key_not_enabled"


def test_gateway_throttles_per_usage_identifier_key_before_the_function_runs():
    from local.gateway import UsageLimiter
    from ops.usage_plans import KeyLimits

    def with_usage_key(event, context=None):
        return {**allow_all(event), "usageIdentifierKey": "uk-" + event["authorizationToken"][-1]}

    api = Recorder()
    gw = Gateway(LambdaFunction("api", api), LambdaFunction("authorizer", Recorder(with_usage_key)),
                 routes=TEST_ROUTES, stage="local",
                 usage=UsageLimiter(lambda v: KeyLimits(rate=0.001, burst=2), cache_s=60))
    req = lambda token: HttpRequest("GET", "/health", [("Authorization", f"Bearer {token}")], b"")  # noqa: E731
    assert [gw.handle(req("k1")).status for _ in range(3)] == [200, 200, 429]
    assert gw.handle(req("k2")).status == 200  # one key's burst never spends another's
    throttled = gw.handle(req("k1"))
    assert dict(throttled.headers)["Retry-After"] == "1" and json.loads(throttled.body)["error"]["type"] == "rate_limit_error"
    assert len(api.events) == 3
    assert all("usageIdentifierKey" not in e["requestContext"]["authorizer"] for e, _ in api.events)


# ------------------------------------------------------------------------------ framing and headers
def raw_request(url: str, head: bytes, body: bytes = b"", timeout: float = 10) -> tuple[int, dict]:
    """Send bytes as they are (no client normalising them); the status and JSON body that came back."""
    import socket
    from urllib.parse import urlsplit

    u = urlsplit(url)
    with socket.create_connection((u.hostname, u.port), timeout=timeout) as s:
        s.sendall(head + body)
        data = b""
        while True:
            try:
                chunk = s.recv(65536)
            except (ConnectionResetError, TimeoutError):
                break
            if not chunk:
                break
            data += chunk
            if b"\r\n\r\n" in data:
                header, _, rest = data.partition(b"\r\n\r\n")
                length = int(dict(line.split(b": ", 1) for line in header.split(b"\r\n")[1:]
                                  if b": " in line).get(b"Content-Length", b"0"))
                if len(rest) >= length:
                    return int(header.split()[1]), json.loads(rest[:length] or b"{}")
    raise AssertionError(f"no complete answer: {data[:200]!r}")


def _head(*lines: str) -> bytes:
    return ("POST /v1/echo HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer cir_abc_secret\r\n"
            "Content-Type: application/json\r\n" + "".join(f"{ln}\r\n" for ln in lines) + "\r\n").encode()


@pytest.mark.parametrize(("lines", "body", "status", "code"), [
    (["Content-Length: 1000000000000000"], b"{}", 413, "payload_too_large"),     # 10^15: refused unread
    (["Content-Length: 99999999999999999999999"], b"{}", 413, "payload_too_large"),
    (["Content-Length: -5"], b"{}", 400, "bad_framing"),
    (["Content-Length: abc"], b"{}", 400, "bad_framing"),
    (["Content-Length: 2", "Content-Length: 3"], b"{}", 400, "bad_framing"),
    (["Content-Length: 2", "Transfer-Encoding: chunked"], b"2\r\n{}\r\n0\r\n\r\n", 400, "bad_framing"),
    (["Transfer-Encoding: gzip"], b"{}", 400, "bad_framing"),
    (["Transfer-Encoding: chunked"], b"zz\r\n{}\r\n0\r\n\r\n", 400, "bad_framing"),
    (["Transfer-Encoding: chunked"], b"5\r\n{}\r\n0\r\n\r\n", 400, "bad_framing"),
], ids=["length_1e15", "length_huge_digits", "length_negative", "length_not_a_number", "length_conflicting",
        "length_and_chunked", "unknown_transfer_encoding", "chunk_size_not_hex", "chunk_shorter_than_its_size"])
def test_malformed_or_oversized_framing_is_a_json_error_without_reading_the_body(served, lines, body, status, code):
    url, api, _ = served()
    got, err = raw_request(url, _head(*lines), body)
    assert got == status and err["error"]["code"] == code and set(err["error"]) == {"message", "type", "param", "code"}
    assert api.events == []
    assert requests.get(url + "/health", headers=AUTH, timeout=10).status_code == 200


def test_a_chunked_body_over_the_limit_is_413_and_never_buffered_whole(served):
    url, api, _ = served()
    chunk = b"x" * (1024 * 1024)
    body = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(MAX_PAYLOAD_BYTES // len(chunk) + 2))
    got, err = raw_request(url, _head("Transfer-Encoding: chunked"), body + b"0\r\n\r\n")
    assert got == 413 and err["error"]["code"] == "payload_too_large" and api.events == []


def test_a_small_chunked_json_body_reaches_the_function(served):
    url, api, _ = served()
    got, _ = raw_request(url, _head("Transfer-Encoding: chunked"), b'2\r\n{}\r\n0\r\n\r\n')
    assert got == 200 and api.events[0][0]["body"] == "{}"


def test_two_authorization_headers_are_a_400_before_the_authorizer(served):
    url, api, auth = served()
    got, err = raw_request(url, _head("Authorization: Bearer cir_other_secret", "Content-Length: 2"), b"{}")
    assert got == 400 and err["error"]["code"] == "duplicate_authorization"
    assert api.events == [] and auth.events == []
