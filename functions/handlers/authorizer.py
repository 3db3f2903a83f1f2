"""Lambda entry point for the API Gateway TOKEN authorizer (``Authorization: Bearer <key>``)."""
from __future__ import annotations

from aws_lambda_powertools.utilities.typing import LambdaContext

from functions.core.auth import authorize
from functions.core.observability import logger, tracer


@logger.inject_lambda_context(clear_state=True)  # never log_event: the event holds the key
@tracer.capture_lambda_handler(capture_response=False)
def handler(event: dict, context: LambdaContext) -> dict:
    return authorize(event)
