"""The HTTP API: one Powertools REST resolver, the one error mapping for every route, the routers.

Each area adds its routes as a Powertools ``Router`` in ``functions/core/http/routes/``, included
below, so every route shares the same body parsing and limits (``http/body.py``) and error bodies.
"""
from __future__ import annotations

from aws_lambda_powertools.event_handler import APIGatewayRestResolver, CORSConfig, Response, content_types
from aws_lambda_powertools.event_handler.exceptions import NotFoundError, ServiceError

from functions.core.contract import (CORS_ALLOW_HEADERS, CORS_EXPOSE_HEADERS, CORS_MAX_AGE_S,
                                     cors_allow_origin)
from functions.core.errors import CirrusError, NotFound, to_response
from functions.core.http.body import caller_key_id
from functions.core.http.routes.docs import router as docs_router
from functions.core.http.routes.generation import router as generation_router
from functions.core.http.routes.jobs import router as jobs_router
from functions.core.http.routes.light import router as light_router
from functions.core.http.routes.openai_batch import router as openai_batch_router
from functions.core.observability import logger, metrics
from functions.core.settings import get_settings


class StageCors(CORSConfig):
    """The stage's CORS policy (``Settings.cors_origins`` / ``cors_headers``) for Powertools.

    Powertools adds these headers to every answer of the resolver, errors and the streamed prelude
    included; read from the settings on each request, so an empty list (the default, prod) adds none.
    A listed origin is echoed with ``Vary: Origin`` (caches must not hand it to another origin).
    """

    def __init__(self) -> None:   # no super(): origins and headers come from the settings, per request
        self.expose_headers = list(CORS_EXPOSE_HEADERS)
        self.max_age = CORS_MAX_AGE_S
        self.allow_credentials = False   # bearer keys, never cookies

    @property
    def _allowed_origins(self) -> list[str]:
        return get_settings().cors_origins

    @property
    def allow_headers(self) -> set[str]:
        return set(self._REQUIRED_HEADERS) | set(CORS_ALLOW_HEADERS) | set(get_settings().cors_headers)

    def allowed_origin(self, extracted_origin: str | None) -> str | None:
        return cors_allow_origin(extracted_origin, self._allowed_origins)

    def to_dict(self, origin: str | None) -> dict[str, str]:
        headers = super().to_dict(origin)
        if headers and origin != "*":
            headers["Vary"] = "Origin"
        return headers


app = APIGatewayRestResolver(cors=StageCors())


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


# --- usage per key: ids and counts, never the key or the text ---------------------------------------
def _meter_usage(resolver: APIGatewayRestResolver, next_middleware) -> Response:
    resp = next_middleware(resolver)
    # Bodies are still dicts here (serialised after the middlewares): reading usage costs nothing.
    usage = resp.body.get("usage") if isinstance(resp.body, dict) else None
    tokens = usage.get("total_tokens", usage.get("prompt_tokens")) if isinstance(usage, dict) else None
    logger.info("usage", extra={"key_id": caller_key_id(resolver), "route": resolver.current_event.resource,
                                "status": resp.status_code, "requests": 1,
                                "tokens": tokens if isinstance(tokens, int) else 0})
    metrics.add_metric(name="Requests", unit="Count", value=1)
    if isinstance(tokens, int):
        metrics.add_metric(name="Tokens", unit="Count", value=tokens)
    return resp


app.use(middlewares=[_meter_usage])


# --- the routes, one router per area --------------------------------------------------------------
app.include_router(light_router)
app.include_router(jobs_router)
app.include_router(generation_router)
app.include_router(openai_batch_router)
app.include_router(docs_router)
