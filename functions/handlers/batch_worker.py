"""Lambda entry point for chunk messages from the Work queue: run inference on batch-job chunks."""
from __future__ import annotations

from aws_lambda_powertools.utilities.typing import LambdaContext

from functions.core.batch.sqs_batch import process_sqs_batch
from functions.core.batch.worker import process_message
from functions.core.observability import logger, metrics


@logger.inject_lambda_context(clear_state=True)
@metrics.log_metrics
def handler(event: dict, context: LambdaContext) -> dict:
    # ReportBatchItemFailures: a failed chunk is retried alone, its batch-mates are deleted.
    return process_sqs_batch(event, context, process_message)
