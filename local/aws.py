"""A moto server on loopback and, on it, the stores the CDK stack creates (from infra.resources)."""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field


from functions.core.aws.base import make_client
from functions.core.contract import JOBS_INPUT_PREFIX, JOBS_INPUT_SUFFIX
from infra.resources import RESOURCES
from local.config import REGION, LocalConfig

log = logging.getLogger("local.aws")

# Fake credentials: moto accepts anything, and they guarantee no real account is ever reached.
FAKE_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": REGION,
    "AWS_REGION": REGION,
}

class MotoServer:
    """moto's ThreadedMotoServer on 127.0.0.1, quiet, with its URL once started."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        from moto.server import ThreadedMotoServer

        self._server = ThreadedMotoServer(ip_address=host, port=port, verbose=False)
        self.url: str | None = None

    def start(self) -> str:
        # werkzeug logs every request at INFO; keep the log file about Cirrus.
        logging.getLogger("werkzeug").setLevel(logging.WARNING)
        self._server.start()
        host, port = self._server.get_host_and_port()
        self.url = f"http://{host}:{port}"
        return self.url

    def stop(self) -> None:
        if self.url is not None:
            self._server.stop()
            self.url = None


def client(service: str, endpoint_url: str):
    """A client for the local endpoint with fake credentials, so no real account is ever reached.

    Same timeouts/retries as the functions' adapters; explicit credentials instead of the
    environment's because the caller (a test, the CLI) may hold real ones.
    """
    return make_client(service, endpoint_url=endpoint_url, region_name=REGION, credentials={
        "aws_access_key_id": FAKE_CREDENTIALS["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": FAKE_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        "aws_session_token": FAKE_CREDENTIALS["AWS_SESSION_TOKEN"]})


@dataclass
class QueueInfo:
    consumer: str | None       # function id fed by the queue, and by its DLQ
    dlq_consumer: str | None
    url: str
    arn: str
    dlq_url: str
    dlq_arn: str
    max_receive_count: int
    visibility_timeout_s: int


@dataclass
class Provisioned:
    """What was created: names the handlers get through Settings, plus what the pollers need."""

    endpoint_url: str
    kms_key_id: str
    kms_key_arn: str
    buckets: dict[str, str] = field(default_factory=dict)   # logical id -> bucket name
    tables: dict[str, str] = field(default_factory=dict)    # logical id -> table name
    queues: dict[str, QueueInfo] = field(default_factory=dict)  # logical id -> queue info
    settings_fields: dict[str, str] = field(default_factory=dict)  # Settings field -> value

    def to_json(self) -> dict:
        return {
            "endpoint_url": self.endpoint_url, "kms_key_id": self.kms_key_id,
            "buckets": self.buckets, "tables": self.tables,
            "queues": {k: vars(v) for k, v in self.queues.items()},
        }


def provision(endpoint_url: str, cfg: LocalConfig) -> Provisioned:
    """Create the KMS key, buckets, tables and queues of ``infra.resources.RESOURCES`` on moto.

    Every store is encrypted with the one customer-managed key, as in the stack. Idempotent on a
    server that already holds them (create calls that find the resource keep it).
    """
    res = RESOURCES
    kms = client("kms", endpoint_url)
    alias = f"alias/cirrus-{cfg.stage}"
    key = _existing_key(kms, alias)
    if key is None:
        key = kms.create_key(Description=f"Cirrus {cfg.stage} data key")["KeyMetadata"]
        kms.enable_key_rotation(KeyId=key["KeyId"])
        kms.create_alias(AliasName=alias, TargetKeyId=key["KeyId"])
    out = Provisioned(endpoint_url=endpoint_url, kms_key_id=key["KeyId"], kms_key_arn=key["Arn"])

    s3 = client("s3", endpoint_url)
    for spec in res.buckets:
        name = cfg.resource_name(spec.id)
        _create_bucket(s3, name, key["Arn"])
        out.buckets[spec.id] = name
        out.settings_fields[spec.env] = name

    ddb = client("dynamodb", endpoint_url)
    for spec in res.tables:
        name = cfg.resource_name(spec.id)
        _create_table(ddb, name, spec, key["Arn"])
        out.tables[spec.id] = name
        out.settings_fields[spec.env] = name

    sqs = client("sqs", endpoint_url)
    for spec in res.queues:
        info = _create_queue(sqs, cfg, spec, key["Arn"])
        out.queues[spec.id] = info
        if spec.env:
            out.settings_fields[spec.env] = info.url

    _wire_job_notifications(s3, out, res)
    log.info("provisioned buckets=%s tables=%s queues=%s", sorted(out.buckets.values()),
             sorted(out.tables.values()), sorted(out.queues))
    return out


def _existing_key(kms, alias: str) -> dict | None:
    try:
        return kms.describe_key(KeyId=alias)["KeyMetadata"]
    except kms.exceptions.NotFoundException:
        return None


def _create_bucket(s3, name: str, key_arn: str) -> None:
    try:
        s3.create_bucket(Bucket=name)
    except s3.exceptions.BucketAlreadyOwnedByYou:
        pass
    s3.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Enabled"})
    s3.put_bucket_encryption(Bucket=name, ServerSideEncryptionConfiguration={"Rules": [{
        "ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "aws:kms", "KMSMasterKeyID": key_arn},
        "BucketKeyEnabled": True,
    }]})
    s3.put_public_access_block(Bucket=name, PublicAccessBlockConfiguration={
        "BlockPublicAcls": True, "IgnorePublicAcls": True,
        "BlockPublicPolicy": True, "RestrictPublicBuckets": True,
    })


def _create_table(ddb, name: str, spec, key_arn: str) -> None:
    attrs = {spec.partition.name: spec.partition.type}
    schema = [{"AttributeName": spec.partition.name, "KeyType": "HASH"}]
    if spec.sort:
        attrs[spec.sort.name] = spec.sort.type
        schema.append({"AttributeName": spec.sort.name, "KeyType": "RANGE"})
    gsis = []
    for idx in spec.indexes:
        attrs[idx.partition.name] = idx.partition.type
        ks = [{"AttributeName": idx.partition.name, "KeyType": "HASH"}]
        if idx.sort:
            attrs[idx.sort.name] = idx.sort.type
            ks.append({"AttributeName": idx.sort.name, "KeyType": "RANGE"})
        gsis.append({"IndexName": idx.name, "KeySchema": ks, "Projection": {"ProjectionType": "ALL"}})
    kwargs = dict(
        TableName=name, KeySchema=schema, BillingMode="PAY_PER_REQUEST",
        AttributeDefinitions=[{"AttributeName": k, "AttributeType": t} for k, t in attrs.items()],
        SSESpecification={"Enabled": True, "SSEType": "KMS", "KMSMasterKeyId": key_arn},
    )
    if gsis:
        kwargs["GlobalSecondaryIndexes"] = gsis
    try:
        ddb.create_table(**kwargs)
    except ddb.exceptions.ResourceInUseException:
        return
    ddb.get_waiter("table_exists").wait(TableName=name, WaiterConfig={"Delay": 0.1, "MaxAttempts": 50})
    if spec.ttl_attribute:
        ddb.update_time_to_live(TableName=name, TimeToLiveSpecification={
            "Enabled": True, "AttributeName": spec.ttl_attribute})
    ddb.update_continuous_backups(TableName=name, PointInTimeRecoverySpecification={
        "PointInTimeRecoveryEnabled": True})


def _create_queue(sqs, cfg: LocalConfig, spec, key_arn: str) -> QueueInfo:
    common = {"KmsMasterKeyId": key_arn}
    visibility = cfg.visibility_timeout(spec)
    dlq_url = sqs.create_queue(QueueName=cfg.queue_name(spec, dlq=True), Attributes={
        **common, "VisibilityTimeout": str(cfg.visibility_timeout(spec, dlq=True)),
        "MessageRetentionPeriod": str(14 * 24 * 3600)})["QueueUrl"]
    dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    url = sqs.create_queue(QueueName=cfg.queue_name(spec), Attributes={
        **common, "VisibilityTimeout": str(visibility), "MessageRetentionPeriod": str(4 * 24 * 3600),
        "RedrivePolicy": json.dumps({"deadLetterTargetArn": dlq_arn,
                                     "maxReceiveCount": str(spec.max_receive_count)}),
    })["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    return QueueInfo(consumer=spec.consumer, dlq_consumer=getattr(spec, "dlq_consumer", None), url=url,
                     arn=arn, dlq_url=dlq_url, dlq_arn=dlq_arn, max_receive_count=spec.max_receive_count,
                     visibility_timeout_s=visibility)


def _wire_job_notifications(s3, out: Provisioned, res) -> None:
    """S3 ObjectCreated under jobs/input/*.jsonl in the data bucket -> the JobEvents queue.

    moto delivers bucket notifications to SQS itself (as S3 does), so no polling of the bucket is
    needed. Like S3, it first sends an ``s3:TestEvent`` message when the configuration is set.
    """
    data_bucket = next((n for i, n in out.buckets.items() if i == "Data"), None)
    events = out.queues.get("JobEvents")
    if data_bucket is None or events is None:
        return
    s3.put_bucket_notification_configuration(Bucket=data_bucket, NotificationConfiguration={
        "QueueConfigurations": [{
            "Id": "cirrus-jobs-input",
            "QueueArn": events.arn,
            "Events": ["s3:ObjectCreated:*"],
            "Filter": {"Key": {"FilterRules": [
                {"Name": "prefix", "Value": JOBS_INPUT_PREFIX},
                {"Name": "suffix", "Value": JOBS_INPUT_SUFFIX},
            ]}},
        }],
    })



def provision_usage_plan(endpoint_url: str, cfg: LocalConfig) -> str:
    """The stack's REST API stage and default per-key usage plan (infra/constructs/api.py) on moto's
    API Gateway, with the imitated stage's ``api.key_*`` limits; returns the plan id."""
    api_cfg = cfg.stage_settings().api
    ag = client("apigateway", endpoint_url)
    api = ag.create_rest_api(name=f"cirrus-{cfg.stage}", apiKeySource="AUTHORIZER")
    # A deployment needs one method; the local gateway serves the real routes itself.
    root = ag.get_resources(restApiId=api["id"])["items"][0]["id"]
    ag.put_method(restApiId=api["id"], resourceId=root, httpMethod="GET", authorizationType="NONE")
    ag.put_integration(restApiId=api["id"], resourceId=root, httpMethod="GET", type="MOCK")
    ag.create_deployment(restApiId=api["id"], stageName=cfg.stage)
    quota = {"quota": {"limit": api_cfg.key_quota, "period": api_cfg.key_quota_period}} if api_cfg.key_quota else {}
    plan = ag.create_usage_plan(name=f"cirrus-{cfg.stage}-default", apiStages=[{"apiId": api["id"], "stage": cfg.stage}],
                                throttle={"rateLimit": api_cfg.key_rate_limit, "burstLimit": api_cfg.key_burst_limit},
                                **quota)
    return plan["id"]
