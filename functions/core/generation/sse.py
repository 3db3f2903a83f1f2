"""Server-sent events both ways: OpenAI ``chat.completion.chunk`` / ``text_completion`` events out, TGI's in.

Out (what the ``openai`` client parses): one ``data: {json}`` event per chunk, the role in the first
delta of a chat stream, ``finish_reason`` in the last chunk with choices, an optional usage chunk
(``choices: []``, ``stream_options.include_usage``), then ``data: [DONE]``. A failure after the
first byte is a ``data: {"error": {...}}`` event (the client raises it) and no ``[DONE]``.

In: TGI answers ``stream: true`` with the same framing; SageMaker hands it over in payload parts
cut anywhere, so ``SseDecoder`` reassembles lines across parts.
"""
from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

CONTENT_TYPE = "text/event-stream"
DONE = b"data: [DONE]\n\n"
# Headers of every streamed answer: no caching, and no proxy buffering (nginx honours the last).
HEADERS = {"Content-Type": f"{CONTENT_TYPE}; charset=utf-8", "Cache-Control": "no-cache",
           "X-Accel-Buffering": "no"}


def event(obj: dict) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode() + b"\n\n"


@dataclass(frozen=True)
class Piece:
    """What a generator reports, whichever route ran it: text, and at the end why and how much."""

    text: str = ""
    finish_reason: str | None = None
    usage: dict | None = None


class ChunkFormatter:
    """The OpenAI chunks of one streamed answer (one id, one ``created`` for all of them)."""

    def __init__(self, model: str, *, chat: bool, include_usage: bool = False, fingerprint: str | None = None,
                 id: str | None = None) -> None:
        self.model = model
        self.chat = chat
        self.include_usage = include_usage
        self.fingerprint = fingerprint
        self.id = id or f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
        self.created = int(time.time())

    def _chunk(self, choices: list[dict]) -> dict:
        out = {"id": self.id, "object": "chat.completion.chunk" if self.chat else "text_completion",
               "created": self.created, "model": self.model, "system_fingerprint": self.fingerprint,
               "choices": choices}
        if self.include_usage:
            out["usage"] = None  # as OpenAI: present (null) on every chunk but the usage chunk
        return out

    def _choice(self, text: str | None, finish_reason: str | None, *, role: bool = False) -> dict:
        if self.chat:
            delta: dict = {"role": "assistant", "content": text or ""} if role else (
                {"content": text} if text is not None else {})
            return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        return {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish_reason}

    def start(self) -> bytes:
        """The first event: the assistant role (chat). Completions have no role; they start with text."""
        return event(self._chunk([self._choice("", None, role=True)])) if self.chat else b""

    def text(self, text: str) -> bytes:
        return event(self._chunk([self._choice(text, None)])) if text else b""

    def finish(self, finish_reason: str, usage: dict | None) -> bytes:
        out = event(self._chunk([self._choice(None, finish_reason)]))
        if self.include_usage:
            body = self._chunk([])
            body["usage"] = usage or {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
            out += event(body)
        return out + DONE


def error_event(body: dict) -> bytes:
    """``body`` is the OpenAI error body ``{"error": {...}}`` (functions.core.errors)."""
    return event(body)


class SseDecoder:
    """Bytes in any cuts → the ``data`` of each complete event (multi-line data joined by newlines)."""

    def __init__(self) -> None:
        self._buf = b""
        self._data: list[str] = []

    def feed(self, raw: bytes) -> Iterator[str]:
        self._buf += raw
        while True:
            nl = self._buf.find(b"\n")
            if nl < 0:
                return
            line, self._buf = self._buf[:nl].rstrip(b"\r"), self._buf[nl + 1:]
            if not line:
                if self._data:
                    yield "\n".join(self._data)
                    self._data = []
            elif line.startswith(b"data:"):
                self._data.append(line[5:].removeprefix(b" ").decode("utf-8"))
            # comments (":"), "event:", "id:", "retry:" carry nothing Cirrus uses

    def close(self) -> Iterator[str]:
        """An event left unterminated when the stream ended (a server that omits the last blank line)."""
        if self._buf.strip():
            yield from self.feed(b"\n\n")
        elif self._data:
            yield "\n".join(self._data)
            self._data = []
