"""The synthesized templates (one real synth per session): every security property, asserted."""
from __future__ import annotations

import json

import pytest

from infra.constructs.api import ROUTES
from infra.constructs.batch import VISIBILITY_FACTOR
from infra.function_specs import FUNCTIONS, STREAM_EXEC_WRAPPER
from infra.resources import DOCS_ROUTES, RESOURCES, ROUTES
from infra.settings import FunctionsSettings, all_stages
from functions.core.settings import ENV_PREFIX, Settings
from template_support import as_list, ref_id
from functions.core.contract import JOBS_INPUT_PREFIX, OPENAI_BATCHES_PREFIX, OPENAI_FILES_PREFIX

STAGES = ("dev", "prod", "citest")
# Actions AWS offers no resource-level permission for: the only ones allowed on Resource "*".
STAR_RESOURCE_ACTIONS = {"xray:PutTraceSegments", "xray:PutTelemetryRecords", "ecr:GetAuthorizationToken",
                         "cloudwatch:PutMetricData"}


def _statements(doc: dict) -> list[dict]:
    return doc.get("Statement", [])


@pytest.mark.parametrize("stage", STAGES)
def test_every_bucket_is_encrypted_private_versioned_and_kms_where_s3_allows(synth, stage):
    buckets = synth.resources(stage, "AWS::S3::Bucket")
    assert len(buckets) == len(RESOURCES.buckets) + 1   # + the access-log bucket
    kms_buckets = 0
    for lid, b in buckets.items():
        p = b["Properties"]
        sse = p["BucketEncryption"]["ServerSideEncryptionConfiguration"][0]
        algo = sse["ServerSideEncryptionByDefault"]["SSEAlgorithm"]
        assert p["PublicAccessBlockConfiguration"] == {
            "BlockPublicAcls": True, "BlockPublicPolicy": True, "IgnorePublicAcls": True, "RestrictPublicBuckets": True}
        assert p["VersioningConfiguration"]["Status"] == "Enabled"
        if "LoggingConfiguration" in p:       # artifacts + data: SSE-KMS with the stage key, bucket key on
            assert algo == "aws:kms" and sse["BucketKeyEnabled"] is True
            assert ref_id(sse["ServerSideEncryptionByDefault"]["KMSMasterKeyID"]).startswith("EncryptionKey")
            kms_buckets += 1
        else:                                 # the log target: S3 access logging cannot write SSE-KMS
            assert algo == "AES256" and lid.startswith("StorageAccessLogs")
        assert p["LifecycleConfiguration"]["Rules"]
    assert kms_buckets == len(RESOURCES.buckets)


@pytest.mark.parametrize("stage", STAGES)
def test_every_bucket_policy_denies_requests_without_tls(synth, stage):
    buckets = set(synth.resources(stage, "AWS::S3::Bucket"))
    covered = set()
    for pol in synth.resources(stage, "AWS::S3::BucketPolicy").values():
        for st in _statements(pol["Properties"]["PolicyDocument"]):
            if st["Effect"] == "Deny" and st.get("Condition") == {"Bool": {"aws:SecureTransport": "false"}}:
                covered.add(ref_id(pol["Properties"]["Bucket"]))
    assert covered == buckets


@pytest.mark.parametrize("stage", STAGES)
def test_tables_are_kms_encrypted_with_pitr_and_the_resource_spec_keys(synth, stage):
    tables = synth.resources(stage, "AWS::DynamoDB::Table")
    assert len(tables) == len(RESOURCES.tables)
    by_id = {spec.id: spec for spec in RESOURCES.tables}
    for lid, t in tables.items():
        p = t["Properties"]
        spec = by_id[lid.removeprefix("Tables")[:-8]]
        assert p["SSESpecification"]["SSEEnabled"] is True and p["SSESpecification"]["SSEType"] == "KMS"
        assert ref_id(p["SSESpecification"]["KMSMasterKeyId"]).startswith("EncryptionKey")
        assert p["PointInTimeRecoverySpecification"]["PointInTimeRecoveryEnabled"] is True
        assert p["BillingMode"] == "PAY_PER_REQUEST"
        assert p["KeySchema"][0] == {"AttributeName": spec.partition.name, "KeyType": "HASH"}
        if spec.ttl_attribute:
            assert p["TimeToLiveSpecification"] == {"AttributeName": spec.ttl_attribute, "Enabled": True}
        assert [g["IndexName"] for g in p.get("GlobalSecondaryIndexes", [])] == [i.name for i in spec.indexes]


