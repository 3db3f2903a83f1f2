"""Encryption: the one customer-managed KMS key (rotation on) that every store, queue and log uses."""
from __future__ import annotations

from aws_cdk import Duration, RemovalPolicy, Stack
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from constructs import Construct


class Encryption(Construct):
    """A customer-managed key whose policy admits the account (for IAM grants) and CloudWatch Logs.

    S3, DynamoDB, SQS and SageMaker use the key on behalf of an IAM principal (``grant_*`` in the
    stack), so they need no statement of their own. Services that act as themselves get a
    key-policy statement from the stack, through ``allow_s3_notifications`` (S3 event notifications to
    the encrypted queue) and ``allow_alarm_notifications`` (CloudWatch alarms to the encrypted topic),
    each limited to this account by ``aws:SourceAccount`` / ``aws:SourceArn``; CloudWatch Logs to this
    stack's log groups by the ``kms:EncryptionContext:aws:logs:arn`` it sends.
    """

    def __init__(self, scope: Construct, id: str, *, stage_name: str, retain: bool) -> None:
        super().__init__(scope, id)
        stack = Stack.of(self)
        self.key = kms.Key(
            self, "Key",
            alias=f"alias/cirrus-{stage_name}",
            description=f"Cirrus {stage_name}: buckets, tables, queues, logs, topic, SageMaker volumes",
            enable_key_rotation=True,
            rotation_period=Duration.days(365),
            pending_window=Duration.days(30 if retain else 7),
            removal_policy=RemovalPolicy.RETAIN if retain else RemovalPolicy.DESTROY,
        )
        # CloudWatch Logs encrypts log groups as itself. The encryption context it sends names the log
        # group, so the key serves only this stack's groups (CloudFormation names them
        # <stack>-<logical id>-<suffix>; none of Cirrus's groups has a name of its own), not every
        # group of the account (the statement is the one AWS documents for this principal).
        self.log_groups_arn = (f"arn:{stack.partition}:logs:{stack.region}:{stack.account}:"
                               f"log-group:{stack.stack_name}-*")
        self.key.add_to_resource_policy(iam.PolicyStatement(
            sid="AllowCloudWatchLogsOfThisStack",
            principals=[iam.ServicePrincipal(f"logs.{stack.region}.amazonaws.com")],
            actions=["kms:Encrypt*", "kms:Decrypt*", "kms:ReEncrypt*", "kms:GenerateDataKey*", "kms:Describe*"],
            resources=["*"],
            conditions={"ArnLike": {"kms:EncryptionContext:aws:logs:arn": self.log_groups_arn}},
        ))

    def allow_s3_notifications(self) -> None:
        """S3 event notifications write to the encrypted job-events queue as the S3 service itself.

        Scoped to S3 buckets of this account; the queue policy narrows it to the data bucket.
        """
        stack = Stack.of(self)
        self.key.add_to_resource_policy(iam.PolicyStatement(
            sid="AllowS3EventNotificationsOfThisAccount",
            principals=[iam.ServicePrincipal("s3.amazonaws.com")],
            actions=["kms:Decrypt", "kms:GenerateDataKey*"],
            resources=["*"],
            conditions={"StringEquals": {"aws:SourceAccount": stack.account},
                        "ArnLike": {"aws:SourceArn": f"arn:{stack.partition}:s3:::*"}},
        ))

    def allow_alarm_notifications(self) -> None:
        """CloudWatch alarms publish to the encrypted alarm topic as the CloudWatch service itself: let it
        make data keys on behalf of this account's alarms in this region only (``aws:SourceAccount`` +
        ``aws:SourceArn``, the confused-deputy conditions SNS documents for encrypted topics)."""
        stack = Stack.of(self)
        self.key.add_to_resource_policy(iam.PolicyStatement(
            sid="AllowCloudWatchAlarmsOfThisAccount",
            principals=[iam.ServicePrincipal("cloudwatch.amazonaws.com")],
            actions=["kms:Decrypt", "kms:GenerateDataKey*"],
            resources=["*"],
            conditions={"StringEquals": {"aws:SourceAccount": stack.account},
                        "ArnLike": {"aws:SourceArn":
                                    f"arn:{stack.partition}:cloudwatch:{stack.region}:{stack.account}:alarm:*"}},
        ))
