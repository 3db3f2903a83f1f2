"""Responses: a use case's result as JSON with the headers the API promises (model version, route)."""
from __future__ import annotations

from typing import Any

from aws_lambda_powertools.event_handler import Response, content_types

from functions.core import json_text
from functions.core.contract import MODEL_VERSION_HEADER, ROUTE_HEADER
from functions.core.result import Result

__all__ = ["MODEL_VERSION_HEADER", "ROUTE_HEADER", "json_response"]


class _EncodedResponse(Response):
    """A JSON response whose text was written once, here, with the fast encoder (functions/core/json_text.py).

    ``body`` stays the dict while the middlewares run (usage metering reads ``body["usage"]``). The
    resolver asks ``is_json()`` when it builds the response, right before it would ``json.dumps`` a
    body that is not text yet; the text is handed over at that point, so the resolver's serializer
    never walks the vectors again.
    """

    def __init__(self, *, text: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._text = text

    def is_json(self) -> bool:
        self.body = self._text
        return True


def json_response(result: Result | dict, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """``result`` as a JSON response; its model version (if any) goes into MODEL_VERSION_HEADER."""
    if isinstance(result, Result):
        body, version = result.body, result.model_version
    else:
        body, version = result, None
    out = dict(headers or {})
    if version is not None:
        out[MODEL_VERSION_HEADER] = version
    fields = {"status_code": status, "content_type": content_types.APPLICATION_JSON, "body": body, "headers": out}
    try:
        text = json_text.dumps(body)
    except TypeError:
        # A value JSON has no plain form for (a Decimal from DynamoDB, a pydantic model): the
        # resolver's own serializer knows those.
        return Response(**fields)
    return _EncodedResponse(text=text, **fields)
