"""The ONNX runtime on the real default bundles: batching, pooling per manifest, truncation, threads."""
from __future__ import annotations

import shutil

import numpy as np
import pytest

from functions.core.errors import BundleError, ContextLengthExceeded, ValidationFailed
from functions.core.inference.manifest import Manifest, file_entry
from functions.core.inference.encoder import OnnxModel, cpu_count, require_task
from light_support import CLASSIFIER, EMBEDDER, cosine, direct_embeddings


@pytest.fixture(scope="module")
def embedder(local_store):
    return local_store.get(EMBEDDER)


@pytest.fixture(scope="module")
def classifier(local_store):
    return local_store.get(CLASSIFIER)


def test_session_uses_one_thread_per_available_cpu(embedder):
    assert embedder.threads == cpu_count() >= 1


def test_batches_are_sorted_by_length_and_padded_to_the_longest_member(embedder):
    texts = ["a " * 60, "b", "c " * 5, "d " * 59, "e"]
    lengths = embedder.tokenize(texts).token_counts
    model = OnnxModel(embedder.bundle_dir, embedder.manifest, batch_size=2)
    batches = list(model._batches(model.tokenize(texts)))
    widths = [feeds["input_ids"].shape[1] for _, feeds in batches]
    members = [sorted(lengths[i] for i in idx) for idx, _ in batches]
    assert sorted(i for idx, _ in batches for i in idx) == list(range(len(texts)))
    assert widths == [max(m) for m in members] == sorted(widths)  # shortest batches first, no extra padding
    for idx, feeds in batches:
        assert (feeds["attention_mask"].sum(1) == [lengths[i] for i in idx]).all()


def test_embeddings_come_back_in_request_order(embedder, bundles_dir):
    texts = ["a long sentence about trains, stations and timetables " * 3, "cat", "the weather is nice today"]
    vectors, counts = embedder.embed(texts)
    want = direct_embeddings(bundles_dir / EMBEDDER, texts)
    assert np.argmax(vectors @ want.T, axis=1).tolist() == [0, 1, 2]
    assert counts == embedder.tokenize(texts).token_counts
    assert vectors.dtype == np.float32


def test_max_length_truncates_or_rejects_per_setting(embedder):
    long_text = "token " * (embedder.manifest.max_length * 2)
    _, counts = embedder.embed([long_text, "short"])
    assert counts[0] == embedder.manifest.max_length
    with pytest.raises(ContextLengthExceeded) as exc:
        embedder.embed(["short", long_text], overflow="reject")
    assert (exc.value.status, exc.value.code, exc.value.param) == (400, "context_length_exceeded", "input")


def test_one_text_is_tokenized_as_the_batch_call_would(embedder):
    # A single text takes the tokenizer's one-text call (no thread-pool hand-off): same ids, same
    # truncation at max_length, same overflow report.
    long_text = "parcel " * 600
    for text in ("Where is my parcel? 東京 😀", long_text):
        one = embedder.tokenize([text]).encodings[0]
        batched = embedder.tokenize([text, "x"]).encodings[0]
        assert one.ids == batched.ids and one.attention_mask == batched.attention_mask
    assert len(embedder.tokenize([long_text]).encodings[0].ids) == embedder.manifest.max_length
    with pytest.raises(ContextLengthExceeded):
        embedder.tokenize([long_text], overflow="reject")


def test_pooling_and_normalisation_follow_the_manifest(embedder, tmp_path):
    # The same graph with pooling "cls" and no normalisation must give the first token's raw state.
    bundle = tmp_path / "b"
    shutil.copytree(embedder.bundle_dir, bundle)
    manifest = embedder.manifest.model_copy(update={"pooling": "cls", "normalize": False})
    cls_model = OnnxModel(bundle, manifest)
    text = ["pooling check sentence"]
    ids = np.array([cls_model.tokenize(text).encodings[0].ids])
    hidden = cls_model._run({"input_ids": ids, "attention_mask": np.ones_like(ids),
                             "token_type_ids": np.zeros_like(ids)})
    got, _ = cls_model.embed(text)
    assert np.allclose(got[0], hidden[0, 0], atol=1e-5)
    assert not np.isclose(np.linalg.norm(got[0]), 1.0, atol=1e-3)
    mean_model = OnnxModel(bundle, manifest.model_copy(update={"pooling": "mean"}))
    assert cosine(mean_model.embed(text)[0][0], hidden[0].mean(0)) > 0.99999


def test_classifier_returns_a_distribution_over_its_labels(classifier):
    probs, counts = classifier.classify(["I was charged twice", "where is my parcel", "hi"])
    assert probs.shape == (3, len(classifier.manifest.labels))
    assert np.allclose(probs.sum(1), 1.0, atol=1e-5) and (probs >= 0).all()
    assert len(counts) == 3


def test_wrong_task_is_a_422(embedder, classifier):
    with pytest.raises(ValidationFailed):
        embedder.classify(["x"])
    with pytest.raises(ValidationFailed):
        classifier.embed(["x"])


def test_one_task_check_serves_the_runtime_and_the_services(embedder, classifier):
    require_task(embedder.manifest, "feature-extraction")  # the right task passes
    with pytest.raises(ValidationFailed) as shared:
        require_task(embedder.manifest, "text-generation")
    err = shared.value
    assert (err.status, err.code, err.param) == (422, "model_task_mismatch", "model")
    assert err.message == f"model '{EMBEDDER}' is a feature-extraction model, not text-generation"
    with pytest.raises(ValidationFailed) as direct:
        embedder.classify(["x"])
    assert direct.value.message == f"model '{EMBEDDER}' is a feature-extraction model, not text-classification"


def test_a_manifest_naming_a_missing_output_is_a_bundle_error(embedder):
    bad = embedder.manifest.model_copy(update={"output_name": "no_such_output"})
    with pytest.raises(BundleError, match="no output"):
        OnnxModel(embedder.bundle_dir, bad)


def test_an_unloadable_graph_is_a_bundle_error(embedder, tmp_path):
    bundle = tmp_path / "b"
    shutil.copytree(embedder.bundle_dir, bundle)
    (bundle / "model.onnx").write_bytes(b"not an onnx graph")
    manifest: Manifest = embedder.manifest.model_copy(
        update={"files": {**embedder.manifest.files, "model.onnx": file_entry(bundle / "model.onnx")}})
    with pytest.raises(BundleError, match="does not load"):
        OnnxModel(bundle, manifest)
