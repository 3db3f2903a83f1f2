"""Stage settings from cdk.json: the shipped stages parse, bad values fail with a message naming them."""
from __future__ import annotations

import pytest

from functions.core.contract import DEFAULT_QUANT_PROFILE
from functions.core.inference.manifest import Manifest
from infra.app import resolve_bundles
from infra.settings import STAGES_CONTEXT_KEY, StageSettingsError, all_stages, load_stage, parse_stage, read_context


def test_cdk_json_defines_valid_dev_and_prod_stages():
    stages = all_stages()
    assert {"dev", "prod"} <= set(stages)
    assert stages["dev"].heavy.enabled is False
    assert stages["prod"].heavy.enabled and stages["prod"].heavy.instance_type == "ml.g5.xlarge"
    assert stages["prod"].removal_policy == "retain" and stages["prod"].api.waf is True



def test_only_dev_serves_the_random_weight_demo_generator():
    stages = all_stages()
    assert stages["dev"].generation_models == ("smollm2-135m-instruct",)
    assert stages["prod"].generation_models == () and "smollm2-135m-instruct" not in stages["prod"].models
    assert parse_stage({"new": {}}, "new").generation_models == ()  # a stage must opt in

def test_dev_and_prod_deploy_the_accurate_profile_and_a_new_stage_defaults_to_it():
    stages = all_stages()
    assert stages["dev"].quantization_profile == stages["prod"].quantization_profile == "accurate"
    assert parse_stage({"new": {}}, "new").quantization_profile == DEFAULT_QUANT_PROFILE == "accurate"
    assert parse_stage({"new": {"quantization_profile": "fast"}}, "new").quantization_profile == "fast"


def test_synth_uploads_bundles_only_in_the_stages_profile(bundles_dir):
    # The real default bundles are built in the default profile; dev/prod synth with them (tests/infra's
    # session synth). A stage that asks for the other profile is refused with the command that fixes it.
    built = Manifest.read(bundles_dir / "all-minilm-l6-v2").model_extra["profile"]["name"]
    other = "fast" if built == "accurate" else "accurate"
    same = parse_stage({"s": {"bundles_dir": str(bundles_dir), "quantization_profile": built}}, "s")
    assert [b.name for b in resolve_bundles(same, skip=False)] == list(same.models)
    wrong = parse_stage({"s": {"bundles_dir": str(bundles_dir), "quantization_profile": other}}, "s")
    with pytest.raises(StageSettingsError) as err:
        resolve_bundles(wrong, skip=False)
    assert f"quantization_profile '{other}'" in str(err.value) and f"all-minilm-l6-v2 ({built})" in str(err.value)
    assert f"make bundles PROFILE={other}" in str(err.value)
    assert resolve_bundles(wrong, skip=True) == []  # nothing uploaded, nothing to check


def test_default_stage_is_the_context_stage():
    assert load_stage().name == read_context()["stage"]


@pytest.mark.parametrize(("raw", "needle"), [
    ({"architecture": "x86"}, "architecture"),
    ({"functions": {"api": {"memory_mb": 64}}}, "functions.api.memory_mb"),
    ({"functions": {"api": {"timeout_s": 60}}}, "functions.api.timeout_s must be <= 29"),
    ({"functions": {"batch_worker": {"reserved_concurrency": 0}}}, "functions.batch_worker.reserved_concurrency"),
    ({"functions": {"batch_worker": {"timeout_s": 901}}}, "functions.batch_worker.timeout_s"),
    ({"log_retention_days": 10}, "log_retention_days must be one of"),
    ({"removal_policy": "keep"}, "removal_policy"),
    ({"api": {"throttle_rate_limit": 0}}, "api.throttle_rate_limit"),
    ({"heavy": {"instance_type": "ml.m5.xlarge"}}, "has no GPU"),
    ({"heavy": {"instance_type": "g5.xlarge"}}, "must look like 'ml.g5.xlarge'"),
    ({"heavy": {"min_capacity": 3, "max_capacity": 2}}, "min_capacity (3) exceeds max_capacity (2)"),
    ({"heavy": {"min_capacity": 0, "scale_to_zero": False}}, "needs scale_to_zero"),
    ({"heavy": {"image": "vllm"}}, "heavy.image"),
    ({"models": ["Bad Name"]}, "model names must be lowercase"),
    ({"models": ["a", "a"]}, "listed twice"),
    ({"default_embedding_model": "nope"}, "default_embedding_model 'nope' is not in models"),
    ({"generation_models": ["cirrus-tiny-gpt2"]}, "generation_models ['cirrus-tiny-gpt2'] are not in models"),
    ({"account": "123"}, "account must be 12 digits"),
    ({"quantization_profile": "turbo"}, "quantization_profile: Input should be 'accurate' or 'fast'"),
    ({"memory": 1024}, "memory: Extra inputs are not permitted"),
])
def test_bad_stage_value_is_rejected_with_a_message_naming_it(raw, needle):
    with pytest.raises(StageSettingsError) as err:
        parse_stage({"bad": raw}, "bad")
    message = str(err.value)
    assert "stage 'bad'" in message
    assert needle in message


def test_unknown_stage_lists_the_defined_ones():
    with pytest.raises(StageSettingsError, match="unknown stage 'qa'; cdk.json defines: dev, prod"):
        parse_stage(read_context()[STAGES_CONTEXT_KEY], "qa")


def test_settings_module_does_not_need_the_cdk():
    import subprocess
    import sys
    code = ("import sys; import infra.settings, infra.resources, infra.assets; "
            "assert not any(m.startswith(('aws_cdk', 'jsii', 'cdk_nag')) for m in sys.modules), 'cdk imported'")
    subprocess.run([sys.executable, "-c", code], check=True)
