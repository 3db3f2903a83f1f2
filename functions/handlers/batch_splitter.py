"""Lambda entry point for S3 ObjectCreated notifications (via the JobEvents queue): start batch jobs."""
from __future__ import annotations

from aws_lambda_powertools.utilities.typing import LambdaContext

from functions.core.batch.splitter import handle_notification
from functions.core.batch.sqs_batch import process_sqs_batch
from functions.core.observability import logger, metrics


@logger.inject_lambda_context(clear_state=True)
@metrics.log_metrics
def handler(event: dict, context: LambdaContext) -> dict:
    # ReportBatchItemFailures: only the failed notifications come back; the rest are deleted.
    return process_sqs_batch(event, context, handle_notification)
