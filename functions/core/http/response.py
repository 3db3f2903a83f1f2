"""Responses: a use case's result as JSON with the headers the API promises (model version, route)."""
from __future__ import annotations

from aws_lambda_powertools.event_handler import Response, content_types

from functions.core.contract import MODEL_VERSION_HEADER, ROUTE_HEADER
from functions.core.result import Result

__all__ = ["MODEL_VERSION_HEADER", "ROUTE_HEADER", "json_response"]


def json_response(result: Result | dict, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """``result`` as a JSON response; its model version (if any) goes into MODEL_VERSION_HEADER."""
    if isinstance(result, Result):
        body, version = result.body, result.model_version
    else:
        body, version = result, None
    out = dict(headers or {})
    if version is not None:
        out[MODEL_VERSION_HEADER] = version
    return Response(status_code=status, content_type=content_types.APPLICATION_JSON, body=body, headers=out)
