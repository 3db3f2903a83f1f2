"""Least privilege in the synthesized stacks: prefix-conditioned listing, KMS service statements with
source conditions, function environments under the stage key, bounded concurrency, the pinned GPU model."""
from __future__ import annotations

import pytest

from infra.function_specs import FUNCTIONS
from infra.settings import StageSettings, all_stages
from template_support import CITEST_MANIFEST_SHA256, CITEST_MODEL_PREFIX, CITEST_STAGE, STAGES, as_list, ref_id

PROD_REVISION = "989aa7980e4cf806f80c7fef2b1adb7bc71aa306"


def _stage(stage: str) -> StageSettings:
    return all_stages()[stage] if stage != "citest" else StageSettings(name="citest", **CITEST_STAGE)


def _policies_of_role(synth, stage: str, role_prefix: str) -> list[dict]:
    out = []
    for pol in {**synth.resources(stage, "AWS::IAM::Policy")}.values():
        roles = [ref_id(r) for r in pol["Properties"].get("Roles", [])]
        if any(r and r.startswith(role_prefix) for r in roles):
            out.extend(pol["Properties"]["PolicyDocument"]["Statement"])
    return out


def _object_prefix(resource) -> str | None:
    """``models/`` for ``{"Fn::Join": ["", [<bucket arn>, "/models/*"]]}``."""
    if isinstance(resource, dict) and "Fn::Join" in resource:
        tail = resource["Fn::Join"][1][-1]
        if isinstance(tail, str) and tail.startswith("/") and tail.endswith("*"):
            return tail[1:-1]
    return None


@pytest.mark.parametrize("stage", STAGES)
def test_functions_list_only_the_prefixes_they_read(synth, stage):
    for spec in FUNCTIONS:
        statements = _policies_of_role(synth, stage, f"Functions{spec.id.replace('_', '')}role")
        assert statements, spec.id
        actions = {a for st in statements for a in as_list(st["Action"])}
        assert not {a for a in actions if a.startswith("s3:List") and a not in ("s3:ListBucket",
                                                                                "s3:ListBucketVersions")}, spec.id
        assert "s3:GetBucket*" not in actions and "s3:GetObject*" not in actions, spec.id
        read = {(ref_id(_bucket_of(r)), _object_prefix(r)) for st in statements
                if "s3:GetObject" in as_list(st["Action"]) for r in as_list(st["Resource"])}
        listed = set()
        for st in statements:
            if "s3:ListBucket" in as_list(st["Action"]):
                # A listing is allowed only with a prefix, and only inside a prefix the function reads.
                assert set(st["Condition"]) == {"StringLike"}, (spec.id, st)
                prefixes = as_list(st["Condition"]["StringLike"]["s3:prefix"])
                assert all(p.endswith("*") for p in prefixes)
                listed |= {(ref_id(r), p[:-1]) for r in as_list(st["Resource"]) for p in prefixes}
        assert listed == read, spec.id
        # Versions are listed only to delete them (a rejected upload): with a prefix the function may delete.
        deletable = {(ref_id(_bucket_of(r)), _object_prefix(r)) for st in statements
                     if "s3:DeleteObject*" in as_list(st["Action"]) for r in as_list(st["Resource"])}
        for st in statements:
            if "s3:ListBucketVersions" in as_list(st["Action"]):
                prefixes = as_list(st["Condition"]["StringLike"]["s3:prefix"])
                assert {(ref_id(r), p[:-1]) for r in as_list(st["Resource"]) for p in prefixes} <= deletable, spec.id


def _bucket_of(resource):
    return resource["Fn::Join"][1][0] if isinstance(resource, dict) and "Fn::Join" in resource else resource


def test_the_api_function_lists_models_and_job_outputs_with_a_prefix_condition(synth):
    statements = _policies_of_role(synth, "dev", "Functionsapirole")
    conditions = sorted(p for st in statements if "s3:ListBucket" in as_list(st["Action"])
                        for p in as_list(st["Condition"]["StringLike"]["s3:prefix"]))
    assert conditions == ["jobs/output/*", "models/*", "openai/batches/*", "openai/files/*"]


