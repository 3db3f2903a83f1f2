"""The one JSON encoder for response bodies and batch lines: same values as json.dumps, faster spelling."""
from __future__ import annotations

import json
import math
from decimal import Decimal

import numpy as np
import pytest
from aws_lambda_powertools.event_handler.api_gateway import APIGatewayRestResolver, ResponseBuilder
from aws_lambda_powertools.utilities.data_classes import APIGatewayProxyEvent

from functions.core import json_text
from functions.core.http.response import MODEL_VERSION_HEADER, json_response
from functions.core.result import Result
from light_support import api_event


def test_float32_vectors_keep_every_value_bit_for_bit():
    rng = np.random.default_rng(7)
    vec = rng.standard_normal((3, 384)).astype(np.float32)
    vec[0, :4] = [1e-5, -3.4e38, 1.0, 0.0]  # exponents, the float32 extremes, plain numbers
    body = {"data": [{"embedding": v.tolist()} for v in vec]}
    text = json_text.dumps(body)
    assert json.loads(text) == json.loads(json.dumps(body))  # the same float64 values as json.dumps
    back = np.array([d["embedding"] for d in json.loads(text)["data"]], dtype=np.float32)
    assert np.array_equal(back, vec)


def test_text_is_compact_utf8_and_int_keys_become_strings():
    text = json_text.dumps({"label": "Zürich 東京 😀", 3: [1, 2]})
    assert text == '{"label":"Zürich 東京 😀","3":[1,2]}'


def test_integers_past_64_bits_are_written_exactly():
    # A batch line's id may be any JSON integer; orjson stops at 64 bits.
    big = 2**70 + 1
    assert json.loads(json_text.dumps({"id": big, "v": [0.5]})) == {"id": big, "v": [0.5]}


def test_nan_is_null_not_the_invalid_json_token():
    assert json_text.dumps([math.nan, math.inf]) == "[null,null]"


def test_values_json_cannot_hold_are_a_type_error():
    with pytest.raises(TypeError):
        json_text.dumps({"amount": Decimal("1.5")})


def _built(resp) -> dict:
    event = APIGatewayProxyEvent(api_event("POST", "/v1/embeddings", {"input": "x"}))
    return ResponseBuilder(resp, serializer=APIGatewayRestResolver()._serializer).build(event)


def test_response_keeps_the_dict_for_middlewares_and_builds_the_encoded_text():
    body = {"object": "list", "data": [{"embedding": [0.1, -2.5e-07]}], "usage": {"total_tokens": 3}}
    resp = json_response(Result(body, "v1"))
    assert resp.body["usage"] == {"total_tokens": 3}  # what the usage middleware reads before the build
    built = _built(resp)
    assert built["body"] == json_text.dumps(body) and json.loads(built["body"]) == body
    assert built["statusCode"] == 200 and built["multiValueHeaders"][MODEL_VERSION_HEADER] == ["v1"]


def test_a_body_with_a_decimal_falls_back_to_the_resolvers_serializer():
    # DynamoDB numbers arrive as Decimal; Powertools' encoder writes them as strings.
    built = _built(json_response({"count": Decimal("2")}, 201))
    assert built["statusCode"] == 201 and json.loads(built["body"]) == {"count": "2"}
