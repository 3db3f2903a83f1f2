"""AWS event-stream framing (``application/vnd.amazon.eventstream``), the encoding side that botocore parses.

A message is: prelude (total length, headers length: big-endian uint32 each), the prelude's CRC32,
the headers (name length uint8, name, value type uint8 — 7 is a string —, value length uint16,
value), the payload, and the CRC32 of everything before it. SageMaker's
``InvokeEndpointWithResponseStream`` sends ``PayloadPart`` events (payload = the container's bytes)
and ``ModelStreamError`` / ``InternalStreamFailure`` exceptions this way.
"""
from __future__ import annotations

import json
import struct
import zlib

CONTENT_TYPE = "application/vnd.amazon.eventstream"
_STRING = 7


def _headers(headers: dict[str, str]) -> bytes:
    out = b""
    for name, value in headers.items():
        n, v = name.encode(), value.encode()
        out += struct.pack(">B", len(n)) + n + struct.pack(">BH", _STRING, len(v)) + v
    return out


def message(headers: dict[str, str], payload: bytes) -> bytes:
    head = _headers(headers)
    total = 12 + len(head) + len(payload) + 4
    prelude = struct.pack(">II", total, len(head))
    first = prelude + struct.pack(">I", zlib.crc32(prelude))
    body = first + head + payload
    return body + struct.pack(">I", zlib.crc32(body))


def payload_part(data: bytes) -> bytes:
    return message({":event-type": "PayloadPart", ":message-type": "event",
                    ":content-type": "application/octet-stream"}, data)


def exception(kind: str, message_text: str, error_code: str | None = None) -> bytes:
    """``kind``: ``ModelStreamError`` (the container broke the stream) or ``InternalStreamFailure``."""
    body = {"Message": message_text} | ({"ErrorCode": error_code} if error_code else {})
    return message({":exception-type": kind, ":message-type": "exception", ":content-type": "application/json"},
                   json.dumps(body).encode())