@pytest.mark.parametrize("stage", STAGES)
def test_queues_are_kms_encrypted_tls_only_and_wired_to_dlqs(synth, stage):
    settings = all_stages()[stage] if stage != "citest" else None
    queues = synth.resources(stage, "AWS::SQS::Queue")
    assert len(queues) == 2 * len(RESOURCES.queues)
    for q in queues.values():
        assert ref_id(q["Properties"]["KmsMasterKeyId"]).startswith("EncryptionKey")
    tls_only = set()
    for pol in synth.resources(stage, "AWS::SQS::QueuePolicy").values():
        for st in _statements(pol["Properties"]["PolicyDocument"]):
            if st["Effect"] == "Deny" and st.get("Condition") == {"Bool": {"aws:SecureTransport": "false"}}:
                tls_only.update(ref_id(r) for r in pol["Properties"]["Queues"])
    assert tls_only == set(queues)
    for spec in RESOURCES.queues:
        main = next(v for k, v in queues.items() if k.startswith(f"Batch{spec.id}") and "Dlq" not in k)
        dlq_id = next(k for k in queues if k.startswith(f"Batch{spec.id}Dlq"))
        redrive = main["Properties"]["RedrivePolicy"]
        assert redrive["maxReceiveCount"] == spec.max_receive_count
        assert redrive["deadLetterTargetArn"]["Fn::GetAtt"][0] == dlq_id
        if settings is not None:
            timeout = getattr(settings.functions, spec.consumer).timeout_s
            assert main["Properties"]["VisibilityTimeout"] >= VISIBILITY_FACTOR * timeout


@pytest.mark.parametrize("stage", STAGES)
def test_event_sources_report_batch_item_failures_for_every_queue_and_dlq(synth, stage):
    mappings = synth.resources(stage, "AWS::Lambda::EventSourceMapping")
    assert len(mappings) == 2 * len(RESOURCES.queues)
    for m in mappings.values():
        assert m["Properties"]["FunctionResponseTypes"] == ["ReportBatchItemFailures"]


@pytest.mark.parametrize("stage", STAGES)
def test_the_splitter_and_worker_take_one_message_per_invocation(synth, stage):
    # A message timing out in a batch would return its batch-mates unrun until they were dead-lettered.
    expected = all_stages()[stage].functions.sqs_batch_size if stage != "citest" else FunctionsSettings().sqs_batch_size
    sizes = {}
    for m in synth.resources(stage, "AWS::Lambda::EventSourceMapping").values():
        queue = m["Properties"]["EventSourceArn"]["Fn::GetAtt"][0]
        sizes[queue] = m["Properties"]["BatchSize"]
    one_each = {q: n for q, n in sizes.items()
                if q.startswith(("BatchWork", "BatchJobEvents")) and "Dlq" not in q}
    assert sorted(one_each.values()) == [1, 1], sizes
    dlq_consumers = {q: n for q, n in sizes.items() if q not in one_each}
    assert dlq_consumers and all(n == expected for n in dlq_consumers.values()), sizes
    assert expected > 1  # the dead-letter backstop still takes batches (the stage's sqs_batch_size)


