"""CORS through the local system as through API Gateway: the preflight (OPTIONS, answered by the gateway
with no key), the headers on real answers (added by the functions, streamed ones included) and on the
gateway's own errors, for the dev stage's origins (cdk.json api.cors_origins); and a real page on an
allowed origin calling the API from headless Chromium."""
from __future__ import annotations

import json
import shutil
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests

from functions.core.contract import CORS_ALLOW_HEADERS
from infra.settings import load_stage

ORIGINS = load_stage("dev").api.cors_origins
PAGE_ORIGIN = "http://localhost:5173"
EMBED = {"model": "all-minilm-l6-v2", "input": "where is my parcel?"}


def preflight(local_cirrus, path: str, origin: str, method: str = "POST") -> requests.Response:
    # What a browser sends before a POST with Authorization + JSON: no key, no body.
    return requests.options(local_cirrus.url + path, timeout=30, headers={
        "Origin": origin, "Access-Control-Request-Method": method,
        "Access-Control-Request-Headers": "authorization,content-type"})


def test_dev_allows_the_local_dev_server_origins():
    assert PAGE_ORIGIN in ORIGINS and load_stage("prod").api.cors_origins == ()


@pytest.mark.parametrize("path", ["/v1/embeddings", "/v1/chat/completions", "/v1/models/all-minilm-l6-v2"])
def test_preflight_is_answered_by_the_gateway_without_a_key(local_cirrus, path):
    r = preflight(local_cirrus, path, PAGE_ORIGIN)
    assert r.status_code == 204, r.text
    assert r.headers["Access-Control-Allow-Origin"] == PAGE_ORIGIN
    allowed = {h.strip().lower() for h in r.headers["Access-Control-Allow-Headers"].split(",")}
    assert {"authorization", "content-type"} <= allowed and {h.lower() for h in CORS_ALLOW_HEADERS} <= allowed
    assert "POST" in r.headers["Access-Control-Allow-Methods"]
    assert int(r.headers["Access-Control-Max-Age"]) > 0


def test_preflight_from_an_unlisted_origin_does_not_name_it(local_cirrus):
    r = preflight(local_cirrus, "/v1/embeddings", "http://evil.example:5173")
    assert r.status_code == 204
    assert r.headers["Access-Control-Allow-Origin"] != "http://evil.example:5173"   # the browser blocks the call


def test_preflight_of_an_unknown_route_is_the_gateway_404(local_cirrus):
    r = preflight(local_cirrus, "/v1/nowhere", PAGE_ORIGIN)
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"


def test_a_cross_origin_call_gets_the_headers_on_the_answer(local_cirrus):
    r = local_cirrus.post("/v1/embeddings", EMBED, headers={"Origin": PAGE_ORIGIN})
    assert r.status_code == 200, r.text
    assert r.headers["Access-Control-Allow-Origin"] == PAGE_ORIGIN and r.headers["Vary"] == "Origin"
    exposed = r.headers["Access-Control-Expose-Headers"].split(",")
    assert "X-Cirrus-Model-Version" in exposed and r.headers["X-Cirrus-Model-Version"]
    # An unlisted origin gets an answer without CORS headers: its page cannot read it.
    other = local_cirrus.post("/v1/embeddings", EMBED, headers={"Origin": "http://evil.example"})
    assert other.status_code == 200 and "Access-Control-Allow-Origin" not in other.headers


@pytest.mark.parametrize("case", ["no_key", "bad_key", "bad_json", "function_422"])
def test_errors_cross_origin_carry_the_headers_so_the_page_sees_why(local_cirrus, case):
    url = local_cirrus.url + "/v1/embeddings"
    headers = {"Origin": PAGE_ORIGIN, "Content-Type": "application/json"}
    if case == "no_key":
        r = requests.post(url, data=json.dumps(EMBED), headers=headers, timeout=30)
        expected = 401
    elif case == "bad_key":
        r = requests.post(url, data=json.dumps(EMBED), headers={**headers, "Authorization": "Bearer nope"}, timeout=30)
        expected = 401
    elif case == "bad_json":
        r = requests.post(url, data="[1,", headers={**headers, **local_cirrus.auth}, timeout=30)
        expected = 400
    else:
        r = local_cirrus.post("/v1/embeddings", {"model": "all-minilm-l6-v2", "input": 7}, headers={"Origin": PAGE_ORIGIN})
        expected = 422
    assert r.status_code == expected, r.text
    assert set(r.json()["error"]) == {"message", "type", "param", "code"}
    assert r.headers["Access-Control-Allow-Origin"] == PAGE_ORIGIN


