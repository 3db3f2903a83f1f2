"""Streaming in the synthesized stacks: STREAM transfer mode on the generation routes, the invoke
permission, the generation function's runtime and timeouts; everything else stays buffered on api."""
from __future__ import annotations

import re

import pytest

from infra.function_specs import STREAM_EXEC_WRAPPER
from infra.resources import DOCS_ROUTES, ROUTES, STREAM_FUNCTION, STREAMED_ROUTES
from infra.settings import StageSettingsError, all_stages, parse_stage
from template_support import ref_id

STAGES = ("dev", "prod", "citest")


def _function_id(synth, stage: str, function: str) -> str:
    # CDK logical ids: the construct path without separators + an 8-digit hex hash.
    (lid,) = [k for k in synth.resources(stage, "AWS::Lambda::Function")
              if re.fullmatch(f"Functions{function.replace('_', '')}[0-9A-F]{{8}}", k)]
    return lid


def _path_of(synth, stage: str, resource_id: str) -> str:
    resources = synth.templates[stage]["Resources"]
    parts = []
    while resource_id in resources and resources[resource_id]["Type"] == "AWS::ApiGateway::Resource":
        props = resources[resource_id]["Properties"]
        parts.append(props["PathPart"])
        resource_id = ref_id(props["ParentId"]) or ""
    return "/" + "/".join(reversed(parts))


def _methods(synth, stage: str) -> dict[tuple[str, str], dict]:
    out = {}
    for m in synth.resources(stage, "AWS::ApiGateway::Method").values():
        p = m["Properties"]
        if p["HttpMethod"] == "OPTIONS":
            continue
        out[(p["HttpMethod"], _path_of(synth, stage, ref_id(p["ResourceId"])))] = p["Integration"]
    return out


def _uri_function(integration: dict) -> tuple[str, str]:
    parts = integration["Uri"]["Fn::Join"][1]
    return next(ref_id(p) for p in parts if isinstance(p, dict) and "Fn::GetAtt" in p), parts[-1]


@pytest.mark.parametrize("stage", STAGES)
def test_generation_routes_stream_from_the_generation_function_and_the_rest_stay_buffered(synth, stage):
    methods = _methods(synth, stage)
    docs = set(DOCS_ROUTES) if stage == "dev" else set()   # api.docs: on in dev only
    assert set(methods) == set(ROUTES) | docs
    generation = _function_id(synth, stage, STREAM_FUNCTION)
    settings = all_stages()[stage] if stage != "citest" else None
    for route, integration in methods.items():
        fn, tail = _uri_function(integration)
        if route in STREAMED_ROUTES:
            assert integration["ResponseTransferMode"] == "STREAM", route
            assert tail == "/response-streaming-invocations"   # InvokeWithResponseStream
            assert integration["Uri"]["Fn::Join"][1][-3] == ":lambda:path/2021-11-15/functions/"
            assert fn == generation, route
            if settings is not None:
                assert integration["TimeoutInMillis"] == settings.functions.generation.timeout_s * 1000
            assert integration["TimeoutInMillis"] <= 15 * 60 * 1000
        else:
            assert integration.get("ResponseTransferMode", "BUFFERED") == "BUFFERED", route
            assert tail == "/invocations" and fn != generation, route
            assert integration.get("TimeoutInMillis", 29000) <= 29000


@pytest.mark.parametrize("stage", STAGES)
def test_api_gateway_may_invoke_the_generation_function_for_exactly_its_routes(synth, stage):
    generation = _function_id(synth, stage, STREAM_FUNCTION)
    allowed = []
    for perm in synth.resources(stage, "AWS::Lambda::Permission").values():
        p = perm["Properties"]
        if ref_id(p["FunctionName"]) != generation:
            continue
        # InvokeWithResponseStream is authorised by lambda:InvokeFunction (Lambda API reference).
        assert p["Action"] == "lambda:InvokeFunction" and p["Principal"] == "apigateway.amazonaws.com"
        allowed.append(p["SourceArn"]["Fn::Join"][1][-1])
    assert {a for a in allowed if "test-invoke-stage" not in a} == {
        f"/{verb}{path}" for verb, path in STREAMED_ROUTES}


@pytest.mark.parametrize("stage", STAGES)
def test_generation_function_runs_the_streaming_runtime_with_the_stage_timeout(synth, stage):
    fn = synth.resources(stage, "AWS::Lambda::Function")[_function_id(synth, stage, STREAM_FUNCTION)]["Properties"]
    assert fn["Environment"]["Variables"]["AWS_LAMBDA_EXEC_WRAPPER"] == STREAM_EXEC_WRAPPER
    assert fn["Handler"] == "functions.handlers.generation.handler"
    timeout = (all_stages()[stage].functions.generation.timeout_s if stage != "citest" else 300)
    assert fn["Timeout"] == timeout
    api = synth.resources(stage, "AWS::Lambda::Function")[_function_id(synth, stage, "api")]["Properties"]
    assert "AWS_LAMBDA_EXEC_WRAPPER" not in api["Environment"]["Variables"] and api["Timeout"] <= 29


def test_the_generation_timeout_is_capped_at_lambdas_15_minutes():
    with pytest.raises(StageSettingsError, match="functions.generation.timeout_s"):
        parse_stage({"x": {"functions": {"generation": {"timeout_s": 901}}}}, "x")
