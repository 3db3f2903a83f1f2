"""CORS in the function (functions/core/http/app.py StageCors): the stage's origins get the headers on
every answer, errors and the streamed prelude included; other origins and stages without CORS get none."""
from __future__ import annotations

import pytest

from functions.core.contract import CORS_ALLOW_HEADERS, CORS_EXPOSE_HEADERS, MODEL_VERSION_HEADER, cors_allow_origin
from generation_support import TINY
from light_support import EMBEDDER, api_event, assert_error, call_api

PAGE = "http://localhost:5173"


def with_origin(event: dict, origin: str | None) -> dict:
    if origin is not None:
        event["headers"]["Origin"] = origin
        event.setdefault("multiValueHeaders", {})["Origin"] = [origin]
    return event


@pytest.fixture
def cors_api(env, bundles_dir):
    return env(model_dir=str(bundles_dir), models=[EMBEDDER], cors_origins=[PAGE, "https://app.example.com"],
               cors_headers=["X-Trace-Id"])


def test_a_listed_origin_gets_the_cors_headers_on_a_real_answer(cors_api):
    status, body, headers = call_api(with_origin(api_event("POST", "/v1/embeddings",
                                                           {"model": EMBEDDER, "input": "hi"}), PAGE))
    assert status == 200, body
    assert headers["Access-Control-Allow-Origin"] == PAGE
    assert headers["Vary"] == "Origin"
    allowed = {h.strip().lower() for h in headers["Access-Control-Allow-Headers"].split(",")}
    assert {h.lower() for h in CORS_ALLOW_HEADERS} | {"x-trace-id"} <= allowed
    assert set(headers["Access-Control-Expose-Headers"].split(",")) == set(CORS_EXPOSE_HEADERS)
    assert MODEL_VERSION_HEADER in headers and "Access-Control-Allow-Credentials" not in headers


@pytest.mark.parametrize(("path", "body", "status", "code"), [
    ("/v1/embeddings", {"model": EMBEDDER, "input": 5}, 422, None),
    ("/v1/embeddings", {"model": "no-such-model", "input": "x"}, 404, "model_not_found"),
    ("/v1/nowhere", None, 404, "unknown_route"),
])
def test_errors_carry_the_cors_headers_so_the_page_can_read_them(cors_api, path, body, status, code):
    got, payload, headers = call_api(with_origin(api_event("POST", path, body), "https://app.example.com"))
    assert_error(got, payload, status, code)
    assert headers["Access-Control-Allow-Origin"] == "https://app.example.com"


@pytest.mark.parametrize("origin", [None, "http://localhost:5174", "https://app.example.com.evil.test", "null"])
def test_other_origins_and_requests_without_one_get_no_cors_headers(cors_api, origin):
    status, _, headers = call_api(with_origin(api_event("GET", "/health"), origin))
    assert status == 200
    assert not [h for h in headers if h.lower().startswith("access-control-")]


def test_a_stage_without_cors_adds_nothing_for_any_origin(env, bundles_dir):
    env(model_dir=str(bundles_dir), models=[EMBEDDER])
    status, _, headers = call_api(with_origin(api_event("GET", "/health"), PAGE))
    assert status == 200 and not [h for h in headers if h.lower().startswith("access-control-")]


def test_a_star_stage_answers_every_origin_with_star_and_no_vary(env, bundles_dir):
    env(model_dir=str(bundles_dir), models=[EMBEDDER], cors_origins=["*"])
    _, _, headers = call_api(with_origin(api_event("GET", "/health"), "https://anyone.example"))
    assert headers["Access-Control-Allow-Origin"] == "*" and "Vary" not in headers


def test_origin_matching_is_exact():
    allowed = ["http://localhost:3000"]
    assert cors_allow_origin("http://localhost:3000", allowed) == "http://localhost:3000"
    for other in ("http://localhost:3001", "http://localhost:3000/", "https://localhost:3000", "", None):
        assert cors_allow_origin(other, allowed) is None
    assert cors_allow_origin("https://x.example", ["*"]) == "*"


def test_the_streamed_prelude_carries_the_cors_headers(env, tiny_bundle):
    from test_streaming import stream_call

    env(model_dir=str(tiny_bundle.parent), models=[TINY], generation_models=[TINY], light_max_tokens=64,
        sync_max_tokens=64, cors_origins=[PAGE])
    chunks, prelude, _ = stream_call({"model": TINY, "messages": [{"role": "user", "content": "hi"}],
                                      "max_tokens": 4, "temperature": 0, "stream": True}, headers={"Origin": PAGE})
    list(chunks)
    assert prelude["statusCode"] == 200
    assert prelude["headers"]["Access-Control-Allow-Origin"] == PAGE
    assert prelude["headers"]["Content-Type"].startswith("text/event-stream")
