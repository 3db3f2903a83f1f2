"""SQS access for the functions: batched sends that lose nothing (partial batch failures retried)."""
from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from functions.core.aws.base import client

MAX_BATCH = 10          # SendMessageBatch limit
_SEND_ATTEMPTS = 4      # per-entry retries on top of botocore's own (partial batch failures)


class SendFailed(RuntimeError):
    """Some messages could not be sent after retries (ids and codes in the message, no bodies)."""


def send_messages(queue_url: str, bodies: Sequence[str]) -> None:
    """Send every body, 10 per call; entries that fail inside a 200 answer are retried, then raise."""
    sqs = client("sqs")
    for start in range(0, len(bodies), MAX_BATCH):
        pending = {str(i): bodies[i] for i in range(start, min(start + MAX_BATCH, len(bodies)))}
        for attempt in range(_SEND_ATTEMPTS):
            resp = sqs.send_message_batch(QueueUrl=queue_url, Entries=[
                {"Id": i, "MessageBody": b} for i, b in pending.items()])
            failed = resp.get("Failed", [])
            # Sender faults (bad request) will not heal with a retry.
            if any(f.get("SenderFault") for f in failed):
                raise SendFailed(f"SQS refused messages: {_codes(failed)}")
            pending = {f["Id"]: pending[f["Id"]] for f in failed}
            if not pending:
                break
            time.sleep(min(0.05 * 2 ** attempt, 1.0))
        if pending:
            raise SendFailed(f"SQS did not accept {len(pending)} message(s): {_codes(failed)}")


def _codes(failed: list[dict[str, Any]]) -> str:
    return ", ".join(sorted({f.get("Code", "?") for f in failed}))

