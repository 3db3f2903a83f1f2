"""GET /openapi.json: every route of the API, request bodies from the models the routes validate with."""
from __future__ import annotations

import json

from functions.core.http.openapi import OPERATIONS
from functions.core.light.schemas import EmbeddingsRequest
from infra.resources import ROUTES
from light_support import api_event, call_api


def test_every_route_is_described_and_nothing_else():
    assert set(OPERATIONS) == set(ROUTES)


def test_openapi_json_is_served_with_the_request_models(light_api):
    status, doc, _ = call_api(api_event("GET", "/openapi.json"))
    assert status == 200 and doc["openapi"].startswith("3.1")
    assert {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops} == set(ROUTES)
    ref = doc["paths"]["/v1/embeddings"]["post"]["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    assert ref == "#/components/schemas/EmbeddingsRequest"
    assert doc["components"]["schemas"]["EmbeddingsRequest"]["properties"].keys() == \
        EmbeddingsRequest.model_json_schema()["properties"].keys()
    assert doc["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    # Every $ref resolves inside the document.
    refs = {r.split("/")[-1] for r in json.dumps(doc).split('"$ref": "')[1:] for r in [r.split('"')[0]]}
    assert refs <= set(doc["components"]["schemas"])
