"""The local AWS side: stores provisioned on a moto server from infra.resources, and the SQS pollers."""
from __future__ import annotations

import json
import time
from urllib.parse import unquote_plus

import pytest
from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response

from infra.resources import RESOURCES
from local.aws import MotoServer, client, provision
from local.config import LocalConfig
from local.lambdas import LambdaFunction
from local.pollers import QueuePoller, failed_ids
from functions.core.contract import JOBS_INPUT_PREFIX


@pytest.fixture(scope="module")
def moto_url():
    server = MotoServer()
    yield server.start()
    server.stop()


@pytest.fixture(scope="module")
def stack(moto_url):
    return provision(moto_url, LocalConfig(stage="unit", visibility_timeout_s=1))


def test_every_resource_in_infra_resources_exists_encrypted_with_the_stack_key(moto_url, stack):
    s3, ddb, sqs = client("s3", moto_url), client("dynamodb", moto_url), client("sqs", moto_url)
    assert set(stack.buckets) == {b.id for b in RESOURCES.buckets}
    for name in stack.buckets.values():
        rule = s3.get_bucket_encryption(Bucket=name)["ServerSideEncryptionConfiguration"]["Rules"][0]
        assert rule["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] == "aws:kms"
        assert rule["ApplyServerSideEncryptionByDefault"]["KMSMasterKeyID"] == stack.kms_key_arn
        assert s3.get_bucket_versioning(Bucket=name)["Status"] == "Enabled"
    assert set(stack.tables) == {t.id for t in RESOURCES.tables}
    for spec in RESOURCES.tables:
        desc = ddb.describe_table(TableName=stack.tables[spec.id])["Table"]
        assert desc["SSEDescription"]["SSEType"] == "KMS"
        assert {k["AttributeName"] for k in desc["KeySchema"]} == {spec.partition.name} | (
            {spec.sort.name} if spec.sort else set())
        assert {i["IndexName"] for i in desc.get("GlobalSecondaryIndexes", [])} == {i.name for i in spec.indexes}
        ttl = ddb.describe_time_to_live(TableName=stack.tables[spec.id])["TimeToLiveDescription"]
        assert ttl.get("AttributeName") == spec.ttl_attribute
    assert set(stack.queues) == {q.id for q in RESOURCES.queues}
    for spec in RESOURCES.queues:
        q = stack.queues[spec.id]
        attrs = sqs.get_queue_attributes(QueueUrl=q.url, AttributeNames=["All"])["Attributes"]
        assert attrs["KmsMasterKeyId"] == stack.kms_key_arn
        redrive = json.loads(attrs["RedrivePolicy"])
        assert redrive["deadLetterTargetArn"] == q.dlq_arn
        assert int(redrive["maxReceiveCount"]) == spec.max_receive_count


def test_settings_fields_name_every_store_the_code_reads(stack):
    wanted = {b.env for b in RESOURCES.buckets} | {t.env for t in RESOURCES.tables} | {
        q.env for q in RESOURCES.queues if q.env}
    assert set(stack.settings_fields) == wanted


def test_provision_is_idempotent(moto_url, stack):
    again = provision(moto_url, LocalConfig(stage="unit", visibility_timeout_s=1))
    assert again.kms_key_id == stack.kms_key_id
    assert again.queues["Work"].url == stack.queues["Work"].url


def test_jsonl_under_jobs_input_is_delivered_to_the_job_events_queue(moto_url, stack):
    s3, sqs = client("s3", moto_url), client("sqs", moto_url)
    q = stack.queues["JobEvents"].url
    sqs.purge_queue(QueueUrl=q)
    data = stack.buckets["Data"]
    s3.put_object(Bucket=data, Key=JOBS_INPUT_PREFIX + "a.jsonl", Body=b'{"input": "x"}\n')
    s3.put_object(Bucket=data, Key=JOBS_INPUT_PREFIX + "notes.txt", Body=b"x")
    s3.put_object(Bucket=data, Key="elsewhere/b.jsonl", Body=b"{}\n")
    got = []
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not got:
        for m in sqs.receive_message(QueueUrl=q, MaxNumberOfMessages=10, WaitTimeSeconds=1).get("Messages", []):
            body = json.loads(m["Body"])
            # Keys arrive URL-encoded, as S3 sends them (moto also encodes "/").
            got += [unquote_plus(r["s3"]["object"]["key"]) for r in body.get("Records", [])]
    assert got == [JOBS_INPUT_PREFIX + "a.jsonl"]


def _queue(sqs, name, max_receive=2):
    dlq = sqs.create_queue(QueueName=name + "-dlq")["QueueUrl"]
    dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    url = sqs.create_queue(QueueName=name, Attributes={
        "VisibilityTimeout": "1",
        "RedrivePolicy": json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": str(max_receive)})})["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    return url, arn, dlq


def _count(sqs, url):
    attrs = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=[
        "ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"])["Attributes"]
    return int(attrs["ApproximateNumberOfMessages"]) + int(attrs["ApproximateNumberOfMessagesNotVisible"])


def test_poller_deletes_successes_and_redrives_reported_failures_to_the_dlq(moto_url):
    """A Powertools BatchProcessor handler (what the batch handlers are) fed by the poller."""
    sqs = client("sqs", moto_url)
    url, arn, dlq = _queue(sqs, "poller-partial")
    for body in ("ok-1", "poison", "ok-2"):
        sqs.send_message(QueueUrl=url, MessageBody=body, MessageAttributes={
            "kind": {"DataType": "String", "StringValue": "test"}})
    seen = []
    processor = BatchProcessor(event_type=EventType.SQS)

    def record_handler(record):
        seen.append((record.body, record.attributes.approximate_receive_count,
                     record.message_attributes["kind"].string_value))
        if record.body == "poison":
            raise ValueError("cannot process")

    def handler(event, context):
        return process_partial_response(event=event, record_handler=record_handler,
                                        processor=processor, context=context)

    poller = QueuePoller(sqs, queue_url=url, queue_arn=arn, function=LambdaFunction("worker", handler),
                         batch_size=10, wait_s=1)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and _count(sqs, dlq) == 0:
        poller.poll_once()
    assert sorted(b for b, _, _ in seen if b != "poison") == ["ok-1", "ok-2"]  # each exactly once
    assert [c for b, c, _ in seen if b == "poison"] == ["1", "2"]  # maxReceiveCount receives
    assert {k for _, _, k in seen} == {"test"}
    assert _count(sqs, url) == 0 and _count(sqs, dlq) == 1
    assert poller.deleted == 2


def test_poller_keeps_the_whole_batch_when_the_function_raises(moto_url):
    sqs = client("sqs", moto_url)
    url, arn, dlq = _queue(sqs, "poller-crash", max_receive=5)
    sqs.send_message(QueueUrl=url, MessageBody="a")
    calls = []

    def crash(event, context):
        calls.append(len(event["Records"]))
        raise RuntimeError("worker died")

    poller = QueuePoller(sqs, queue_url=url, queue_arn=arn, function=LambdaFunction("w", crash), wait_s=1)
    assert poller.poll_once() == 1
    assert calls == [1] and poller.deleted == 0 and _count(sqs, url) == 1


def test_poller_thread_processes_messages_and_stops_promptly(moto_url):
    sqs = client("sqs", moto_url)
    url, arn, _ = _queue(sqs, "poller-thread")
    got = []
    poller = QueuePoller(sqs, queue_url=url, queue_arn=arn,
                         function=LambdaFunction("f", lambda e, c: got.extend(r["body"] for r in e["Records"])),
                         wait_s=1)
    poller.start()
    try:
        sqs.send_message(QueueUrl=url, MessageBody="hello")
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not got:
            time.sleep(0.05)
    finally:
        t = time.monotonic()
        poller.stop()
        assert time.monotonic() - t < 3 and not poller.running
    assert got == ["hello"] and _count(sqs, url) == 0


@pytest.mark.parametrize("result, expected", [
    (None, set()), ({"batchItemFailures": []}, set()),
    ({"batchItemFailures": [{"itemIdentifier": "b"}]}, {"b"}),
    ({"batchItemFailures": [{"itemIdentifier": "zzz"}]}, {"a", "b"}),  # unknown id: whole batch
    ({"batchItemFailures": [{"itemIdentifier": ""}]}, {"a", "b"}),
    ("garbage", {"a", "b"}),
])
def test_report_batch_item_failures_semantics(result, expected):
    assert failed_ids(result, [{"messageId": "a"}, {"messageId": "b"}]) == expected
