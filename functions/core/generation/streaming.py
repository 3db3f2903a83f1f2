"""Streamed generation (``stream: true``): route, start the model or endpoint, then OpenAI SSE events.

Everything that can fail because of the request or a down endpoint fails in ``stream()``, before
it returns, so the HTTP layer still answers with the normal JSON error and status: validation,
routing, model load, prompt length, and on the heavy route every attempt up to the endpoint's first
chunk (retries and breaker included). After that, a failure ends the stream with an error event.
Closing the returned events (a client that went away) closes the token loop or the endpoint's
connection, so no more tokens are computed. Logs: route, counts, timings; never text.
"""
from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

from functions.core.errors import CirrusError, to_response
from functions.core.generation import sse
from functions.core.generation.heavy import HeavyClient
from functions.core.generation.router import Decision, decide
from functions.core.generation.schemas import ChatCompletionRequest, CompletionRequest
from functions.core.generation.service import check_prompt
from functions.core.generation.sse import ChunkFormatter, Piece
from functions.core.inference.encoder import require_task
from functions.core.inference.generator import Delta
from functions.core.inference.model_store import get_model
from functions.core.observability import logger, metrics
from functions.core.settings import Settings

Request = ChatCompletionRequest | CompletionRequest


@dataclass
class StreamedResult:
    """A started answer: the SSE byte events still to come, where it runs and which bundle answers."""

    events: Iterator[bytes]
    decision: Decision
    model_version: str | None = None  # the light bundle's version; None on the heavy route


def stream(req: Request, settings: Settings, *, want_async: bool = False) -> StreamedResult:
    chat = isinstance(req, ChatCompletionRequest)
    check_prompt(req, settings)
    budget = req.budget(settings.generation_default_max_tokens)
    decision = decide(req.model, budget, settings, want_async=want_async, stream=True)
    logger.info("generation routed", extra={"model": req.model, "route": decision.route, "stream": True,
                                            "reason": decision.reason, "max_tokens": budget})
    started = time.perf_counter()
    version = None
    if decision.route == "light":
        model = get_model(req.model)
        require_task(model.manifest, "text-generation")
        params = req.sampling(settings.generation_default_max_tokens)
        ids = model.encode_chat(req.turns()) if chat else model.encode(req.text())  # type: ignore[union-attr]
        # The prompt's checks (empty, over the context window) and its forward pass happen here, so
        # their errors are still plain JSON; the loop then yields token by token.
        state = model.prefill(ids)  # type: ignore[union-attr]
        pieces = _light_pieces(model.stream(ids, params, state=state), len(ids))  # type: ignore[union-attr]
        fingerprint = f"cirrus-{model.version}"
        version = model.version
    else:  # the router never picks async for a stream
        chunks = HeavyClient(settings).invoke_stream(req.heavy_payload(settings.generation_default_max_tokens))
        pieces = _heavy_pieces(chunks, chat=chat)
        fingerprint = None
    fmt = ChunkFormatter(req.model, chat=chat, include_usage=req.include_usage, fingerprint=fingerprint)
    return StreamedResult(_events(fmt, pieces, model=req.model, route=decision.route, started=started), decision,
                          version)


def _light_pieces(deltas: Iterator[Delta], prompt_tokens: int) -> Iterator[Piece]:
    """The generator's deltas (its finish reason is the iterator's return value) as pieces, then usage."""
    tokens = 0
    try:
        while True:
            try:
                delta = next(deltas)
            except StopIteration as done:
                finish = done.value or "stop"
                break
            tokens += delta.token_id >= 0  # the held-back tail at the end carries no new token
            if delta.text:
                yield Piece(delta.text)
        yield Piece(finish_reason=finish, usage={"prompt_tokens": prompt_tokens, "completion_tokens": tokens,
                                                 "total_tokens": prompt_tokens + tokens})
    finally:
        deltas.close()  # type: ignore[attr-defined]


def _heavy_pieces(chunks: Iterator[dict], *, chat: bool) -> Iterator[Piece]:
    """TGI's chunks (OpenAI-shaped, role in every delta) reduced to text, finish reason and usage."""
    try:
        for chunk in chunks:
            choices = chunk.get("choices") or [{}]
            choice = choices[0] if isinstance(choices[0], dict) else {}
            text = ((choice.get("delta") or {}).get("content") if chat else choice.get("text")) or ""
            usage = chunk.get("usage") if isinstance(chunk.get("usage"), dict) else None
            yield Piece(str(text), choice.get("finish_reason"), usage)
    finally:
        close = getattr(chunks, "close", None)
        if close:
            close()


def _events(fmt: ChunkFormatter, pieces: Iterator[Piece], *, model: str, route: str,
            started: float) -> Iterator[bytes]:
    finish, usage, sent, first_at = None, None, 0, None
    outcome = "cancelled"  # unless the loop below ends by itself: the reader went away
    try:
        yield fmt.start()
        for piece in pieces:
            if piece.text:
                if first_at is None:
                    first_at = time.perf_counter()
                sent += 1
                yield fmt.text(piece.text)
            finish = piece.finish_reason or finish
            usage = piece.usage or usage
        outcome = "done"
    except CirrusError as err:
        outcome = "failed"
        logger.warning("stream failed", extra={"model": model, "route": route, "code": err.code, "status": err.status})
        yield sse.error_event(err.body())
    except Exception as exc:  # noqa: BLE001 - a bug after the first byte still ends the stream visibly
        outcome = "failed"
        logger.exception("stream failed", extra={"model": model, "route": route})
        yield sse.error_event(to_response(exc)[1])
    finally:
        pieces.close()  # type: ignore[attr-defined]
        seconds = time.perf_counter() - started
        metrics.add_dimension(name="route", value=route)
        metrics.add_metric(name="GenerationLatency", unit="Milliseconds", value=seconds * 1000)
        if first_at is not None:
            metrics.add_metric(name="TimeToFirstToken", unit="Milliseconds", value=(first_at - started) * 1000)
        metrics.add_metric(name="CompletionTokens", unit="Count", value=int((usage or {}).get("completion_tokens", 0)))
        logger.info("generation done", extra={"model": model, "route": route, "stream": True, "outcome": outcome,
                                              "chunks": sent, "completion_tokens": (usage or {}).get("completion_tokens"),
                                              "ms": round(seconds * 1000, 1)})
    if outcome == "done":
        yield fmt.finish(finish or "stop", usage)