@pytest.mark.parametrize("stage", STAGES)
def test_service_statements_on_the_key_carry_source_conditions(synth, stage):
    (key,) = synth.resources(stage, "AWS::KMS::Key").values()
    services = {}
    for st in key["Properties"]["KeyPolicy"]["Statement"]:
        principal = st["Principal"].get("Service")
        if principal is not None:
            services["logs" if not isinstance(principal, str) else principal] = st["Condition"]
    assert set(services) == {"logs", "s3.amazonaws.com", "cloudwatch.amazonaws.com"}
    logs_arn = services["logs"]["ArnLike"]["kms:EncryptionContext:aws:logs:arn"]
    parts = logs_arn["Fn::Join"][1]
    assert parts[-1].endswith(f":log-group:Cirrus-{stage}-*")     # this stack's groups, not the account's
    alarms = services["cloudwatch.amazonaws.com"]
    assert alarms["StringEquals"]["aws:SourceAccount"] == {"Ref": "AWS::AccountId"}
    assert alarms["ArnLike"]["aws:SourceArn"]["Fn::Join"][1][-1].endswith(":alarm:*")
    assert services["s3.amazonaws.com"]["StringEquals"]["aws:SourceAccount"] == {"Ref": "AWS::AccountId"}
    # Every log group the stack makes is named after the stack, so the condition admits all of them.
    for lid, group in synth.resources(stage, "AWS::Logs::LogGroup").items():
        assert "LogGroupName" not in group["Properties"], lid


@pytest.mark.parametrize("stage", STAGES)
def test_every_function_encrypts_its_environment_with_the_stage_key_and_has_bounded_concurrency(synth, stage):
    settings = _stage(stage)
    fns = {k: v for k, v in synth.resources(stage, "AWS::Lambda::Function").items() if k.startswith("Functions")}
    assert len(fns) == len(FUNCTIONS)
    total = 0
    for spec in FUNCTIONS:
        (props,) = [v["Properties"] for k, v in fns.items() if k.startswith(f"Functions{spec.id.replace('_', '')}")]
        assert ref_id(props["KmsKeyArn"]).startswith("EncryptionKey"), spec.id
        assert props["ReservedConcurrentExecutions"] == settings.functions.of(spec.id).reserved_concurrency
        total += props["ReservedConcurrentExecutions"]
    assert total <= settings.functions.reserved_concurrency_budget


@pytest.mark.parametrize("stage", STAGES)
def test_queue_pollers_never_invoke_past_the_consumers_reservation(synth, stage):
    settings = _stage(stage)
    fns = {k: v["Properties"] for k, v in synth.resources(stage, "AWS::Lambda::Function").items()
           if k.startswith("Functions")}
    per_function: dict[str, int] = {}
    mappings = synth.resources(stage, "AWS::Lambda::EventSourceMapping").values()
    for m in mappings:
        fid = m["Properties"]["FunctionName"]["Ref"]
        per_function[fid] = per_function.get(fid, 0) + m["Properties"]["ScalingConfig"]["MaximumConcurrency"]
        assert m["Properties"]["ScalingConfig"]["MaximumConcurrency"] >= 2
    assert per_function
    for fid, most in per_function.items():
        assert most <= fns[fid]["ReservedConcurrentExecutions"], fid


def _model(synth, stage: str) -> dict:
    (model,) = synth.resources(stage, "AWS::SageMaker::Model").values()
    return model["Properties"]


def test_prod_serves_the_gpu_model_at_a_pinned_hub_revision(synth):
    props = _model(synth, "prod")
    env = props["PrimaryContainer"]["Environment"]
    assert env["HF_MODEL_ID"] == "Qwen/Qwen2.5-1.5B-Instruct"
    assert env["HF_MODEL_REVISION"] == PROD_REVISION == all_stages()["prod"].heavy.model_revision
    # The container downloads from the hub, so it needs its network.
    assert props.get("EnableNetworkIsolation") is False
    assert "ModelDataSource" not in props["PrimaryContainer"]


def test_a_model_served_from_the_artifacts_bucket_runs_network_isolated(synth):
    props = _model(synth, "citest")
    container = props["PrimaryContainer"]
    assert props["EnableNetworkIsolation"] is True
    assert container["Environment"]["HF_MODEL_ID"] == "/opt/ml/model"
    assert not {"HF_MODEL_REVISION", "OPTION_REVISION"} & set(container["Environment"])
    source = container["ModelDataSource"]["S3DataSource"]
    assert source["S3DataType"] == "S3Prefix" and source["CompressionType"] == "None"
    assert source["S3Uri"]["Fn::Join"][1][-1] == f"/{CITEST_MODEL_PREFIX}"
    # Its role reads and lists exactly that version's prefix.
    statements = _policies_of_role(synth, "citest", "HeavyExecutionRole")
    lists = [st for st in statements if "s3:ListBucket" in as_list(st["Action"])]
    assert [st["Condition"] for st in lists] == [{"StringLike": {"s3:prefix": [f"{CITEST_MODEL_PREFIX}*"]}}]
    gets = [_object_prefix(r) for st in statements if "s3:GetObject" in as_list(st["Action"])
            for r in as_list(st["Resource"]) if _object_prefix(r) is not None]
    assert CITEST_MODEL_PREFIX in gets


