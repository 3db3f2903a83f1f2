"""The light path through the whole local system: HTTP -> gateway -> authorizer -> api Lambda -> ONNX."""
from __future__ import annotations

import base64
import json

import numpy as np
import pytest

EMBED_MODEL = "all-minilm-l6-v2"
CLASSIFIER = "cirrus-intent-minilm"


def test_health_answers_through_the_gateway(local_cirrus):
    r = local_cirrus.get("/health")
    assert r.status_code == 200
    assert r.json()["status"] == "ok" and r.json()["stage"] == "local"
    assert r.headers["x-amzn-RequestId"]


def test_models_lists_the_published_bundles(local_cirrus):
    r = local_cirrus.get("/v1/models")
    assert r.status_code == 200
    data = r.json()["data"]
    assert len({m["id"] for m in data}) == len(data)  # one entry per model id
    listed = {m["id"]: m for m in data}
    for name, version in local_cirrus.state["models"].items():
        assert listed[name]["cirrus"]["path"] == "light"
        assert listed[name]["cirrus"]["version"] == version
    if local_cirrus.state.get("heavy_model"):
        assert listed[local_cirrus.state["heavy_model"]]["cirrus"]["path"] == "heavy"


def test_embeddings_are_unit_vectors_that_rank_similar_texts_closer(local_cirrus):
    texts = ["How do I reset my password?", "I forgot my password and cannot log in",
             "The weather in Lisbon is sunny today"]
    r = local_cirrus.post("/v1/embeddings", {"model": EMBED_MODEL, "input": texts})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "list" and body["model"] == EMBED_MODEL
    vecs = np.array([d["embedding"] for d in sorted(body["data"], key=lambda d: d["index"])], dtype=np.float32)
    assert vecs.shape == (3, 384)
    assert np.allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-3)
    sims = vecs @ vecs.T
    assert sims[0, 1] > 0.6 > sims[0, 2]
    assert body["usage"]["prompt_tokens"] > 3 and body["usage"]["total_tokens"] == body["usage"]["prompt_tokens"]


def test_embeddings_match_the_bundle_run_directly(local_cirrus, bundles_dir):
    """What the API returns equals onnxruntime on the same bundle file, pooled as its manifest says."""
    import onnxruntime as ort
    from tokenizers import Tokenizer

    bundle = bundles_dir / EMBED_MODEL
    manifest = json.loads((bundle / "manifest.json").read_text())
    tok = Tokenizer.from_file(str(bundle / "tokenizer.json"))
    tok.no_padding()
    tok.enable_truncation(manifest["max_length"])
    enc = tok.encode("Serverless inference on one machine")
    sess = ort.InferenceSession(str(bundle / "model.onnx"), providers=["CPUExecutionProvider"])
    feeds = {"input_ids": np.array([enc.ids], dtype=np.int64),
             "attention_mask": np.array([enc.attention_mask], dtype=np.int64)}
    if "token_type_ids" in {i.name for i in sess.get_inputs()}:
        feeds["token_type_ids"] = np.zeros_like(feeds["input_ids"])
    hidden = sess.run([manifest["output_name"]], feeds)[0][0]
    expected = hidden.mean(axis=0)
    expected /= np.linalg.norm(expected)
    r = local_cirrus.post("/v1/embeddings", {"model": EMBED_MODEL, "input": "Serverless inference on one machine"})
    got = np.array(r.json()["data"][0]["embedding"], dtype=np.float32)
    assert float(got @ expected) > 0.9999


def test_openai_client_embeddings_float_and_base64(local_cirrus):
    from openai import OpenAI

    client = OpenAI(base_url=local_cirrus.url + "/v1", api_key=local_cirrus.key, max_retries=0, timeout=60)
    out = client.embeddings.create(model=EMBED_MODEL, input=["hello", "world"])
    assert len(out.data) == 2 and len(out.data[0].embedding) == 384
    assert out.usage.prompt_tokens > 0
    # base64 on the wire carries the same float32 vector (same single input: dynamic int8
    # quantization scales activations per batch, so a different batch may differ in the last bits).
    single = client.embeddings.create(model=EMBED_MODEL, input="hello", encoding_format="float")
    raw = client.embeddings.create(model=EMBED_MODEL, input="hello", encoding_format="base64")
    decoded = np.frombuffer(base64.b64decode(raw.data[0].embedding), dtype=np.float32)
    assert np.array_equal(decoded, np.asarray(single.data[0].embedding, dtype=np.float32))


def test_openai_client_lists_models(local_cirrus):
    from openai import OpenAI

    client = OpenAI(base_url=local_cirrus.url + "/v1", api_key=local_cirrus.key, max_retries=0)
    assert EMBED_MODEL in {m.id for m in client.models.list()}


def test_classification_returns_the_bundle_labels_with_probabilities(local_cirrus, bundles_dir):
    labels = json.loads((bundles_dir / CLASSIFIER / "manifest.json").read_text())["labels"]
    r = local_cirrus.post("/v1/classify", {"model": CLASSIFIER,
                                           "input": ["I want my money back for this order", "where is my parcel?"]})
    assert r.status_code == 200, r.text
    data = r.json()["data"]
    assert len(data) == 2
    for item in data:
        assert item["label"] in labels
        assert {s["label"] for s in item["scores"]} == set(labels)
        assert sum(s["score"] for s in item["scores"]) == pytest.approx(1.0, abs=1e-3)
        assert item["score"] == max(s["score"] for s in item["scores"])
