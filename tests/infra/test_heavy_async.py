"""The async generation endpoint (HeavyAsync): the contract with functions/core/generation, KMS, scoped grants, scale to zero."""
from __future__ import annotations

import json
import os

import pytest

from functions.core.generation.service import JOBS_PREFIX
from infra.settings import STAGES_CONTEXT_KEY, HeavyEndpointSettings, StageSettingsError, all_stages, parse_stage
from template_support import as_list, ref_id
from functions.core.contract import JOBS_GENERATION_PREFIX

os.environ.setdefault("JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION", "20")

ASYNC_STAGES = ("prod", "citest")   # heavy on (g5: NVMe, no volume key / p3: EBS, volume key)


def _join(value) -> tuple[list, str]:
    """A CDK ``Fn::Join`` with an empty separator: (the tokens it references, its literal text)."""
    parts = value["Fn::Join"][1]
    return [ref_id(p) for p in parts if isinstance(p, dict)], "".join(p for p in parts if isinstance(p, str))


def _one(synth, stage: str, rtype: str, prefix: str) -> tuple[str, dict]:
    (found,) = [(k, v) for k, v in synth.resources(stage, rtype).items() if k.startswith(prefix)]
    return found


def _data_bucket(synth, stage: str) -> str:
    return _one(synth, stage, "AWS::S3::Bucket", "StorageData")[0]


def _api_statements(synth, stage: str, function: str = "api") -> list[dict]:
    _, pol = _one(synth, stage, "AWS::IAM::Policy", f"Functions{function}roleDefaultPolicy")
    return pol["Properties"]["PolicyDocument"]["Statement"]


def test_infra_prefix_is_the_one_the_generation_service_uses():
    assert JOBS_GENERATION_PREFIX == JOBS_PREFIX == "jobs/generation/"


@pytest.mark.parametrize("stage", ASYNC_STAGES)
def test_async_config_writes_results_and_failures_under_the_jobs_prefix_with_the_cirrus_key(synth, stage):
    _, cfg = _one(synth, stage, "AWS::SageMaker::EndpointConfig", "HeavyAsync")
    out = cfg["Properties"]["AsyncInferenceConfig"]["OutputConfig"]
    bucket = _data_bucket(synth, stage)
    # s3://<data bucket>/jobs/generation/out/ and .../failed/: where job_status() looks for them.
    assert out["S3OutputPath"] == {"Fn::Join": ["", ["s3://", {"Ref": bucket}, f"/{JOBS_PREFIX}out/"]]}
    assert out["S3FailurePath"] == {"Fn::Join": ["", ["s3://", {"Ref": bucket}, f"/{JOBS_PREFIX}failed/"]]}
    # Outputs are encrypted with the Cirrus key on every instance type (S3 objects, not the NVMe volume).
    assert ref_id(out["KmsKeyId"]).startswith("EncryptionKey")
    heavy = all_stages()[stage].heavy if stage in all_stages() else HeavyEndpointSettings()  # citest: defaults
    client = cfg["Properties"]["AsyncInferenceConfig"]["ClientConfig"]
    assert client["MaxConcurrentInvocationsPerInstance"] == heavy.async_max_concurrent_invocations


def test_async_config_takes_the_volume_key_only_where_sagemaker_allows_it(synth):
    _, g5 = _one(synth, "prod", "AWS::SageMaker::EndpointConfig", "HeavyAsync")
    _, p3 = _one(synth, "citest", "AWS::SageMaker::EndpointConfig", "HeavyAsync")
    assert g5["Properties"]["ProductionVariants"][0]["InstanceType"] == "ml.g5.xlarge"
    assert "KmsKeyId" not in g5["Properties"]          # NVMe: SageMaker rejects a KmsKeyId
    assert ref_id(p3["Properties"]["KmsKeyId"]).startswith("EncryptionKey")
    acked = {stage: [rule.removeprefix("Annotation::") for path, entries in synth.metadata[stage].items() if "/HeavyAsync/EndpointConfig" in path
                     for e in entries if e["type"] == "aws:cdk:acknowledged-rules" for rule in e["data"]]
             for stage in ASYNC_STAGES}
    assert acked == {"prod": ["AwsSolutions-SM2"], "citest": []}


@pytest.mark.parametrize("stage", ASYNC_STAGES)
def test_async_endpoint_serves_the_heavy_model_as_its_own_endpoint(synth, stage):
    _, cfg = _one(synth, stage, "AWS::SageMaker::EndpointConfig", "HeavyAsync")
    (variant,) = cfg["Properties"]["ProductionVariants"]
    (model_id,) = synth.resources(stage, "AWS::SageMaker::Model")
    assert ref_id(variant["ModelName"]) == model_id
    assert variant["InitialInstanceCount"] == 1     # CreateEndpoint needs one; autoscaling takes it to 0
    _, endpoint = _one(synth, stage, "AWS::SageMaker::Endpoint", "HeavyAsync")
    assert endpoint["Properties"]["EndpointName"] == f"cirrus-{stage}-heavy-async"


