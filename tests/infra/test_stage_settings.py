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


PIN = "0123456789abcdef0123456789abcdef01234567"


@pytest.mark.parametrize(("heavy", "needle"), [
    ({}, "heavy.model_revision is not set"),
    ({"model_revision": "main"}, "model_revision must be a full commit sha"),
    ({"model_revision": PIN.upper()}, "model_revision must be a full commit sha"),
    ({"model_revision": PIN[:12]}, "model_revision must be a full commit sha"),
    ({"model_s3_prefix": "models/qwen/"}, "must be a registry version prefix"),
    ({"model_s3_prefix": "weights/qwen/1/"}, "must be a registry version prefix"),
    ({"model_s3_prefix": "models/qwen/1/", "model_revision": PIN, "model_manifest_sha256": "a" * 64},
     "set one of them"),
    ({"model_revision": PIN, "network_isolation": True}, "network_isolation needs model_s3_prefix"),
])
def test_a_heavy_model_that_is_not_pinned_stops_synth(heavy, needle):
    with pytest.raises(StageSettingsError, match=needle):
        parse_stage({"s": {"heavy": {"enabled": True, **heavy}}}, "s")


def test_a_heavy_model_is_pinned_by_revision_or_s3_copy_or_explicitly_unpinned():
    pinned = parse_stage({"s": {"heavy": {"enabled": True, "model_revision": PIN}}}, "s").heavy
    assert pinned.model_revision == PIN and pinned.isolated is False
    sha = {"model_manifest_sha256": "a" * 64}
    copied = parse_stage({"s": {"heavy": {"enabled": True, "model_s3_prefix": "models/qwen/2026-01-01/", **sha}}},
                         "s").heavy
    assert copied.isolated is True   # the default for a model that needs no download
    assert parse_stage({"s": {"heavy": {"enabled": True, "model_s3_prefix": "models/qwen/1/", **sha,
                                        "network_isolation": False}}}, "s").heavy.isolated is False
    unpinned = parse_stage({"s": {"heavy": {"enabled": True, "allow_unpinned_model": True}}}, "s").heavy
    assert unpinned.model_revision is None and unpinned.isolated is False
    # A stage without the endpoint needs no pin.
    assert parse_stage({"s": {}}, "s").heavy.enabled is False
    assert all_stages()["prod"].heavy.model_revision is not None


def test_every_function_has_a_reserved_concurrency_from_its_spec_or_the_stage():
    from infra.function_specs import FUNCTIONS

    stage = parse_stage({"s": {"functions": {"api": {"memory_mb": 4096}}}}, "s")
    for spec in FUNCTIONS:
        assert stage.functions.of(spec.id).reserved_concurrency == spec.reserved_concurrency
    # Setting one key of a function keeps its spec for the others (not the generic defaults).
    api = next(f for f in FUNCTIONS if f.id == "api")
    assert (stage.functions.api.memory_mb, stage.functions.api.timeout_s) == (4096, api.timeout_s)
    for name, settings in all_stages().items():
        for spec in FUNCTIONS:
            assert settings.functions.of(spec.id).reserved_concurrency >= 1, (name, spec.id)


@pytest.mark.parametrize(("functions", "needle"), [
    ({"reserved_concurrency_budget": 50}, "more than reserved_concurrency_budget 50"),
    ({"api": {"reserved_concurrency": 5000}}, "more than reserved_concurrency_budget 900"),
    ({"batch_worker": {"reserved_concurrency": 1}}, "batch_worker.reserved_concurrency must be at least 2"),
    ({"batch_dlq": {"reserved_concurrency": 3}}, "batch_dlq.reserved_concurrency must be at least 4"),
    ({"api": {"reserved_concurrency": None}}, "functions.api.reserved_concurrency"),
])
def test_concurrency_outside_the_budget_stops_synth(functions, needle):
    with pytest.raises(StageSettingsError, match=needle):
        parse_stage({"s": {"functions": functions}}, "s")


@pytest.mark.parametrize(("origins", "needle"), [
    (["http://localhost:*"], "exact origins"),
    (["https://app.example.com/"], "exact origins"),
    (["app.example.com"], "exact origins"),
    (["*", "https://app.example.com"], "list it alone"),
])
def test_bad_cors_origins_stop_synth(origins, needle):
    with pytest.raises(StageSettingsError, match=needle):
        parse_stage({"s": {"api": {"cors_origins": origins}}}, "s")


def test_cors_is_off_unless_a_stage_lists_origins():
    assert parse_stage({"s": {}}, "s").api.cors.enabled is False
    assert all_stages()["prod"].api.cors.enabled is False
    dev = all_stages()["dev"].api.cors
    assert dev.enabled and all(o.startswith(("http://localhost:", "http://127.0.0.1:")) for o in dev.origins)


def test_a_model_copy_needs_its_manifest_pin():
    base = {"enabled": True, "model_s3_prefix": "models/qwen/1/"}
    with pytest.raises(StageSettingsError, match="needs model_manifest_sha256"):
        parse_stage({"s": {"heavy": base}}, "s")
    with pytest.raises(StageSettingsError, match="64 lowercase hex"):
        parse_stage({"s": {"heavy": {**base, "model_manifest_sha256": "abc"}}}, "s")
    assert parse_stage({"s": {"heavy": {**base, "model_manifest_sha256": "a" * 64}}}, "s").heavy.isolated
