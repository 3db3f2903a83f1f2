"""The stores Cirrus needs, as plain data: one list read by the CDK constructs and by the local system.

No CDK import here, so the local emulation (local/) can create the same buckets, tables and queues
on a moto server from the same description the stack deploys.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from functions.core.contract import (CORS_ALLOW_HEADERS, CORS_EXPOSE_HEADERS, CORS_MAX_AGE_S, CORS_METHODS,
                                     cors_allow_origin)


@dataclass(frozen=True)
class Key:
    name: str
    type: str = "S"  # S | N


@dataclass(frozen=True)
class Index:
    name: str
    partition: Key
    sort: Key | None = None


@dataclass(frozen=True)
class TableSpec:
    id: str                    # logical id, e.g. "Jobs"
    env: str                   # Settings field that receives the table name
    partition: Key
    sort: Key | None = None
    ttl_attribute: str | None = None
    indexes: tuple[Index, ...] = ()


@dataclass(frozen=True)
class QueueSpec:
    id: str
    env: str | None            # Settings field that receives the queue URL (None: not read by code)
    max_receive_count: int = 3  # receives before a message moves to the queue's DLQ
    consumer: str | None = None  # function id (infra.constructs.functions.FUNCTIONS) fed by this queue
    dlq_consumer: str | None = None  # function id fed by this queue's DLQ (marks the jobs failed)


@dataclass(frozen=True)
class BucketSpec:
    id: str
    env: str


@dataclass(frozen=True)
class Resources:
    buckets: tuple[BucketSpec, ...]
    tables: tuple[TableSpec, ...]
    queues: tuple[QueueSpec, ...]
    # S3 prefixes are in functions/core/contract.py (the functions ship without infra/).


RESOURCES = Resources(
    buckets=(
        BucketSpec(id="Artifacts", env="artifacts_bucket"),
        BucketSpec(id="Data", env="data_bucket"),
    ),
    tables=(
        TableSpec(id="ApiKeys", env="api_keys_table", partition=Key("key_id")),
        TableSpec(id="Jobs", env="jobs_table", partition=Key("pk"), sort=Key("sk"),
                  ttl_attribute="expires_at",
                  # by_owner: a key lists its own jobs without reading anyone else's (sparse: jobs
                  # dropped into the bucket have no owner and are only in by_created).
                  indexes=(Index("by_created", Key("kind"), Key("created_at")),
                           Index("by_owner", Key("owner"), Key("created_at")))),
    ),
    queues=(
        # S3 ObjectCreated(jobs/input/*.jsonl) -> splitter
        QueueSpec(id="JobEvents", env=None, consumer="batch_splitter", dlq_consumer="batch_dlq"),
        # chunk messages -> worker
        QueueSpec(id="Work", env="work_queue_url", consumer="batch_worker", dlq_consumer="batch_dlq"),
    ),
)


# Every route the api function serves: (method, API Gateway resource path). The REST API
# (infra.constructs.api) creates exactly these and the local gateway (local/gateway.py) routes by
# them, so a route missing here answers 404 before reaching Lambda, in AWS and locally alike.
ROUTES: tuple[tuple[str, str], ...] = (
    ("GET", "/health"),
    ("GET", "/v1/models"),
    ("GET", "/v1/models/{model}"),
    ("POST", "/v1/embeddings"),
    ("POST", "/v1/classify"),
    ("POST", "/v1/chat/completions"),
    ("POST", "/v1/completions"),
    ("POST", "/v1/jobs"),
    ("GET", "/v1/jobs"),
    ("GET", "/v1/jobs/{id}"),
    ("GET", "/v1/generation/jobs/{id}"),  # async generation status (functions.core.generation)
    # The OpenAI Files and Batch API (functions.core.batch.openai_api)
    ("POST", "/v1/files"),
    ("GET", "/v1/files/{id}"),
    ("GET", "/v1/files/{id}/content"),
    ("POST", "/v1/batches"),
    ("GET", "/v1/batches"),
    ("GET", "/v1/batches/{id}"),
    ("POST", "/v1/batches/{id}/cancel"),
)

# The routes whose answers may stream (``stream: true``): API Gateway invokes the ``generation``
# function for them with STREAM transfer mode (InvokeWithResponseStream; infra.constructs.api), the
# local gateway likewise (local/gateway.py). Every other route is buffered by the ``api`` function.
STREAMED_ROUTES: frozenset[tuple[str, str]] = frozenset({
    ("POST", "/v1/chat/completions"),
    ("POST", "/v1/completions"),
})
STREAM_FUNCTION = "generation"

# The API's description and its Swagger UI page: public (a browser loading a page sends no key; the
# page's "try it out" calls send the key given to its Authorize button). The REST API creates them
# only in stages with ``api.docs`` (cdk.json; off unless set); the local gateway always serves them.
DOCS_ROUTES: tuple[tuple[str, str], ...] = (
    ("GET", "/openapi.json"),
    ("GET", "/docs"),
    ("GET", "/docs/{file}"),
)

# POST routes that take no body (clients send none, yet label it application/json): the gateway's
# JSON-object check does not apply to them. (Multipart uploads are not application/json: unchecked.)
BODYLESS_POSTS: frozenset[str] = frozenset({"/v1/batches/{id}/cancel"})


@dataclass(frozen=True)
class Cors:
    """A stage's CORS as API Gateway applies it itself (infra.constructs.api), and the local gateway
    likewise (local/gateway.py): the preflight (OPTIONS on every route's path, no key) and the headers
    on the gateway's own error answers. The functions add the same headers to theirs
    (functions/core/http/app.py) from ``Settings.cors_origins`` / ``cors_headers``."""

    origins: tuple[str, ...]
    extra_headers: tuple[str, ...] = ()

    @property
    def enabled(self) -> bool:
        return bool(self.origins)

    @property
    def allow_headers(self) -> tuple[str, ...]:
        return (*CORS_ALLOW_HEADERS, *self.extra_headers)

    def preflight_headers(self, origin: str | None) -> dict[str, str]:
        """What the REST API's preflight answers (status 204): CDK's mock integration sets the first
        listed origin and overrides it with the request's origin when that one is listed."""
        allowed = cors_allow_origin(origin, self.origins) or self.origins[0]
        return {"Access-Control-Allow-Origin": allowed, "Access-Control-Allow-Headers": ",".join(self.allow_headers),
                "Access-Control-Allow-Methods": ",".join(CORS_METHODS), "Access-Control-Max-Age": str(CORS_MAX_AGE_S),
                **({"Vary": "Origin"} if len(self.origins) > 1 else {})}

    @property
    def echoes_origin(self) -> bool:
        """Gateway responses are static templates: with several origins they can only echo the caller's."""
        return len(self.origins) > 1

    def error_headers(self) -> dict[str, str | None]:
        """Headers on the gateway's own answers (401, 403, 404, 413, 429, 5xx); None stands for "the
        request's Origin" (``method.request.header.Origin``), all an error template can express for a
        list of origins. The error bodies are the fixed ones below, so echoing exposes nothing."""
        if not self.enabled:
            return {}
        out: dict[str, str | None] = {"Access-Control-Allow-Origin": None if self.echoes_origin else self.origins[0],
                                      "Access-Control-Expose-Headers": ",".join(CORS_EXPOSE_HEADERS)}
        if self.echoes_origin:
            out["Vary"] = "Origin"
        return out


@dataclass(frozen=True)
class GatewayResponse:
    """An error API Gateway answers itself, in the same OpenAI shape as the functions' (functions/core/errors.py)."""

    status: int | None         # None: keep the status API Gateway chose (the DEFAULT_4XX/5XX families)
    type: str
    code: str
    message: str
    headers: dict[str, str] = field(default_factory=dict)  # besides Content-Type

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": None, "code": self.code}}


_BAD_KEY = GatewayResponse(401, "authentication_error", "invalid_api_key",
                           "Missing or invalid API key (Authorization: Bearer <key>).")
_RETRY_AFTER = {"Retry-After": "1"}
_UNKNOWN_ROUTE = GatewayResponse(404, "invalid_request_error", "not_found", "Unknown route.")

# The REST API's gateway responses, keyed by API Gateway ResponseType name: infra.constructs.api
# installs them and the local gateway (local/gateway.py) answers with them. Field validation stays
# in the function (422 with the field named), so local and AWS agree; the gateway only rejects
# bodies that are not a JSON object. ACCESS_DENIED is a 401 like a bad key: a key is all a client has.
GATEWAY_RESPONSES: dict[str, GatewayResponse] = {
    "BAD_REQUEST_BODY": GatewayResponse(400, "invalid_request_error", "invalid_json",
                                        "The request body must be a JSON object."),
    "UNAUTHORIZED": _BAD_KEY,
    "ACCESS_DENIED": _BAD_KEY,
    "MISSING_AUTHENTICATION_TOKEN": _UNKNOWN_ROUTE,  # what REST APIs answer for an unknown route
    "RESOURCE_NOT_FOUND": _UNKNOWN_ROUTE,
    # Stage throttling is a token bucket refilled every second: a client may retry after 1 s.
    "THROTTLED": GatewayResponse(429, "rate_limit_error", "rate_limited", "Rate limit reached; retry later.",
                                 headers=_RETRY_AFTER),
    "QUOTA_EXCEEDED": GatewayResponse(429, "rate_limit_error", "quota_exceeded", "Quota exceeded.",
                                      headers=_RETRY_AFTER),
    # apiKeySource AUTHORIZER: a key the authorizer let in but that is in no usage plan (created
    # without one, or its usage key disabled). API Gateway's own answer is a bare 403.
    "INVALID_API_KEY": GatewayResponse(403, "permission_error", "key_not_enabled",
                                       "This API key is not enabled for this API (no usage plan)."),
    "REQUEST_TOO_LARGE": GatewayResponse(413, "invalid_request_error", "payload_too_large",
                                         "The request body is too large."),
    "INTEGRATION_TIMEOUT": GatewayResponse(504, "server_error", "timeout",
                                           "The request took too long; use the jobs API for long work."),
    "DEFAULT_4XX": GatewayResponse(None, "invalid_request_error", "bad_request", "Bad request."),
    "DEFAULT_5XX": GatewayResponse(None, "server_error", "internal_error",
                                   "The server had an error while processing your request."),
}