@pytest.mark.parametrize("stage", ASYNC_STAGES)
def test_async_endpoint_scales_to_zero_on_backlog_and_steps_out_of_zero(synth, stage):
    name = f"cirrus-{stage}-heavy-async"
    tid, target = _one(synth, stage, "AWS::ApplicationAutoScaling::ScalableTarget", "HeavyAsync")
    p = target["Properties"]
    assert p["MinCapacity"] == 0 and p["MaxCapacity"] >= 1
    assert p["ResourceId"] == f"endpoint/{name}/variant/AllTraffic"
    assert p["ScalableDimension"] == "sagemaker:variant:DesiredInstanceCount"
    policies = {k: v["Properties"] for k, v in synth.resources(stage, "AWS::ApplicationAutoScaling::ScalingPolicy").items()
                if ref_id(v["Properties"]["ScalingTargetId"]) == tid}
    by_type = {v["PolicyType"]: (k, v) for k, v in policies.items()}
    assert set(by_type) == {"TargetTrackingScaling", "StepScaling"}
    metric = by_type["TargetTrackingScaling"][1]["TargetTrackingScalingPolicyConfiguration"]["CustomizedMetricSpecification"]
    assert metric["MetricName"] == "ApproximateBacklogSizePerInstance" and metric["Namespace"] == "AWS/SageMaker"
    assert metric["Dimensions"] == [{"Name": "EndpointName", "Value": name}]
    step_id, step = by_type["StepScaling"]
    assert step["StepScalingPolicyConfiguration"]["StepAdjustments"] == [{"MetricIntervalLowerBound": 0, "ScalingAdjustment": 1}]
    (alarm,) = [a["Properties"] for a in synth.resources(stage, "AWS::CloudWatch::Alarm").values()
                if [ref_id(x) for x in a["Properties"].get("AlarmActions", [])] == [step_id]]
    assert alarm["MetricName"] == "HasBacklogWithoutCapacity" and alarm["Threshold"] == 1
    assert alarm["ComparisonOperator"] == "GreaterThanOrEqualToThreshold"
    assert alarm["Dimensions"] == [{"Name": "EndpointName", "Value": name}]


@pytest.mark.parametrize("stage", ASYNC_STAGES)
def test_generation_function_may_invoke_exactly_the_endpoints_and_the_api_reads_the_jobs(synth, stage):
    statements = _api_statements(synth, stage, "generation")
    sagemaker = [(a, st["Resource"]) for st in statements for a in as_list(st["Action"]) if a.startswith("sagemaker:")]
    assert sorted(a for a, _ in sagemaker) == ["sagemaker:InvokeEndpoint", "sagemaker:InvokeEndpointAsync",
                                               "sagemaker:InvokeEndpointWithResponseStream"]
    resource = dict(sagemaker)["sagemaker:InvokeEndpointAsync"]
    assert _join(resource)[1].endswith(f":endpoint/cirrus-{stage}-heavy-async")
    for sync in ("sagemaker:InvokeEndpoint", "sagemaker:InvokeEndpointWithResponseStream"):
        assert not _join(dict(sagemaker)[sync])[1].endswith("-async")
    bucket = _data_bucket(synth, stage)
    jobs = ([bucket], f"/{JOBS_PREFIX}*")

    def on_jobs(statements: list[dict], action: str) -> bool:
        return any(action in as_list(st["Action"]) and any(isinstance(r, dict) and "Fn::Join" in r and _join(r) == jobs
                                                           for r in as_list(st["Resource"])) for st in statements)
    api = _api_statements(synth, stage)
    # The generation function submits jobs; the api function's status route reads them.
    assert on_jobs(statements, "s3:PutObject") and not on_jobs(statements, "s3:GetObject")
    assert on_jobs(api, "s3:GetObject") and not on_jobs(api, "s3:PutObject")
    assert not [a for st in api for a in as_list(st["Action"]) if a.startswith("sagemaker:")]
    # Objects are SSE-KMS with the Cirrus key: one side encrypts the request, the other decrypts results.
    def kms(statements: list[dict]) -> set[str]:
        return {a for st in statements if ref_id(st["Resource"]) and ref_id(st["Resource"]).startswith("EncryptionKey")
                for a in as_list(st["Action"])}
    assert "kms:GenerateDataKey*" in kms(statements) and "kms:Decrypt" in kms(api)


