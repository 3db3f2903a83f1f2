"""The HTTP API: one Powertools REST resolver, its routes, and the one error mapping for all of them.

Other parts add their routes as a Powertools ``Router`` in their own module, included below, so
every route shares the same body parsing, limits and error bodies.
"""
from __future__ import annotations

import json
from typing import Any, TypeVar

from aws_lambda_powertools.event_handler import APIGatewayRestResolver, Response, content_types
from aws_lambda_powertools.event_handler.exceptions import NotFoundError, ServiceError
from pydantic import BaseModel, ValidationError

from functions.core import service
from functions.core.errors import CirrusError, InvalidJSON, NotFound, PayloadTooLarge, ValidationFailed, to_response
from functions.core.observability import logger, metrics
from functions.core.schemas import ClassifyRequest, EmbeddingsRequest
from functions.core.settings import get_settings

app = APIGatewayRestResolver()

M = TypeVar("M", bound=BaseModel)


# --- request helpers (routers import these: one way to read a body) -------------------------------
def read_json(resolver: Any = None) -> Any:
    """The request body as JSON, after the body-size limit: 413 too large, 400 not JSON."""
    event = (resolver or app).current_event
    raw = event.body or ""
    limit = get_settings().max_body_bytes
    # API Gateway hands the body over as text (base64 when binary): measure what the client sent.
    size = len(raw) * 3 // 4 if event.is_base64_encoded else len(raw.encode("utf-8", "surrogatepass"))
    if size > limit:
        raise PayloadTooLarge(f"request body is {size} bytes, the limit is {limit}", code="body_too_large")
    try:
        text = event.decoded_body or ""
        if not text.strip():
            raise InvalidJSON("request body is empty; expected a JSON object")
        return json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        # json's message has line/column only (no body text), useful to a client fixing its request.
        raise InvalidJSON(f"request body is not valid JSON: {exc.__class__.__name__}: "
                          f"{getattr(exc, 'msg', 'undecodable bytes')}") from exc


def parse(model: type[M], resolver: Any = None) -> M:
    """Validate the JSON body against ``model``: 422 naming the first bad field (value never echoed)."""
    body = read_json(resolver)
    if not isinstance(body, dict):
        raise ValidationFailed("request body must be a JSON object")
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        raise validation_error(exc) from None


def validation_error(exc: ValidationError) -> ValidationFailed:
    first = exc.errors(include_url=False, include_input=False)[0]
    loc = [str(p) for p in first["loc"]]
    # Union members add their type name to loc (e.g. input.str / input.list[...]); drop them.
    loc = [p for p in loc if not (p.startswith(("str", "list[", "int", "function-")) and p != loc[0])]
    param = ".".join(loc) or None
    msg = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        msg = "unknown field"
    return ValidationFailed(f"{param}: {msg}" if param else msg, param=param)


def json_response(result: service.Result, status: int = 200) -> Response:
    return Response(status_code=status, content_type=content_types.APPLICATION_JSON,
                    body=result.body, headers=result.headers)


# --- errors: every route, every router ------------------------------------------------------------
def _error(err: BaseException) -> Response:
    status, body, headers = to_response(err)
    metrics.add_metric(name="ServerErrors" if status >= 500 else "ClientErrors", unit="Count", value=1)
    return Response(status_code=status, content_type=content_types.APPLICATION_JSON, body=body,
                    headers=headers)


@app.exception_handler(CirrusError)
def _client_error(err: CirrusError) -> Response:
    level = logger.warning if err.status >= 500 else logger.info
    level("request refused", extra={"status": err.status, "code": err.code, "error_type": err.type})
    return _error(err)


@app.not_found
def _route_not_found(_: NotFoundError) -> Response:
    ev = app.current_event
    return _error(NotFound(f"Unknown route: {ev.http_method} {ev.path}", code="unknown_route"))


@app.exception_handler(ServiceError)
def _powertools_error(err: ServiceError) -> Response:
    # Powertools' own HTTP errors (e.g. raised by a router) keep their status, in our body shape.
    mapped = CirrusError(err.msg)
    mapped.status = err.status_code
    mapped.type = "invalid_request_error" if err.status_code < 500 else "server_error"
    mapped.code = None
    return _error(mapped)


@app.exception_handler(Exception)
def _bug(err: Exception) -> Response:
    # A real bug: full trace to the log (no request data in it), a bare 500 to the client.
    logger.exception("unhandled error")
    return _error(err)


# --- light-path routes ----------------------------------------------------------------------------
@app.post("/v1/embeddings")
def embeddings() -> Response:
    return json_response(service.create_embeddings(parse(EmbeddingsRequest), get_settings()))


@app.post("/v1/classify")
def classify() -> Response:
    return json_response(service.classify(parse(ClassifyRequest), get_settings()))


@app.get("/v1/models")
def models() -> Response:
    return json_response(service.list_models(get_settings()))


@app.get("/health")
def health() -> Response:
    return json_response(service.health(get_settings()))


# --- routes owned by other parts: one line each ---------------------------------------------------
from functions.core.batch.routes import router as jobs_router; app.include_router(jobs_router)  # noqa: E402,E702
from functions.core.generation.routes import router as generation_router; app.include_router(generation_router)  # noqa: E402,E702
