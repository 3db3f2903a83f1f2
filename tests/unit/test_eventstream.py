"""local/eventstream.py framing read back by botocore's own event-stream parser; SSE reassembly across cuts."""
from __future__ import annotations

import json
import struct
import zlib

import botocore.session
import pytest
from botocore.eventstream import ChecksumMismatch, EventStream, EventStreamBuffer
from botocore.exceptions import EventStreamError
from botocore.parsers import EventStreamJSONParser

from functions.core.generation.sse import SseDecoder
from local import eventstream


def test_botocore_reads_the_prelude_headers_payload_and_checksums():
    msg = eventstream.payload_part(b'data: {"x": 1}\n\n')
    total, headers_len = struct.unpack(">II", msg[:8])
    assert total == len(msg) and struct.unpack(">I", msg[8:12])[0] == zlib.crc32(msg[:8])
    assert struct.unpack(">I", msg[-4:])[0] == zlib.crc32(msg[:-4])
    buf = EventStreamBuffer()
    buf.add_data(msg[:5])  # delivered in two pieces, as a socket may
    assert list(buf) == []
    buf.add_data(msg[5:])
    (parsed,) = list(buf)
    assert parsed.headers == {":event-type": "PayloadPart", ":message-type": "event",
                              ":content-type": "application/octet-stream"}
    assert parsed.payload == b'data: {"x": 1}\n\n'


def test_a_corrupted_message_fails_botocores_checksum():
    msg = bytearray(eventstream.payload_part(b"hello"))
    msg[-6] ^= 0xFF  # flip a payload byte
    buf = EventStreamBuffer()
    buf.add_data(bytes(msg))
    with pytest.raises(ChecksumMismatch):
        list(buf)


class _Raw:
    def __init__(self, data: bytes, size: int) -> None:
        self.data, self.size = data, size

    def stream(self):
        for i in range(0, len(self.data), self.size):
            yield self.data[i:i + self.size]


def _sagemaker_stream(data: bytes) -> EventStream:
    """botocore's EventStream for InvokeEndpointWithResponseStream over ``data`` cut in 7-byte reads."""
    op = botocore.session.get_session().get_service_model("sagemaker-runtime").operation_model(
        "InvokeEndpointWithResponseStream")
    assert op.metadata["protocol"] == "rest-json"  # whose event streams botocore parses with this parser
    return EventStream(_Raw(data, 7), op.output_shape.members["Body"], EventStreamJSONParser(), op.name)


def test_sagemaker_payload_parts_and_a_model_stream_error_parse_as_the_sdk_sees_them():
    data = (eventstream.payload_part(b"data: one\n\n") + eventstream.payload_part(b"data: two\n\n")
            + eventstream.exception("ModelStreamError", "CUDA error", "ModelStreamError"))
    events = iter(_sagemaker_stream(data))
    assert next(events) == {"PayloadPart": {"Bytes": b"data: one\n\n"}}
    assert next(events) == {"PayloadPart": {"Bytes": b"data: two\n\n"}}
    with pytest.raises(EventStreamError) as err:
        next(events)
    assert err.value.response["Error"] == {"Code": "ModelStreamError", "Message": "CUDA error"}


def test_sse_decoder_reassembles_events_cut_anywhere():
    body = b'data: {"a": 1}\n\n: comment\n\ndata: line1\ndata: line2\r\n\r\ndata: [DONE]\n\n'
    for size in (1, 3, 7, len(body)):
        dec = SseDecoder()
        out = [d for i in range(0, len(body), size) for d in dec.feed(body[i:i + size])] + list(dec.close())
        assert out == ['{"a": 1}', "line1\nline2", "[DONE]"], size
    dec = SseDecoder()
    assert list(dec.feed(b"data: tail")) == [] and list(dec.close()) == ["tail"]  # no final blank line
    assert json.loads('{"a": 1}') == {"a": 1}
