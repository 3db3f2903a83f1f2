"""Batch: S3 ``jobs/input/*.jsonl`` events → SQS → splitter → SQS chunks → workers, each queue with a DLQ."""
from __future__ import annotations

from aws_cdk import Duration, Stack
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_lambda_event_sources as sources
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_s3_notifications as s3n
from aws_cdk import aws_sqs as sqs
from constructs import Construct

from infra.constructs import acknowledge
from infra.resources import RESOURCES
from infra.settings import StageSettings
from functions.core.contract import JOBS_INPUT_PREFIX, JOBS_INPUT_SUFFIX, VISIBILITY_FACTOR



class Batch(Construct):
    """The queues of ``RESOURCES.queues`` (KMS, SSL-only, DLQ after ``max_receive_count``)."""

    def __init__(self, scope: Construct, id: str, *, stage: StageSettings, key: kms.IKey) -> None:
        super().__init__(scope, id)
        self.stage = stage
        self.queues: dict[str, sqs.Queue] = {}
        self.dlqs: dict[str, sqs.Queue] = {}
        for spec in RESOURCES.queues:
            if spec.consumer is None:
                raise ValueError(f"queue {spec.id} has no consumer in infra.resources")
            timeout = getattr(stage.functions, spec.consumer).timeout_s
            dlq_timeout = getattr(stage.functions, spec.dlq_consumer).timeout_s if spec.dlq_consumer else 30
            dlq = sqs.Queue(self, f"{spec.id}Dlq", encryption=sqs.QueueEncryption.KMS,
                            encryption_master_key=key, enforce_ssl=True,
                            visibility_timeout=Duration.seconds(VISIBILITY_FACTOR * dlq_timeout),
                            retention_period=Duration.days(14))
            self.queues[spec.id] = sqs.Queue(
                self, spec.id,
                encryption=sqs.QueueEncryption.KMS,
                encryption_master_key=key,
                data_key_reuse=Duration.hours(1),   # fewer KMS calls per message
                enforce_ssl=True,
                visibility_timeout=Duration.seconds(VISIBILITY_FACTOR * timeout),
                retention_period=Duration.days(4),
                dead_letter_queue=sqs.DeadLetterQueue(queue=dlq, max_receive_count=spec.max_receive_count),
            )
            self.dlqs[spec.id] = dlq
            acknowledge(dlq, id="Serverless-SQSRedrivePolicy",
                        reason="This is the dead-letter queue itself; its messages are terminal and alarmed on.")

    def connect(self, *, data_bucket: s3.Bucket, consumers: dict[str, lambda_.IFunction]) -> None:
        """Send new ``jobs/input/*.jsonl`` objects to JobEvents; feed each queue to its consumer."""
        events = self.queues["JobEvents"]
        # S3 must be allowed to send to the queue (queue policy, scoped to this bucket) and to use the
        # queue's key. CDK's SqsDestination would write the bucket ARN into the KEY policy, and the
        # bucket already references the key: a circular dependency CloudFormation cannot deploy. So
        # the destination gets a key-less reference, the queue policy is written here, and the key
        # admits S3 for this account (Encryption.allow_s3_notifications).
        events.add_to_resource_policy(iam.PolicyStatement(
            sid="AllowS3JobInputEvents",
            principals=[iam.ServicePrincipal("s3.amazonaws.com")],
            actions=["sqs:SendMessage", "sqs:GetQueueAttributes", "sqs:GetQueueUrl"],
            resources=[events.queue_arn],
            conditions={"ArnLike": {"aws:SourceArn": data_bucket.bucket_arn}}))
        keyless = sqs.Queue.from_queue_attributes(self, "JobEventsTarget", queue_arn=events.queue_arn,
                                                  queue_url=events.queue_url)
        data_bucket.add_event_notification(
            s3.EventType.OBJECT_CREATED, s3n.SqsDestination(keyless),
            s3.NotificationKeyFilter(prefix=JOBS_INPUT_PREFIX, suffix=JOBS_INPUT_SUFFIX))
        # S3 checks the destination's permissions when the notification is set: policy first.
        data_bucket.node.find_child("Notifications").node.add_dependency(events.node.find_child("Policy"))
        stack = Stack.of(self)
        for child in stack.node.children:
            if child.node.id.startswith("BucketNotificationsHandler"):
                acknowledge(child, id="AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/AWSLambdaBasicExecutionRole]",
                            reason="CDK's deploy-time handler that sets the bucket notification; runs only during deployment.")
        wiring = [(spec.consumer, self.queues[spec.id]) for spec in RESOURCES.queues]
        wiring += [(spec.dlq_consumer, self.dlqs[spec.id]) for spec in RESOURCES.queues if spec.dlq_consumer]
        for consumer, queue in wiring:
            fn = consumers[consumer]
            fn.add_event_source(sources.SqsEventSource(
                queue,
                batch_size=self.stage.functions.sqs_batch_size_for(consumer),
                # Within the function's reserved concurrency: throttled deliveries would count
                # towards maxReceiveCount and dead-letter messages that were never run.
                max_concurrency=self.stage.functions.sqs_max_concurrency_for(consumer),
                # Only failed messages return to the queue; the rest of the batch is not redone.
                report_batch_item_failures=True,
            ))
        for consumer in {c for c, _ in wiring}:
            for child in consumers[consumer].node.children:
                if child.node.id.startswith("SqsEventSource:"):
                    acknowledge(child, id="Serverless-LambdaEventSourceMappingDestination",
                                reason="SQS event sources take no on-failure destination; failed messages "
                                       "return to the queue and end in its DLQ.")
