"""GET /openapi.json: every route of the API, request bodies from the models the routes validate with."""
from __future__ import annotations

import json

from functions.core.http.openapi import OPERATIONS
from functions.core.light.schemas import EmbeddingsRequest
from infra.resources import DOCS_ROUTES, ROUTES
from light_support import api_event, call_api, lambda_context


DESCRIBED = set(ROUTES) | {("GET", "/openapi.json")}  # the Swagger UI page itself is not an API


def test_every_route_is_described_and_nothing_else():
    assert set(OPERATIONS) == DESCRIBED and ("GET", "/openapi.json") in DOCS_ROUTES


def test_openapi_json_is_served_with_the_request_models(light_api):
    status, doc, _ = call_api(api_event("GET", "/openapi.json"))
    assert status == 200 and doc["openapi"] == "3.0.3"
    assert {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops} == DESCRIBED
    assert doc["paths"]["/openapi.json"]["get"]["security"] == []
    text = json.dumps(doc)
    assert '"const"' not in text and '{"type": "null"}' not in text  # OpenAPI 3.0 dialect
    ref = doc["paths"]["/v1/embeddings"]["post"]["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    assert ref == "#/components/schemas/EmbeddingsRequest"
    assert doc["components"]["schemas"]["EmbeddingsRequest"]["properties"].keys() == \
        EmbeddingsRequest.model_json_schema()["properties"].keys()
    assert doc["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    # Every $ref resolves inside the document.
    refs = {r.split("/")[-1] for r in json.dumps(doc).split('"$ref": "')[1:] for r in [r.split('"')[0]]}
    assert refs <= set(doc["components"]["schemas"])


def _raw(path: str) -> dict:
    from functions.handlers.api import handler

    return handler(api_event("GET", path), lambda_context())


def _type(resp: dict) -> str:
    return ({**(resp.get("headers") or {}), **{k: v[-1] for k, v in (resp.get("multiValueHeaders") or {}).items()}}
            ["Content-Type"])


def test_docs_page_and_its_assets_are_served(light_api):
    page = _raw("/docs")
    assert page["statusCode"] == 200 and _type(page).startswith("text/html") and 'url: "openapi.json"' in page["body"]
    js = _raw("/docs/swagger-ui-bundle.js")
    assert js["statusCode"] == 200 and _type(js) == "application/javascript" and "SwaggerUIBundle" in js["body"]
    assert _raw("/docs/..%2Fsecret")["statusCode"] == 404