@pytest.mark.parametrize("stage", STAGES)
def test_job_inputs_notify_the_job_events_queue(synth, stage):
    (notif,) = synth.resources(stage, "Custom::S3BucketNotifications").values()
    (qc,) = notif["Properties"]["NotificationConfiguration"]["QueueConfigurations"]
    rules = {r["Name"]: r["Value"] for r in qc["Filter"]["Key"]["FilterRules"]}
    assert rules == {"prefix": JOBS_INPUT_PREFIX, "suffix": ".jsonl"}
    assert qc["QueueArn"]["Fn::GetAtt"][0].startswith("BatchJobEvents")
    assert notif.get("DependsOn"), "notification must wait for the queue policy S3 validates"


@pytest.mark.parametrize("stage", STAGES)
def test_every_log_group_is_kms_encrypted_with_retention(synth, stage):
    groups = synth.resources(stage, "AWS::Logs::LogGroup")
    uploads_bundles = bool(synth.resources(stage, "Custom::CDKBucketDeployment"))
    checks_weights = bool([r for r in synth.templates[stage]["Resources"].values()
                           if r["Type"] == "Custom::CirrusWeightsCheck"])
    # + API access logs (+ bundle deploy) (+ the GPU model copy's deploy-time check)
    assert len(groups) == len(FUNCTIONS) + 1 + uploads_bundles + checks_weights
    for g in groups.values():
        assert ref_id(g["Properties"]["KmsKeyId"]).startswith("EncryptionKey")
        assert g["Properties"]["RetentionInDays"] > 0


@pytest.mark.parametrize("stage", STAGES)
def test_key_rotates_and_topic_is_encrypted(synth, stage):
    (key,) = synth.resources(stage, "AWS::KMS::Key").values()
    assert key["Properties"]["EnableKeyRotation"] is True
    services = {st["Principal"].get("Service") if isinstance(st["Principal"].get("Service"), str) else "logs"
                for st in _statements(key["Properties"]["KeyPolicy"]) if "Service" in st["Principal"]}
    assert services == {"logs", "s3.amazonaws.com", "cloudwatch.amazonaws.com"}
    (topic,) = synth.resources(stage, "AWS::SNS::Topic").values()
    assert ref_id(topic["Properties"]["KmsMasterKeyId"]).startswith("EncryptionKey")


@pytest.mark.parametrize("stage", STAGES)
def test_the_authorizer_guards_every_method(synth, stage):
    # CORS preflights (OPTIONS, mock integrations) are public by nature: test_least_privilege checks them.
    methods = {k: m for k, m in synth.resources(stage, "AWS::ApiGateway::Method").items()
               if m["Properties"]["HttpMethod"] != "OPTIONS"}
    # The docs routes are the only public ones, and exist only where the stage enables them.
    public = {k: m for k, m in methods.items() if m["Properties"]["AuthorizationType"] == "NONE"}
    docs = all_stages()[stage].api.docs if stage != "citest" else False  # citest: the default (off)
    assert len(public) == (len(DOCS_ROUTES) if docs else 0)
    assert all(m["Properties"]["HttpMethod"] == "GET" for m in public.values())
    methods = {k: m for k, m in methods.items() if k not in public}
    assert len(methods) == len(ROUTES)
    (auth_id,) = synth.resources(stage, "AWS::ApiGateway::Authorizer")
    for m in methods.values():
        assert m["Properties"]["AuthorizationType"] == "CUSTOM"
        assert m["Properties"]["AuthorizerId"] == {"Ref": auth_id}
        assert "RequestValidatorId" in m["Properties"]


@pytest.mark.parametrize("stage", STAGES)
def test_api_stage_throttles_traces_and_logs_without_bodies(synth, stage):
    (st,) = synth.resources(stage, "AWS::ApiGateway::Stage").values()
    p = st["Properties"]
    assert p["TracingEnabled"] is True
    assert ref_id(p["AccessLogSetting"]["DestinationArn"]).startswith("ApiAccessLogs")
    (ms,) = p["MethodSettings"]
    assert ms["DataTraceEnabled"] is False and ms["ThrottlingRateLimit"] > 0 and ms["ThrottlingBurstLimit"] > 0
    bodies = [json.loads(r["Properties"]["ResponseTemplates"]["application/json"])
              for r in synth.resources(stage, "AWS::ApiGateway::GatewayResponse").values()]
    assert bodies and all(set(b["error"]) == {"message", "type", "param", "code"} for b in bodies)