@pytest.mark.parametrize("stage", ASYNC_STAGES)
def test_execution_role_reads_only_job_requests_and_writes_only_the_output_prefixes(synth, stage):
    role_id, _ = _one(synth, stage, "AWS::IAM::Role", "HeavyExecutionRole")
    _, pol = _one(synth, stage, "AWS::IAM::Policy", "HeavyAsyncExecutionJobAccess")
    assert [ref_id(r) for r in pol["Properties"]["Roles"]] == [role_id]
    bucket = _data_bucket(synth, stage)
    grants = {}
    for st in pol["Properties"]["PolicyDocument"]["Statement"]:
        for r in as_list(st["Resource"]):
            refs, path = _join(r)
            assert refs == [bucket], r
            grants[path] = sorted(as_list(st["Action"]))
    assert grants == {f"/{JOBS_PREFIX}genjob-*/request.json": ["s3:GetObject"],
                      f"/{JOBS_PREFIX}out/*": ["s3:AbortMultipartUpload", "s3:PutObject"],
                      f"/{JOBS_PREFIX}failed/*": ["s3:AbortMultipartUpload", "s3:PutObject"]}
    # SSE-KMS objects: the role decrypts requests and encrypts outputs with the one Cirrus key.
    _, default = _one(synth, stage, "AWS::IAM::Policy", "HeavyExecutionRoleDefaultPolicy")
    kms = {a for st in default["Properties"]["PolicyDocument"]["Statement"]
           if ref_id(st["Resource"]) and ref_id(st["Resource"]).startswith("EncryptionKey") for a in as_list(st["Action"])}
    assert {"kms:Decrypt", "kms:GenerateDataKey*"} <= kms


def test_generation_function_is_told_the_async_endpoint_only_where_it_exists(synth):
    def api_env(stage):
        _, fn = _one(synth, stage, "AWS::Lambda::Function", "Functionsgeneration")
        return fn["Properties"]["Environment"]["Variables"]
    assert api_env("prod")["CIRRUS_HEAVY_ASYNC_ENDPOINT_NAME"] == "cirrus-prod-heavy-async"
    assert api_env("citest")["CIRRUS_HEAVY_ASYNC_ENDPOINT_NAME"] == "cirrus-citest-heavy-async"
    assert "CIRRUS_HEAVY_ASYNC_ENDPOINT_NAME" not in api_env("dev")
    assert not [k for k in synth.templates["dev"]["Resources"] if k.startswith("HeavyAsync")]


@pytest.mark.parametrize("stage", ASYNC_STAGES)
def test_async_endpoint_failures_and_stuck_jobs_alarm_to_the_topic(synth, stage):
    topic = next(iter(synth.resources(stage, "AWS::SNS::Topic")))
    alarms = {a["Properties"]["MetricName"]: a["Properties"] for a in synth.resources(stage, "AWS::CloudWatch::Alarm").values()
              if a["Properties"].get("Dimensions") == [{"Name": "EndpointName", "Value": f"cirrus-{stage}-heavy-async"}]}
    for metric in ("InvocationFailures", "ApproximateAgeOfOldestRequest"):
        assert alarms[metric]["AlarmActions"] == [{"Ref": topic}], metric


def test_generation_job_objects_expire(synth):
    _, bucket = _one(synth, "prod", "AWS::S3::Bucket", "StorageData")
    rules = {r.get("Prefix"): r for r in bucket["Properties"]["LifecycleConfiguration"]["Rules"]}
    assert rules[JOBS_PREFIX]["ExpirationInDays"] >= 1 and rules[JOBS_PREFIX]["Status"] == "Enabled"


PINNED = {"model_revision": "0123456789abcdef0123456789abcdef01234567"}


def test_async_is_on_by_default_wherever_heavy_is():
    assert parse_stage({"s": {"heavy": {"enabled": True, **PINNED}}}, "s").heavy.async_enabled is True
    assert all_stages()["prod"].heavy.async_enabled is True


@pytest.mark.parametrize(("raw", "needle"), [
    ({"async_max_capacity": 0}, "heavy.async_max_capacity"),
    ({"async_max_concurrent_invocations": 0}, "heavy.async_max_concurrent_invocations"),
    ({"async_target_backlog_per_instance": 0}, "heavy.async_target_backlog_per_instance"),
    ({"async_enabled": "sometimes"}, "heavy.async_enabled"),
])
def test_bad_async_settings_stop_synth_naming_the_field(raw, needle):
    with pytest.raises(StageSettingsError, match=needle.replace(".", r"\.")):
        parse_stage({"s": {"heavy": {"enabled": True, **PINNED, **raw}}}, "s")


@pytest.mark.slow
def test_a_stage_can_turn_async_off_and_stays_nag_clean(tmp_path):
    """heavy on, async off: no async endpoint, no env var, no InvokeEndpointAsync, no job-prefix grant."""
    from infra.app import PLACEHOLDER_ASSETS, build_app
    from infra.settings import read_context

    stages = dict(read_context()[STAGES_CONTEXT_KEY],
                  noasync={"upload_bundles": False, "heavy": {"enabled": True, "async_enabled": False, **PINNED}})
    app = build_app(stages=["noasync"], outdir=str(tmp_path),
                    context={STAGES_CONTEXT_KEY: stages, PLACEHOLDER_ASSETS: "true"})
    app.synth()   # raises on any unacknowledged cdk-nag finding
    template = json.loads((tmp_path / "Cirrus-noasync.template.json").read_text())
    text = json.dumps(template)
    assert not [k for k in template["Resources"] if k.startswith("HeavyAsync")]
    assert "InvokeEndpointAsync" not in text and "CIRRUS_HEAVY_ASYNC_ENDPOINT_NAME" not in text
    assert f"/{JOBS_PREFIX}" not in text.replace(f'"{JOBS_PREFIX}"', "")   # only the lifecycle rule names it
    assert "cirrus-noasync-heavy" in text
