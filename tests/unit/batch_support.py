"""Shared helpers for the batch-job tests: a queue drainer over the stores on moto ``mock_aws``.

The stores come from the same description the stack deploys (local.aws.provision over
infra.resources), S3 delivers ObjectCreated notifications to the JobEvents queue itself (moto does
that), and ``Pipeline.drain`` plays Lambda's SQS event source with the local system's own
``local.pollers.deliver``: receive, invoke the real handler with the real event shape, delete what
the handler did not report as failed.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Callable

import boto3

from functions.core.batch import job_store as jobs
from functions.core.batch.job import job_id_for
from functions.core.contract import JOBS_INPUT_PREFIX
from functions.handlers import batch_dlq, batch_splitter, batch_worker
from light_support import REGION, lambda_context
from local.aws import QueueInfo
from local.pollers import deliver

EMBEDDER = "all-minilm-l6-v2"
CLASSIFIER = "cirrus-intent-minilm"


@dataclass
class Pipeline:
    bucket: str
    table: str
    events: QueueInfo
    work: QueueInfo

    def __post_init__(self) -> None:
        self.s3 = boto3.client("s3", region_name=REGION)
        self.sqs = boto3.client("sqs", region_name=REGION)
        self.ddb = boto3.client("dynamodb", region_name=REGION)
        self.etags: dict[str, str] = {}  # key -> ETag of its last upload (a rejected input is deleted)
        self.purge_test_events()

    def purge_test_events(self) -> None:
        # S3 sends an s3:TestEvent when the notification is configured; the splitter ignores it.
        self.sqs.purge_queue(QueueUrl=self.events.url)

    # --- inputs ---------------------------------------------------------------------------------
    def upload(self, name: str, data: bytes | list[Any]) -> str:
        if isinstance(data, list):
            data = "".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in data).encode()
        key = f"{JOBS_INPUT_PREFIX}{name}"
        self.etags[key] = self.s3.put_object(Bucket=self.bucket, Key=key, Body=data)["ETag"]
        return key

    def versions(self, key: str) -> list[dict[str, Any]]:
        """Every stored version and delete marker of ``key``."""
        page = self.s3.list_object_versions(Bucket=self.bucket, Prefix=key)
        return [v for v in page.get("Versions", []) + page.get("DeleteMarkers", []) if v["Key"] == key]

    def job_for(self, key: str) -> dict[str, Any]:
        etag = self.etags.get(key) or self.s3.head_object(Bucket=self.bucket, Key=key)["ETag"]
        job = jobs.job_store().get(job_id_for(self.bucket, key, etag))
        assert job is not None, f"no job for {key}"
        return job.model_dump(mode="json", exclude_none=True)  # the record as stored: unset fields absent

    def output(self, job: dict[str, Any], kind: str) -> list[dict[str, Any]]:
        body = self.s3.get_object(Bucket=self.bucket, Key=job[f"{kind}_key"])["Body"].read().decode()
        return [json.loads(line) for line in body.splitlines()]

    # --- queues ---------------------------------------------------------------------------------
    def receive(self, queue_url: str, n: int = 10) -> list[dict[str, Any]]:
        return self.sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=n,
                                        AttributeNames=["All"]).get("Messages", [])

    def deliver(self, queue: QueueInfo, handler: Callable, messages: list[dict[str, Any]], *,
                dlq: bool = False) -> set[str]:
        """Invoke ``handler`` with one SQS event; delete the successes as Lambda does. Failed ids back."""
        url, arn = (queue.dlq_url, queue.dlq_arn) if dlq else (queue.url, queue.arn)
        failed = deliver(self.sqs, url, arn, messages, lambda event: handler(event, lambda_context()))
        for m in messages:
            if m["MessageId"] in failed:
                # Stand-in for waiting out the visibility timeout: the failed message is due again now.
                self.sqs.change_message_visibility(QueueUrl=url, ReceiptHandle=m["ReceiptHandle"],
                                                   VisibilityTimeout=0)
        return failed

    def split(self) -> int:
        """One poll of the JobEvents queue only (chunk messages stay queued)."""
        return self.step(work=False)

    def step(self, batch: int = 10, *, work: bool = True) -> int:
        """One poll of each queue (splitter first). Returns how many messages were received."""
        seen = 0
        pairs = [(self.events, batch_splitter.handler)] + ([(self.work, batch_worker.handler)] if work else [])
        for queue, handler in pairs:
            messages = self.receive(queue.url, batch)
            if messages:
                seen += len(messages)
                self.deliver(queue, handler, messages)
        return seen

    def drain(self, max_rounds: int = 200, batch: int = 10) -> None:
        for _ in range(max_rounds):
            if not self.step(batch):
                return
        raise AssertionError("queues did not drain")

    def dead_letters(self, queue: QueueInfo) -> list[dict[str, Any]]:
        return self.receive(queue.dlq_url)

    def depth(self, url: str) -> int:
        attrs = self.sqs.get_queue_attributes(QueueUrl=url, AttributeNames=[
            "ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"])["Attributes"]
        return int(attrs["ApproximateNumberOfMessages"]) + int(attrs["ApproximateNumberOfMessagesNotVisible"])


def dlq_deliver(p: Pipeline, queue: QueueInfo) -> set[str]:
    return p.deliver(queue, batch_dlq.handler, p.dead_letters(queue), dlq=True)
