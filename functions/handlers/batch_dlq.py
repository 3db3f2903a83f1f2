"""Lambda entry point for the batch dead-letter queues (JobEvents and Work DLQs): mark the jobs."""
from __future__ import annotations

from aws_lambda_powertools.utilities.typing import LambdaContext

from functions.core.batch.dead_letters import handle_dead_letter
from functions.core.batch.sqs_batch import process_sqs_batch
from functions.core.observability import logger, metrics


@logger.inject_lambda_context(clear_state=True)
@metrics.log_metrics
def handler(event: dict, context: LambdaContext) -> dict:
    return process_sqs_batch(event, context, handle_dead_letter)
