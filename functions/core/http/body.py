"""Request bodies in: size limit, JSON decoding, validation against a model, and the caller's key id.

Every route (the app in app.py and the routers in routes/) parses its body here, so limits and
error bodies are the same everywhere.
"""
from __future__ import annotations

import json
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from functions.core.errors import InvalidJSON, PayloadTooLarge, ValidationFailed
from functions.core.settings import get_settings

M = TypeVar("M", bound=BaseModel)


def read_json(resolver: Any) -> Any:
    """The request body as JSON, after the body-size limit: 413 too large, 400 not JSON.

    ``resolver`` is the app or the router serving the request (its ``current_event``).
    """
    event = resolver.current_event
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


def parse(model: type[M], resolver: Any) -> M:
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
    loc = [p for p in loc if not (p.startswith(("str", "list[", "int", "function-", "literal[")) and p != loc[0])]
    param = ".".join(loc) or None
    msg = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        msg = "unknown field"
    return ValidationFailed(f"{param}: {msg}" if param else msg, param=param)


def caller_key_id(resolver: Any) -> str | None:
    """The API key id the TOKEN authorizer let in (its principalId), or None without an authorizer.

    None means a direct/admin invocation of the function (nothing in front of it): owner-scoped routes
    show such a caller everything.
    """
    authorizer = resolver.current_event.request_context.authorizer
    return (authorizer.principal_id or None) if authorizer else None