def test_gateway_429_responses_tell_clients_when_to_retry(synth):
    responses = {r["Properties"]["ResponseType"]: r["Properties"]
                 for r in synth.resources("dev", "AWS::ApiGateway::GatewayResponse").values()}
    throttles = {t: p for t, p in responses.items() if p.get("StatusCode") == "429"}
    assert set(throttles) == {"THROTTLED", "QUOTA_EXCEEDED"}
    assert responses["INVALID_API_KEY"]["StatusCode"] == "403"
    for props in throttles.values():
        # (dev also adds its CORS headers: test_least_privilege)
        own = {k: v for k, v in props["ResponseParameters"].items() if "Access-Control" not in k and "Vary" not in k}
        assert own == {"gatewayresponse.header.Content-Type": "'application/json'",
                       "gatewayresponse.header.Retry-After": "'1'"}

@pytest.mark.parametrize("stage", STAGES)
def test_every_method_requires_a_usage_key_from_the_authorizer_held_to_the_stages_key_plan(synth, stage):
    (api,) = synth.resources(stage, "AWS::ApiGateway::RestApi").values()
    assert api["Properties"]["ApiKeySourceType"] == "AUTHORIZER"
    # Every method behind the authorizer; the public docs page and description (api.docs) take no key.
    methods = [m["Properties"] for m in synth.resources(stage, "AWS::ApiGateway::Method").values()]
    assert all(m.get("ApiKeyRequired") is True for m in methods if m["AuthorizationType"] == "CUSTOM")
    assert all(not m.get("ApiKeyRequired") for m in methods if m["AuthorizationType"] == "NONE")
    assert sum(m["AuthorizationType"] == "CUSTOM" for m in methods) == len(ROUTES)
    (plan,) = synth.resources(stage, "AWS::ApiGateway::UsagePlan").values()
    from infra.settings import ApiSettings

    want = all_stages()[stage].api if stage in all_stages() else ApiSettings(waf=False)  # citest: the defaults
    p = plan["Properties"]
    assert p["Throttle"] == {"RateLimit": want.key_rate_limit, "BurstLimit": want.key_burst_limit}
    if want.key_quota:
        assert p["Quota"] == {"Limit": want.key_quota, "Period": want.key_quota_period}
    (st_id,) = synth.resources(stage, "AWS::ApiGateway::Stage")
    (api_stage,) = p["ApiStages"]
    assert api_stage["Stage"] == {"Ref": st_id}
    assert "UsagePlanId" in synth.templates[stage]["Outputs"]


def test_per_key_limits_cannot_exceed_the_stage_limits():
    from pydantic import ValidationError

    from infra.settings import ApiSettings

    with pytest.raises(ValidationError, match="key_rate_limit"):
        ApiSettings(throttle_rate_limit=10, key_rate_limit=20)


def test_waf_guards_prod_only(synth):
    assert synth.resources("prod", "AWS::WAFv2::WebACLAssociation")
    assert not synth.resources("dev", "AWS::WAFv2::WebACL")


@pytest.mark.parametrize("stage", STAGES)
def test_no_iam_wildcard_beyond_the_acknowledged_ones(synth, stage):
    for lid, pol in synth.resources(stage, "AWS::IAM::Policy").items():
        for st in _statements(pol["Properties"]["PolicyDocument"]):
            actions = as_list(st["Action"])
            assert not any(a == "*" or a.endswith(":*") for a in actions), (lid, actions)
            if "*" in as_list(st["Resource"]):
                assert set(actions) <= STAR_RESOURCE_ACTIONS, (lid, actions)
    for lid, role in synth.resources(stage, "AWS::IAM::Role").items():
        managed = json.dumps(role["Properties"].get("ManagedPolicyArns", []))
        assert "FullAccess" not in managed, lid


