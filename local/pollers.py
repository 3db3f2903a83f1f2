"""SQS event sources: long-poll a local queue and call a Lambda handler with real SQS event batches.

The same contract as Lambda's SQS event source mapping with ReportBatchItemFailures: a batch of up
to N messages becomes one ``{"Records": [...]}`` event; the messages the handler does not list in
``batchItemFailures`` are deleted; the listed ones (or the whole batch when the handler raises or
returns something else) are left alone, so they come back after the queue's visibility timeout and
reach the DLQ after ``maxReceiveCount`` receives (the queue's redrive policy does that, not us).
"""
from __future__ import annotations

import hashlib
import logging
import threading
import time
from typing import Any, Callable

from local.config import REGION
from local.lambdas import LambdaFunction

log = logging.getLogger("local.poller")


def sqs_record(msg: dict[str, Any], queue_arn: str) -> dict[str, Any]:
    """One SQS message as a record of the Lambda SQS event (attribute names as Lambda spells them)."""
    attrs = msg.get("Attributes", {})
    msg_attrs = {}
    for name, a in (msg.get("MessageAttributes") or {}).items():
        msg_attrs[name] = {
            "stringValue": a.get("StringValue"), "binaryValue": a.get("BinaryValue"),
            "stringListValues": a.get("StringListValues", []),
            "binaryListValues": a.get("BinaryListValues", []), "dataType": a.get("DataType"),
        }
    return {
        "messageId": msg["MessageId"],
        "receiptHandle": msg["ReceiptHandle"],
        "body": msg["Body"],
        "attributes": {k: attrs[k] for k in (
            "ApproximateReceiveCount", "SentTimestamp", "SenderId",
            "ApproximateFirstReceiveTimestamp") if k in attrs},
        "messageAttributes": msg_attrs,
        "md5OfBody": msg.get("MD5OfBody") or hashlib.md5(msg["Body"].encode()).hexdigest(),
        "eventSource": "aws:sqs",
        "eventSourceARN": queue_arn,
        "awsRegion": REGION,
    }


def failed_ids(result: Any, records: list[dict]) -> set[str]:
    """The messageIds to keep on the queue, from the handler's ReportBatchItemFailures response.

    A malformed response counts as a failure of the whole batch, as Lambda treats it.
    """
    all_ids = {r["messageId"] for r in records}
    if result is None:
        return set()
    if not isinstance(result, dict):
        return all_ids
    items = result.get("batchItemFailures", [])
    if not isinstance(items, list):
        return all_ids
    out = set()
    for item in items:
        ident = item.get("itemIdentifier") if isinstance(item, dict) else None
        if not ident or ident not in all_ids:
            return all_ids  # an unknown or empty id fails the whole batch in Lambda too
        out.add(ident)
    return out


class QueuePoller:
    """One thread per event source mapping: receive, invoke, delete the successes."""

    def __init__(self, sqs, *, queue_url: str, queue_arn: str, function: LambdaFunction,
                 batch_size: int = 10, wait_s: int = 1) -> None:
        self._sqs = sqs
        self.queue_url = queue_url
        self.queue_arn = queue_arn
        self.function = function
        self.batch_size = batch_size
        self.wait_s = wait_s
        self.name = f"{function.name} <- {queue_url.rsplit('/', 1)[-1]}"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.batches = 0
        self.deleted = 0
        self.failed = 0

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"poller-{self.name}", daemon=True)
        self._thread.start()

    def signal_stop(self) -> None:
        """Ask the thread to stop after its current receive/invoke (``stop`` also waits for it)."""
        self._stop.set()

    def stop(self, timeout: float = 30) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=timeout)
            self._thread = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.poll_once()
            except Exception as exc:  # noqa: BLE001 - keep polling; the next receive may work
                log.error("poller %s: %s: %s", self.function.name, type(exc).__name__, exc)
                self._stop.wait(1.0)

    def poll_once(self) -> int:
        """Receive one batch and process it. Returns how many messages were received."""
        resp = self._sqs.receive_message(
            QueueUrl=self.queue_url, MaxNumberOfMessages=self.batch_size, WaitTimeSeconds=self.wait_s,
            AttributeNames=["All"], MessageAttributeNames=["All"])
        messages = resp.get("Messages", [])
        if not messages:
            return 0
        start = time.perf_counter()
        failed = deliver(self._sqs, self.queue_url, self.queue_arn, messages, self.function.invoke,
                         name=self.function.name)
        self.batches += 1
        self.deleted += len(messages) - len(failed)
        self.failed += len(failed)
        log.info("BATCH function=%s received=%d deleted=%d failed=%d ms=%.1f", self.function.name,
                 len(messages), len(messages) - len(failed), len(failed), (time.perf_counter() - start) * 1000)
        return len(messages)


def deliver(sqs, queue_url: str, queue_arn: str, messages: list[dict[str, Any]],
            invoke: Callable[[dict], Any], *, name: str = "function") -> set[str]:
    """What Lambda's SQS event source does with one received batch: invoke the function with the
    event, delete the messages it did not report as failed. Returns the failed message ids (left on
    the queue: they come back after the visibility timeout, towards the DLQ)."""
    records = [sqs_record(m, queue_arn) for m in messages]
    try:
        failed = failed_ids(invoke({"Records": records}), records)
    except Exception as exc:  # noqa: BLE001 - a function error leaves the whole batch on the queue
        log.error("function %s failed on a batch of %d: %s", name, len(records), type(exc).__name__)
        failed = {r["messageId"] for r in records}
    done = [r for r in records if r["messageId"] not in failed]
    for i in range(0, len(done), 10):
        entries = [{"Id": str(j), "ReceiptHandle": r["receiptHandle"]} for j, r in enumerate(done[i:i + 10])]
        out = sqs.delete_message_batch(QueueUrl=queue_url, Entries=entries)
        if out.get("Failed"):
            log.error("poller %s: %d deletes failed", name, len(out["Failed"]))
    return failed
