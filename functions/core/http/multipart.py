"""multipart/form-data request bodies (``POST /v1/files``), parsed with the standard library."""
from __future__ import annotations

import base64
from dataclasses import dataclass
from email.parser import BytesParser
from email.policy import HTTP
from typing import Any

from functions.core.errors import BadRequest, PayloadTooLarge


@dataclass(frozen=True)
class Part:
    name: str
    data: bytes
    filename: str | None = None


def raw_body(resolver: Any, *, limit: int) -> bytes:
    """The request body as bytes (API Gateway sends binary bodies base64-encoded), at most ``limit``."""
    event = resolver.current_event
    raw = event.body or ""
    body = base64.b64decode(raw) if event.is_base64_encoded else raw.encode("utf-8", "surrogateescape")
    if len(body) > limit:
        raise PayloadTooLarge(f"request body is {len(body)} bytes, the limit for a direct upload is {limit}; "
                              f"larger files: POST /v1/files with a JSON body for a presigned upload URL",
                              code="body_too_large")
    return body


def parse_form(content_type: str, body: bytes) -> dict[str, Part]:
    """The form's parts by field name (the last one wins); 400 for a body that is not multipart."""
    if not content_type.lower().startswith("multipart/form-data") or "boundary=" not in content_type:
        raise BadRequest("expected a multipart/form-data body with a boundary", code="invalid_multipart")
    message = BytesParser(policy=HTTP).parsebytes(
        b"Content-Type: " + content_type.encode("latin-1") + b"\r\nMIME-Version: 1.0\r\n\r\n" + body)
    if not message.is_multipart():
        raise BadRequest("the multipart body could not be read", code="invalid_multipart")
    parts: dict[str, Part] = {}
    for item in message.iter_parts():
        name = item.get_param("name", header="content-disposition")
        if not name:
            continue
        data = item.get_payload(decode=True) or b""
        parts[str(name)] = Part(str(name), data, item.get_filename())
    return parts
