"""Domain errors and the one place that maps them to HTTP status + OpenAI-style bodies."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pydantic import ValidationError


class CirrusError(Exception):
    """Base class: every error a client can see. Subclasses fix status, type and code."""

    status: int = 500
    type: str = "server_error"
    code: str | None = "internal_error"

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None,
                 retry_after: float | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        # Seconds a client should wait before retrying (throttles, a scaling endpoint): what happened,
        # not a header; ``to_response`` turns it into Retry-After. ``headers``: an HTTP layer's own.
        self.retry_after = retry_after
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type,
                          "param": self.param, "code": self.code}}


class InvalidJSON(CirrusError):
    status, type, code = 400, "invalid_request_error", "invalid_json"


class BadRequest(CirrusError):
    status, type, code = 400, "invalid_request_error", "bad_request"


class ContextLengthExceeded(BadRequest):
    """More tokens than the model's window (embeddings with overflow=reject, generation prompts).
    400 as in the OpenAI API, whose clients raise BadRequestError for it; 413 is kept for request size."""
    code = "context_length_exceeded"


class Unauthorized(CirrusError):
    status, type, code = 401, "authentication_error", "invalid_api_key"


class NotFound(CirrusError):
    status, type, code = 404, "invalid_request_error", "not_found"


class ModelNotFound(NotFound):
    code = "model_not_found"


class Conflict(CirrusError):
    """The request is valid but the resource's state does not allow it (e.g. cancelling a finished batch)."""

    status, type, code = 409, "invalid_request_error", "conflict"


class PayloadTooLarge(CirrusError):
    status, type, code = 413, "invalid_request_error", "payload_too_large"


class ValidationFailed(CirrusError):
    status, type, code = 422, "invalid_request_error", "invalid_value"


class Throttled(CirrusError):
    status, type, code = 429, "rate_limit_error", "rate_limited"


class UpstreamTimeout(CirrusError):
    """A backend (e.g. the heavy SageMaker endpoint) did not answer in time."""

    status, type, code = 504, "server_error", "upstream_timeout"


class ModelUnavailable(CirrusError):
    """The model exists but cannot be loaded or served right now (bad bundle, endpoint down)."""

    status, type, code = 503, "server_error", "model_unavailable"


class BundleError(ModelUnavailable):
    """A bundle failed verification (sha256, size, manifest)."""

    code = "bundle_invalid"


def to_response(err: BaseException) -> tuple[int, dict[str, Any], dict[str, str]]:
    """Map any exception to (status, body, headers). Unknown exceptions become a bare 500."""
    if isinstance(err, CirrusError):
        headers = dict(err.headers)
        if err.retry_after is not None:
            headers["Retry-After"] = str(max(1, int(err.retry_after)))
        return err.status, err.body(), headers
    generic = CirrusError("The server had an error while processing your request.")
    return 500, generic.body(), {}


def validation_error(exc: ValidationError) -> ValidationFailed:
    """A pydantic failure as the 422 clients see: the first error, its field as ``param``, no input quoted."""
    first = exc.errors(include_url=False, include_input=False)[0]
    loc = [str(p) for p in first["loc"]]
    # Union members add their type name to loc (e.g. input.str / input.list[...]); drop them.
    loc = [p for p in loc if not (p.startswith(("str", "list[", "int", "function-", "literal[")) and p != loc[0])]
    param = ".".join(loc) or None
    msg = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        msg = "unknown field"
    return ValidationFailed(f"{param}: {msg}" if param else msg, param=param)
