"""The bundle contract (functions/core/inference/manifest.py) on the real default bundles: verify, tamper, read."""
from __future__ import annotations

import shutil

import pytest

from functions.core.errors import BundleError
from functions.core.inference.manifest import MANIFEST_NAME, RUNTIME_FILES, Manifest, verify_bundle

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


@pytest.mark.parametrize("rel", RUNTIME_FILES)
def test_a_manifest_that_does_not_list_a_file_the_runtime_opens_is_refused(bundle_copy, rel):
    # Dropping the entry (the file stays, untouched) would let it be served unverified.
    manifest = Manifest.read(bundle_copy)
    del manifest.files[rel]
    manifest.write(bundle_copy)
    with pytest.raises(BundleError, match=f"does not list {rel}"):
        verify_bundle(bundle_copy)


def test_a_file_in_the_bundle_but_not_in_its_manifest_is_refused(bundle_copy):
    # onnxruntime opens external weights the graph names itself: an unlisted file is never ignored.
    (bundle_copy / "model.onnx.data").write_bytes(b"\0" * 64)
    with pytest.raises(BundleError, match="model.onnx.data is in the bundle but not in its manifest"):
        verify_bundle(bundle_copy)
    (bundle_copy / "model.onnx.data").unlink()
    (bundle_copy / "extra").mkdir()
    (bundle_copy / "extra" / "vocab.txt").write_text("x")
    with pytest.raises(BundleError, match="extra/vocab.txt is in the bundle"):
        verify_bundle(bundle_copy)


@pytest.mark.parametrize("rel", ["../outside.json", "/etc/passwd", "a/../../b", "./model.onnx", "manifest.json"])
def test_a_manifest_path_outside_the_bundle_is_refused(bundle_copy, rel):
    manifest = Manifest.read(bundle_copy)
    manifest.files[rel] = manifest.files["config.json"]
    with pytest.raises(BundleError, match="unsafe file path"):
        verify_bundle(bundle_copy, manifest)


def test_every_default_bundle_lists_every_file_it_holds(bundles_dir):
    # The cached bundles (.cache/bundles) keep verifying under the closed-folder rule: no re-export.
    for bundle in sorted(p for p in bundles_dir.iterdir() if (p / MANIFEST_NAME).is_file()):
        manifest = verify_bundle(bundle)
        assert set(RUNTIME_FILES) <= set(manifest.files)