def _role_statements(synth, stage: str, function_id: str) -> list[dict]:
    """Every policy statement on the function's role."""
    fn = next(v for k, v in synth.resources(stage, "AWS::Lambda::Function").items()
              if k.startswith(f"Functions{function_id.replace('_', '')}"))
    role = ref_id(fn["Properties"]["Role"])
    return [st for pol in synth.resources(stage, "AWS::IAM::Policy").values()
            if role in {ref_id(r) for r in as_list(pol["Properties"].get("Roles", []))}
            for st in _statements(pol["Properties"]["PolicyDocument"])]


def _s3_actions_on(synth, stage: str, function_id: str, prefix: str) -> set[str]:
    """S3 actions the function's role has on ``<some bucket>/<prefix>*``."""
    return {a for st in _role_statements(synth, stage, function_id)
            if any(f"/{prefix}*" in json.dumps(r) for r in as_list(st["Resource"]))
            for a in as_list(st["Action"]) if a.startswith("s3:")}


def test_only_the_splitter_may_delete_job_inputs(synth):
    # The splitter deletes inputs it rejects (over the size limit, late) with their versions.
    assert "s3:DeleteObject*" in _s3_actions_on(synth, "dev", "batch_splitter", JOBS_INPUT_PREFIX)
    for other in ("api", "batch_worker", "batch_dlq"):
        assert not any(a.startswith("s3:Delete") for a in _s3_actions_on(synth, "dev", other, JOBS_INPUT_PREFIX))


def _listing_on(synth, stage: str, function_id: str, prefix: str) -> set[str]:
    """Bucket-level list actions the function's role has, held to ``s3:prefix`` = ``<prefix>*``."""
    return {a for st in _role_statements(synth, stage, function_id)
            if st.get("Condition", {}).get("StringLike", {}).get("s3:prefix") == [f"{prefix}*"]
            for a in as_list(st["Action"])}


def test_deleting_every_version_comes_with_listing_versions_of_that_prefix_only(synth):
    assert _listing_on(synth, "dev", "batch_splitter", JOBS_INPUT_PREFIX) == {"s3:ListBucket", "s3:ListBucketVersions"}
    assert _listing_on(synth, "dev", "batch_worker", JOBS_INPUT_PREFIX) == {"s3:ListBucket"}


@pytest.mark.parametrize("stage", STAGES)
def test_the_api_function_may_keep_openai_files_and_batches(synth, stage):
    # Uploads, metadata and converted output files; batch records; an oversized upload is deleted.
    files = _s3_actions_on(synth, stage, "api", OPENAI_FILES_PREFIX)
    assert {"s3:GetObject", "s3:PutObject", "s3:DeleteObject*"} <= files
    assert {"s3:GetObject", "s3:PutObject"} <= _s3_actions_on(synth, stage, "api", OPENAI_BATCHES_PREFIX)
    assert _listing_on(synth, stage, "api", OPENAI_FILES_PREFIX) == {"s3:ListBucket", "s3:ListBucketVersions"}
    for other in ("generation", "authorizer", "batch_splitter", "batch_worker", "batch_dlq"):
        assert not _s3_actions_on(synth, stage, other, OPENAI_FILES_PREFIX), other


