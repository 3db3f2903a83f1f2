"""Quantization profiles of the default embedding bundle: each has its own gate, recorded in the manifest."""
from __future__ import annotations

import pytest

from functions.core.inference.manifest import verify_bundle
from model_export.config import QuantizeConfig
from model_export.defaults import DEFAULT_PROFILE, PROFILE_ENV, PROFILES, recipes, selected_profile
from model_export.errors import ExportError


def test_shipped_bundle_records_its_profile_and_passed_the_strict_gate(bundles_dir):
    manifest = verify_bundle(bundles_dir / "all-minilm-l6-v2")
    profile = manifest.model_extra["profile"]
    assert profile["name"] == DEFAULT_PROFILE == "accurate"
    assert manifest.gate.passed and not manifest.gate.forced
    assert manifest.gate.thresholds == {"mean_cosine": 0.995, "p1_cosine": 0.98, "nn_agreement": 0.98}
    m = manifest.gate.metrics
    assert m["mean_cosine"] >= 0.995 and m["p1_cosine"] >= 0.98 and m["nn_agreement"] >= 0.98
    assert manifest.quantization.preset == "u8s8-7bit-fused"


def test_profiles_differ_in_recipe_and_gate_and_switch_the_bundle_identity(monkeypatch):
    accurate, fast = PROFILES["accurate"], PROFILES["fast"]
    assert accurate.quantize.exclude and not fast.quantize.exclude
    assert fast.thresholds["mean_cosine"].value < accurate.thresholds["mean_cosine"].value
    ids = {name: recipes(name)["all-minilm-l6-v2"].identity() for name in PROFILES}
    assert ids["accurate"] != ids["fast"]  # switching profile rebuilds the bundle
    monkeypatch.setenv(PROFILE_ENV, "fast")
    assert selected_profile().name == "fast"
    assert selected_profile("accurate").name == "accurate"  # an explicit choice wins


def test_unknown_profile_is_a_one_line_error(monkeypatch):
    monkeypatch.setenv(PROFILE_ENV, "turbo")
    with pytest.raises(ExportError, match="unknown quantization profile 'turbo'.*accurate, fast"):
        selected_profile()


def test_full_range_s8_is_refused_for_x86_but_allowed_for_arm64():
    with pytest.raises(ExportError, match="not safe on x86_64 without VNNI"):
        QuantizeConfig(arch="x86_64", weights="s8", reduce_range=False)
    assert QuantizeConfig(arch="arm64", reduce_range=False).preset == "u8s8"
    assert QuantizeConfig(weights="u8", reduce_range=False).preset == "u8u8"
