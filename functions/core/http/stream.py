"""Streamed HTTP answers: a route hands its event iterator over; the streaming handler sends it as it comes.

A route answering ``stream: true`` calls ``sse_response(result)``. Inside ``capture()`` (the
streaming handler, functions/handlers/generation.py) the iterator is kept aside and the Powertools
response carries only status and headers; anywhere else (a direct invocation of the buffered
handler) the same events are joined into one body, so the wire format is the same either way.

``integration_response`` writes what API Gateway's STREAM transfer mode expects from a Lambda
proxy integration (``application/vnd.awslambda.http-integration-response``): a JSON prelude with
``statusCode`` and headers, 8 NUL bytes, then the payload bytes as they are produced.
"""
from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

from aws_lambda_powertools.event_handler import Response

from functions.core.generation import sse
from functions.core.http.response import MODEL_VERSION_HEADER, ROUTE_HEADER

if TYPE_CHECKING:
    from functions.core.generation.streaming import StreamedResult

CONTENT_TYPE = "application/vnd.awslambda.http-integration-response"
SEPARATOR = b"\x00" * 8


class _Slot:
    body: Iterator[bytes] | None = None


_slot: ContextVar[_Slot | None] = ContextVar("cirrus_stream_slot", default=None)


@contextmanager
def capture() -> Iterator[_Slot]:
    """While open, ``sse_response`` leaves its events in the yielded slot instead of joining them."""
    slot = _Slot()
    token = _slot.set(slot)
    try:
        yield slot
    finally:
        _slot.reset(token)


def sse_response(result: StreamedResult) -> Response:
    slot = _slot.get()
    headers = {**sse.HEADERS, ROUTE_HEADER: result.decision.summary()}
    if result.model_version is not None:
        headers[MODEL_VERSION_HEADER] = result.model_version
    content_type = headers.pop("Content-Type")
    if slot is None:
        body = b"".join(result.events).decode("utf-8")
    else:
        slot.body, body = result.events, ""
    return Response(status_code=200, content_type=content_type, body=body, headers=headers)


def integration_response(proxy: dict[str, Any], body: Iterator[bytes] | None = None) -> Iterator[bytes]:
    """The streaming integration format for a Powertools proxy response (``body``: the streamed payload)."""
    headers = {k: str(v) for k, v in (proxy.get("headers") or {}).items()}
    multi: dict[str, list[str]] = {}
    cookies: list[str] = []
    for k, values in (proxy.get("multiValueHeaders") or {}).items():
        values = [str(x) for x in values]
        if k.lower() == "set-cookie":
            cookies += values
        elif len(values) == 1:
            headers[k] = values[0]  # Powertools puts every header here; one value reads best as a header
        else:
            multi[k] = values
    prelude = {"statusCode": int(proxy.get("statusCode") or 200), "headers": headers,
               "multiValueHeaders": multi, "cookies": cookies}
    yield json.dumps(prelude, separators=(",", ":")).encode() + SEPARATOR
    if body is not None:
        try:
            for chunk in body:
                if chunk:
                    yield chunk
        finally:
            close = getattr(body, "close", None)
            if close:
                close()
        return
    raw = proxy.get("body") or ""
    yield base64.b64decode(raw) if proxy.get("isBase64Encoded") else raw.encode("utf-8")


def read_prelude(chunks: Iterator[bytes]) -> tuple[dict[str, Any], bytes]:
    """The reader's side (API Gateway's; the local gateway uses it): prelude and the payload bytes after it.

    Raises ValueError when the separator never comes or the prelude is not a JSON object with an
    integer statusCode (API Gateway answers 502 then).
    """
    buf = b""
    for chunk in chunks:
        buf += chunk
        cut = buf.find(SEPARATOR)
        if cut >= 0:
            prelude = json.loads(buf[:cut])
            if not isinstance(prelude, dict) or not isinstance(prelude.get("statusCode"), int):
                raise ValueError("the prelude needs an integer statusCode")
            return prelude, buf[cut + len(SEPARATOR):]
        if len(buf) > 64 * 1024:
            break
    raise ValueError("no prelude separator in the function's response")