@pytest.mark.parametrize("stage", STAGES)
def test_functions_trace_and_get_names_only_environment(synth, stage):
    fns = {k: v for k, v in synth.resources(stage, "AWS::Lambda::Function").items() if k.startswith("Functions")}
    assert len(fns) == len(FUNCTIONS)
    for lid, fn in fns.items():
        p = fn["Properties"]
        assert p["TracingConfig"] == {"Mode": "Active"}
        assert p["Runtime"].startswith("python3.1") and p["MemorySize"] >= 128 and p["Timeout"] >= 1
        for name, value in p["Environment"]["Variables"].items():
            if name == "AWS_LAMBDA_EXEC_WRAPPER":  # the streaming runtime (a path in the asset)
                assert value == STREAM_EXEC_WRAPPER and lid.startswith("Functionsgeneration"), lid
                continue
            assert name.startswith(("POWERTOOLS_", ENV_PREFIX)), name
            if name.startswith(ENV_PREFIX):
                assert name[len(ENV_PREFIX):].lower() in Settings.model_fields, name
            assert not any(w in name for w in ("SECRET", "PASSWORD", "TOKEN")), name


def test_api_function_knows_the_heavy_endpoint_only_where_enabled(synth):
    def api_env(stage):
        fn = next(v for k, v in synth.resources(stage, "AWS::Lambda::Function").items() if k.startswith("Functionsapi"))
        return fn["Properties"]["Environment"]["Variables"]
    assert api_env("prod")["CIRRUS_HEAVY_ENDPOINT_NAME"] == "cirrus-prod-heavy"
    assert api_env("prod")["CIRRUS_HEAVY_INFERENCE_COMPONENT"] == "cirrus-prod-heavy-llm"
    assert api_env("citest")["CIRRUS_HEAVY_ENDPOINT_NAME"] == "cirrus-citest-heavy"
    assert "CIRRUS_HEAVY_INFERENCE_COMPONENT" not in api_env("citest")
    assert "CIRRUS_HEAVY_ENDPOINT_NAME" not in api_env("dev")
    assert not synth.resources("dev", "AWS::SageMaker::Endpoint")



def test_api_function_generates_on_lambda_only_with_the_stages_generation_models(synth):
    def api_env(stage):
        fn = next(v for k, v in synth.resources(stage, "AWS::Lambda::Function").items() if k.startswith("Functionsapi"))
        return fn["Properties"]["Environment"]["Variables"]
    assert api_env("dev")["CIRRUS_GENERATION_MODELS"] == "smollm2-135m-instruct"
    assert api_env("prod")["CIRRUS_GENERATION_MODELS"] == ""   # explicit: no random-weight demo in prod
    prod = {"CIRRUS_GENERATION_MODELS": api_env("prod")["CIRRUS_GENERATION_MODELS"]}
    assert Settings.from_env(prod).generation_models == []

def _sync_heavy(synth, stage: str, rtype: str) -> list[dict]:
    """The sync heavy endpoint's resources (the async endpoint lives in HeavyAsync*, tests/infra/test_heavy_async.py)."""
    return [v for k, v in synth.resources(stage, rtype).items() if k.startswith("Heavy") and not k.startswith("HeavyAsync")]


def test_heavy_endpoint_scales_to_zero_with_an_inference_component(synth):
    (cfg,) = _sync_heavy(synth, "prod", "AWS::SageMaker::EndpointConfig")
    (variant,) = cfg["Properties"]["ProductionVariants"]
    assert variant["InstanceType"] == "ml.g5.xlarge"
    assert variant["ManagedInstanceScaling"]["MinInstanceCount"] == 0
    # g5 has NVMe instance storage (hardware-encrypted); SageMaker rejects a KmsKeyId for it.
    assert "KmsKeyId" not in cfg["Properties"]
    (target,) = _sync_heavy(synth, "prod", "AWS::ApplicationAutoScaling::ScalableTarget")
    assert target["Properties"]["MinCapacity"] == 0
    assert target["Properties"]["ScalableDimension"] == "sagemaker:inference-component:DesiredCopyCount"
    kinds = {p["Properties"]["PolicyType"] for p in synth.resources("prod", "AWS::ApplicationAutoScaling::ScalingPolicy").values()}
    assert kinds == {"TargetTrackingScaling", "StepScaling"}   # track load; step up from zero


