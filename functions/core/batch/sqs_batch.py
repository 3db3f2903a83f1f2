"""SQS event batches for the batch functions: each record's body to one core call, partial failures reported."""
from __future__ import annotations

from typing import Any, Protocol

from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord


class MessageHandler(Protocol):
    def __call__(self, body: str, *, message_id: str, receive_count: int) -> None: ...


def process_sqs_batch(event: dict, context: Any, handle: MessageHandler) -> dict:
    """Run ``handle`` on every record of an SQS event; returns ``batchItemFailures`` (ReportBatchItemFailures).

    A record whose ``handle`` raises comes back to the queue alone (its receive count, passed on,
    lets the core give up before the DLQ takes it); its batch-mates are deleted.
    """
    def record_handler(record: SQSRecord) -> None:
        handle(record.body, message_id=record.message_id,
               receive_count=int(record.attributes.approximate_receive_count))

    # A processor holds one batch's outcomes: one per call, never shared between batches.
    return process_partial_response(event=event, record_handler=record_handler,
                                    processor=BatchProcessor(event_type=EventType.SQS), context=context)
