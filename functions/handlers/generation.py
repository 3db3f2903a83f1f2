"""Lambda entry point for the generation routes (chat, completions): the API app's answer, streamed.

Run by functions/stream_runtime.py in AWS (API Gateway STREAM transfer mode) and by the local
gateway: both consume the iterator this returns, in the streaming integration format.
"""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from aws_lambda_powertools.logging import correlation_paths

from functions.core.http.app import app
from functions.core.http.stream import capture, integration_response
from functions.core.observability import logger, metrics, tracer


@logger.inject_lambda_context(correlation_id_path=correlation_paths.API_GATEWAY_REST, clear_state=True)
@tracer.capture_lambda_handler(capture_response=False)
@metrics.log_metrics(capture_cold_start_metric=True)
def _resolve(event: dict, context: Any) -> tuple[dict, Iterator[bytes] | None]:
    # Routing, validation and the start of generation: every error up to here is a plain JSON answer.
    with capture() as slot:
        proxy = app.resolve(event, context)
    return proxy, slot.body


def handler(event: dict, context: Any) -> Iterator[bytes]:
    proxy, body = _resolve(event, context)
    return _send(proxy, body)


def _send(proxy: dict, body: Iterator[bytes] | None) -> Iterator[bytes]:
    try:
        yield from integration_response(proxy, body)
    finally:
        # The stream's own metrics (latency, tokens) were recorded after _resolve flushed.
        if metrics.metric_set:
            metrics.flush_metrics()
