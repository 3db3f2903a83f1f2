"""Request bodies in: size limit, JSON decoding, validation against a model, and the caller's key id.

Every route (the app in app.py and the routers in routes/) parses its body here, so limits and
error bodies are the same everywhere.
"""
from __future__ import annotations

import json
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from functions.core.errors import InvalidJSON, PayloadTooLarge, ValidationFailed, validation_error
from functions.core.settings import get_settings

M = TypeVar("M", bound=BaseModel)

# Deeper than any request of the API (content parts, tool schemas nest < 20 levels). Past Python's
# recursion limit (~1,000 levels) json.loads raises RecursionError; past this one, pydantic and
# logging would walk a structure no caller needs: both are the caller's 400, never a 500.
MAX_JSON_DEPTH = 64


def decode_json(text: str) -> Any:
    """``json.loads`` bounded in nesting: InvalidJSON (400) for bad JSON or nesting past MAX_JSON_DEPTH."""
    try:
        value = json.loads(text)
    except RecursionError:
        raise InvalidJSON(f"request body nests deeper than {MAX_JSON_DEPTH} levels",
                          code="json_too_deep") from None
    except ValueError as exc:
        # json's message has line/column only (no body text), useful to a client fixing its request.
        raise InvalidJSON(f"request body is not valid JSON: {exc.__class__.__name__}: "
                          f"{getattr(exc, 'msg', 'undecodable bytes')}") from exc
    if json_depth(value) > MAX_JSON_DEPTH:
        raise InvalidJSON(f"request body nests deeper than {MAX_JSON_DEPTH} levels", code="json_too_deep")
    return value


def json_depth(value: Any) -> int:
    """Nesting depth of decoded JSON, walked iteratively (a recursive walk would fail where json did)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            node = list(node.values())
        if isinstance(node, list):
            deepest = max(deepest, depth)
            if depth > MAX_JSON_DEPTH:
                break
            stack.extend((child, depth + 1) for child in node)
    return deepest


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
    except (ValueError, UnicodeDecodeError) as exc:  # base64 that is not UTF-8 text (or not base64)
        raise InvalidJSON(f"request body is not valid JSON: {exc.__class__.__name__}: undecodable bytes") from exc
    if not text.strip():
        raise InvalidJSON("request body is empty; expected a JSON object")
    return decode_json(text)


def parse(model: type[M], resolver: Any) -> M:
    """Validate the JSON body against ``model``: 422 naming the first bad field (value never echoed)."""
    body = read_json(resolver)
    if not isinstance(body, dict):
        raise ValidationFailed("request body must be a JSON object")
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        raise validation_error(exc) from None


def caller_key_id(resolver: Any) -> str | None:
    """The API key id the TOKEN authorizer let in (its principalId), or None without an authorizer.

    None means a direct/admin invocation of the function (nothing in front of it): owner-scoped routes
    show such a caller everything.
    """
    authorizer = resolver.current_event.request_context.authorizer
    return (authorizer.principal_id or None) if authorizer else None