def test_heavy_endpoint_on_ebs_instances_is_kms_encrypted_and_target_tracked(synth):
    (cfg,) = _sync_heavy(synth, "citest", "AWS::SageMaker::EndpointConfig")
    assert ref_id(cfg["Properties"]["KmsKeyId"]).startswith("EncryptionKey")
    (variant,) = cfg["Properties"]["ProductionVariants"]
    assert variant["InitialInstanceCount"] == 1 and "ModelName" in variant
    (target,) = _sync_heavy(synth, "citest", "AWS::ApplicationAutoScaling::ScalableTarget")
    assert (target["Properties"]["MinCapacity"], target["Properties"]["MaxCapacity"]) == (1, 3)
    (model,) = synth.resources("citest", "AWS::SageMaker::Model").values()
    assert "djl-inference" in json.dumps(model["Properties"]["PrimaryContainer"]["Image"])


def test_heavy_execution_role_is_scoped_not_sagemaker_full_access(synth):
    role_id = next(k for k in synth.resources("prod", "AWS::IAM::Role") if k.startswith("HeavyExecutionRole"))
    # Its default policy; the async endpoint's scoped S3 access is a policy of its own (test_heavy_async.py).
    pol = next(v for k, v in synth.resources("prod", "AWS::IAM::Policy").items()
               if k.startswith("HeavyExecutionRoleDefaultPolicy"))
    assert any(r.get("Ref") == role_id for r in pol["Properties"]["Roles"])
    actions = {a for st in _statements(pol["Properties"]["PolicyDocument"]) for a in as_list(st["Action"])}
    assert not any(a.startswith("sagemaker:") or a.startswith("s3:") for a in actions)
    assert {"ecr:BatchGetImage", "logs:PutLogEvents", "cloudwatch:PutMetricData"} <= actions


@pytest.mark.parametrize("stage", STAGES)
def test_alarms_cover_api_functions_dlqs_and_endpoint_and_notify_the_topic(synth, stage):
    alarms = synth.resources(stage, "AWS::CloudWatch::Alarm")
    metrics = {a["Properties"].get("MetricName") for a in alarms.values()}
    assert {"5XXError", "Latency", "Errors", "Throttles", "ApproximateNumberOfMessagesVisible"} <= metrics
    if stage != "dev":
        assert {"Invocation5XXErrors", "ModelLatency"} <= metrics
    topic = next(iter(synth.resources(stage, "AWS::SNS::Topic")))
    scaling = {k for k in synth.resources(stage, "AWS::ApplicationAutoScaling::ScalingPolicy")}
    notify = [a for a in alarms.values() if a["Properties"].get("AlarmActions") == [{"Ref": topic}]]
    # all but the scale-from-zero triggers, which drive autoscaling policies
    drive = [a for a in alarms.values() if a["Properties"].get("AlarmActions")
             and {ref_id(x) for x in a["Properties"]["AlarmActions"]} <= scaling]
    assert len(notify) + len(drive) == len(alarms) and len(drive) <= 2
    assert synth.resources(stage, "AWS::CloudWatch::Dashboard")


def test_default_bundles_are_uploaded_under_models_then_pointed_to(synth):
    deployments = synth.resources("dev", "Custom::CDKBucketDeployment")
    prefixes = sorted(d["Properties"]["DestinationBucketKeyPrefix"] for d in deployments.values())
    names = all_stages()["dev"].models
    assert len(deployments) == 2 * len(names)
    for name in names:
        assert f"models/{name}/" in prefixes
        assert any(p.startswith(f"models/{name}/") and p != f"models/{name}/" for p in prefixes)
    for lid, d in deployments.items():
        sse = d["Properties"]["SystemMetadata"]
        assert sse["sse"] == "aws:kms" and ref_id(sse["sse-kms-key-id"]).startswith("EncryptionKey")
        assert d["Properties"]["Prune"] is False
        if "pointer" in lid:
            assert any("files" in dep for dep in d.get("DependsOn", []))