# --- CORS ------------------------------------------------------------------------------------------
def _resource_paths(synth, stage: str) -> dict[str, str]:
    """logical id of each ApiGateway::Resource -> its full path."""
    resources = synth.resources(stage, "AWS::ApiGateway::Resource")
    paths: dict[str, str] = {}

    def path_of(lid: str) -> str:
        if lid not in paths:
            props = resources[lid]["Properties"]
            parent = ref_id(props["ParentId"])
            paths[lid] = (path_of(parent) if parent in resources else "") + "/" + props["PathPart"]
        return paths[lid]

    for lid in resources:
        path_of(lid)
    return paths


@pytest.mark.parametrize("stage", STAGES)
def test_preflight_exists_on_every_route_exactly_where_the_stage_allows_origins(synth, stage):
    from functions.core.contract import CORS_ALLOW_HEADERS
    from infra.resources import ROUTES

    origins = _stage(stage).api.cors_origins
    paths = _resource_paths(synth, stage)
    options = [m["Properties"] for m in synth.resources(stage, "AWS::ApiGateway::Method").values()
               if m["Properties"]["HttpMethod"] == "OPTIONS"]
    if not origins:
        assert options == []
        return
    assert sorted(paths[ref_id(o["ResourceId"])] for o in options) == sorted({p for _, p in ROUTES})
    for o in options:
        assert o["AuthorizationType"] == "NONE" and o["ApiKeyRequired"] is False
        assert o["Integration"]["Type"] == "MOCK"          # API Gateway answers; no function runs
        (answer,) = o["Integration"]["IntegrationResponses"]
        assert answer["StatusCode"] == "204"
        params = answer["ResponseParameters"]
        assert params["method.response.header.Access-Control-Allow-Headers"] == f"'{','.join(CORS_ALLOW_HEADERS)}'"
        assert params["method.response.header.Access-Control-Allow-Origin"] == f"'{origins[0]}'"
        template = answer["ResponseTemplates"]["application/json"]
        assert all(f'$origin == "{o}"' in template for o in origins[1:])


@pytest.mark.parametrize("stage", STAGES)
def test_gateway_responses_carry_cors_headers_where_the_stage_allows_origins(synth, stage):
    origins = _stage(stage).api.cors_origins
    for lid, gr in synth.resources(stage, "AWS::ApiGateway::GatewayResponse").items():
        params = gr["Properties"]["ResponseParameters"]
        if not origins:
            assert not [k for k in params if "Access-Control" in k], lid
            continue
        assert params["gatewayresponse.header.Access-Control-Allow-Origin"] == "method.request.header.Origin"
        assert "Retry-After" in params["gatewayresponse.header.Access-Control-Expose-Headers"]
        assert params["gatewayresponse.header.Vary"] == "'Origin'"


@pytest.mark.parametrize("stage", STAGES)
def test_the_http_functions_receive_the_stage_origins(synth, stage):
    origins = ",".join(_stage(stage).api.cors_origins)
    fns = {k: v["Properties"] for k, v in synth.resources(stage, "AWS::Lambda::Function").items()
           if k.startswith("Functions")}
    for prefix in ("Functionsapi", "Functionsgeneration"):
        (props,) = [p for k, p in fns.items() if k.startswith(prefix)]
        assert props["Environment"]["Variables"]["CIRRUS_CORS_ORIGINS"] == origins
    (auth,) = [p for k, p in fns.items() if k.startswith("Functionsauthorizer")]
    assert "CIRRUS_CORS_ORIGINS" not in auth["Environment"]["Variables"]


def test_a_model_copy_is_checked_against_its_pin_before_the_model_is_created(synth):
    from infra.constructs.heavy_endpoint import WEIGHTS_CHECK_SOURCE

    template = synth.templates["citest"]["Resources"]
    (check_id, check), = [(k, v) for k, v in template.items() if v["Type"] == "Custom::CirrusWeightsCheck"]
    props = check["Properties"]
    assert props["Prefix"] == CITEST_MODEL_PREFIX and props["ManifestSha256"] == CITEST_MANIFEST_SHA256
    fn = template[ref_id(props["ServiceToken"])]["Properties"]
    assert fn["Code"]["ZipFile"] == WEIGHTS_CHECK_SOURCE.read_text() and fn["Handler"] == "index.handler"
    assert len(fn["Code"]["ZipFile"]) <= 4096          # CloudFormation's limit for inline code
    (model_id,) = [k for k, v in template.items() if v["Type"] == "AWS::SageMaker::Model"]
    assert check_id in template[model_id]["DependsOn"]
    statements = _policies_of_role(synth, "citest", "HeavyWeightsCheckRole")
    lists = [st["Condition"] for st in statements if "s3:ListBucket" in as_list(st["Action"])]
    assert lists == [{"StringLike": {"s3:prefix": [f"{CITEST_MODEL_PREFIX}*"]}}]
    # A hub model (prod) has no copy to check.
    assert not [v for v in synth.templates["prod"]["Resources"].values() if v["Type"] == "Custom::CirrusWeightsCheck"]