def test_a_streamed_answer_carries_the_headers(local_cirrus):
    body = {"model": "smollm2-135m-instruct", "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 4, "temperature": 0, "stream": True}
    with requests.post(local_cirrus.url + "/v1/chat/completions", json=body, stream=True, timeout=120,
                       headers={**local_cirrus.auth, "Origin": PAGE_ORIGIN}) as r:
        assert r.status_code == 200, r.text
        assert r.headers["Content-Type"].startswith("text/event-stream")
        assert r.headers["Access-Control-Allow-Origin"] == PAGE_ORIGIN
        assert b"[DONE]" in b"".join(r.iter_content(None))


# --- a real page on an allowed origin, in headless Chromium ------------------------------------------
CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")

PAGE = """<!doctype html><meta charset="utf-8"><title>cors</title><script>
async function call(url, key) {
  const out = {};
  try {
    const r = await fetch(url + "/v1/embeddings", {method: "POST",
      headers: {"Authorization": "Bearer " + key, "Content-Type": "application/json"},
      body: JSON.stringify({model: "all-minilm-l6-v2", input: "where is my parcel?"})});
    const body = await r.json();
    out.ok = {status: r.status, dims: body.data ? body.data[0].embedding.length : null,
              version: r.headers.get("X-Cirrus-Model-Version")};
  } catch (e) { out.ok = {failed: String(e)}; }
  try {
    const r = await fetch(url + "/v1/embeddings", {method: "POST",
      headers: {"Authorization": "Bearer wrong", "Content-Type": "application/json"}, body: "{}"});
    out.denied = {status: r.status, code: (await r.json()).error.code};
  } catch (e) { out.denied = {failed: String(e)}; }
  document.title = "done"; window.result = out;
}
</script>"""


class _Page(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802
        data = PAGE.encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


def _serve_page(port: int) -> ThreadingHTTPServer | None:
    try:
        server = ThreadingHTTPServer(("127.0.0.1", port), _Page)
    except OSError:
        return None
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def _run_page(browser, origin: str, local_cirrus) -> dict:
    browser.get(origin + "/")
    browser.execute_script("call(arguments[0], arguments[1])", local_cirrus.url, local_cirrus.key)
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(browser, 60).until(lambda d: d.title == "done")
    return browser.execute_script("return window.result")


@pytest.mark.skipif(not (CHROMIUM and DRIVER), reason="needs Debian's chromium and chromium-driver")
def test_a_page_on_an_allowed_origin_calls_the_api_and_one_elsewhere_cannot(local_cirrus):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    ports = sorted({int(o.rsplit(":", 1)[1]) for o in ORIGINS if o.startswith("http://localhost:")})
    server, port = None, None
    for port in ports:
        server = _serve_page(port)
        if server:
            break
    if server is None:
        pytest.skip(f"every allowed dev-server port {ports} is taken on this machine")
    with socket.socket() as s:      # a free port that no origin lists
        s.bind(("127.0.0.1", 0))
        other_port = s.getsockname()[1]
    other = _serve_page(other_port)
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=DRIVER), options=opts)
    try:
        allowed = _run_page(driver, f"http://localhost:{port}", local_cirrus)
        assert allowed["ok"] == {"status": 200, "dims": 384, "version": allowed["ok"]["version"]}, allowed
        assert allowed["ok"]["version"]                       # an exposed header the script may read
        assert allowed["denied"] == {"status": 401, "code": "invalid_api_key"}, allowed   # a gateway response
        blocked = _run_page(driver, f"http://localhost:{other_port}", local_cirrus)
        assert "failed" in blocked["ok"] and "failed" in blocked["denied"], blocked   # the browser's CORS error
    finally:
        driver.quit()
        server.shutdown()
        if other:
            other.shutdown()
