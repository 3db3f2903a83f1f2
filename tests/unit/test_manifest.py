"""The bundle contract (functions/core/inference/manifest.py) on the real default bundles: verify, tamper, read."""
from __future__ import annotations

import shutil

import pytest

from functions.core.errors import BundleError
from functions.core.inference.manifest import MANIFEST_NAME, Manifest, verify_bundle

NAME = "all-minilm-l6-v2"


@pytest.fixture
def bundle_copy(bundles_dir, tmp_path):
    target = tmp_path / NAME
    shutil.copytree(bundles_dir / NAME, target)
    return target


def test_default_bundle_verifies_and_reads_back_identically(bundle_copy):
    manifest = verify_bundle(bundle_copy)
    manifest.write(bundle_copy)
    assert Manifest.read(bundle_copy) == manifest


def test_a_tampered_file_fails_sha256_verification(bundle_copy):
    with open(bundle_copy / "model.onnx", "r+b") as fh:
        fh.seek(1_000_000)
        byte = fh.read(1)
        fh.seek(1_000_000)
        fh.write(bytes([byte[0] ^ 0xFF]))  # same size, one byte different
    with pytest.raises(BundleError, match="sha256 mismatch for model.onnx"):
        verify_bundle(bundle_copy)


def test_a_truncated_file_fails_on_size(bundle_copy):
    data = (bundle_copy / "tokenizer.json").read_bytes()
    (bundle_copy / "tokenizer.json").write_bytes(data[:-10])
    with pytest.raises(BundleError, match="size mismatch for tokenizer.json"):
        verify_bundle(bundle_copy)


def test_a_missing_file_is_named(bundle_copy):
    (bundle_copy / "config.json").unlink()
    with pytest.raises(BundleError, match="missing file config.json"):
        verify_bundle(bundle_copy)


def test_a_corrupt_or_absent_manifest_is_a_bundle_error(bundle_copy):
    (bundle_copy / MANIFEST_NAME).write_text("{not json")
    with pytest.raises(BundleError, match="manifest is invalid"):
        Manifest.read(bundle_copy)
    (bundle_copy / MANIFEST_NAME).unlink()
    with pytest.raises(BundleError, match="has no manifest.json"):
        verify_bundle(bundle_copy)


def test_default_bundles_carry_what_their_task_needs(bundles_dir):
    embed = Manifest.read(bundles_dir / NAME)
    assert (embed.task, embed.pooling, embed.normalize, embed.output_name) == (
        "feature-extraction", "mean", True, "last_hidden_state")
    assert embed.quantization.mode == "dynamic-int8" and embed.gate.passed
    assert embed.model_extra["sizes"]["int8_bytes"] == embed.files["model.onnx"].bytes
    clf = Manifest.read(bundles_dir / "cirrus-intent-minilm")
    assert clf.task == "text-classification" and clf.output_name == "logits"
    assert clf.labels == sorted(clf.labels) and len(clf.labels) == 8
    assert clf.gate.passed and clf.gate.metrics["label_agreement"] >= 0.98
