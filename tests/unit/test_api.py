"""The API handler with real API Gateway REST events and the real default bundles (local model dir)."""
from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest

from functions.core.inference.manifest import Manifest
from functions.core.observability import logger
from functions.core.inference.encoder import OnnxModel
from light_support import (CLASSIFIER, EMBEDDER, api_event, assert_error, call_api, cosine, direct_embeddings,
                           direct_probabilities, load_event)

# Dynamic int8 quantizes activations with a scale computed over the whole batch tensor, so a
# batched run and a single run of the same text differ slightly (measured: cos >= 0.98, mean
# 0.9995). Exact parity is checked with batch size 1; batched output within this tolerance.
BATCHED_COS = 0.97

TEXTS = [
    "The food was delicious and the waiter was friendly.",
    "short",
    "A considerably longer sentence about a parcel that was delivered to the wrong address twice, "
    "after which the customer asked for a refund and a new shipment.",
    "What is the capital of France?",
]


def embed_event(body):
    return api_event("POST", "/v1/embeddings", body)


def test_embeddings_match_the_bundles_own_onnx_output(env, bundles_dir):
    env(model_dir=str(bundles_dir), batch_size=1)  # fresh store, one input per session run
    status, body, headers = call_api(embed_event({"model": EMBEDDER, "input": TEXTS}))
    assert status == 200, body
    assert body["object"] == "list" and body["model"] == EMBEDDER
    assert [d["index"] for d in body["data"]] == list(range(len(TEXTS)))
    got = np.array([d["embedding"] for d in body["data"]], dtype=np.float32)
    want = direct_embeddings(bundles_dir / EMBEDDER, TEXTS)
    assert got.shape == want.shape
    assert np.allclose(got, want, atol=1e-5)
    assert headers["X-Cirrus-Model-Version"] == Manifest.read(bundles_dir / EMBEDDER).version


def test_batched_embeddings_keep_request_order_within_quantization_tolerance(light_api, bundles_dir):
    texts = TEXTS * 3 + [f"item number {i} in a longer list" for i in range(20)]
    status, body, _ = call_api(embed_event({"model": EMBEDDER, "input": texts}))
    assert status == 200, body
    got = np.array([d["embedding"] for d in body["data"]], dtype=np.float32)
    want = direct_embeddings(bundles_dir / EMBEDDER, texts)
    assert cosine(got, want).min() > BATCHED_COS
    assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-4)  # the manifest asks for L2 norm
    # Sorting by length for batching must not reorder results: each row is closest to its own text.
    sims = got @ want.T
    distinct = [i for i, t in enumerate(texts) if texts.index(t) == i]
    assert all(texts[int(np.argmax(sims[i]))] == texts[i] for i in distinct)


def test_embeddings_fixture_event_single_string_counts_its_tokens(light_api, bundles_dir):
    event = load_event("embeddings_post.json")
    status, body, _ = call_api(event)
    assert status == 200, body
    text = json.loads(event["body"])["input"]
    assert len(body["data"]) == 1
    tokens = len(light_api.get(EMBEDDER).tokenize([text]).encodings[0].ids)
    assert body["usage"] == {"prompt_tokens": tokens, "total_tokens": tokens}
    # A single input is a batch of one: the same numbers as a direct session run.
    assert np.allclose(body["data"][0]["embedding"], direct_embeddings(bundles_dir / EMBEDDER, [text])[0], atol=1e-5)


def test_embeddings_base64_is_little_endian_float32_of_the_same_vectors(light_api):
    _, floats, _ = call_api(embed_event({"model": EMBEDDER, "input": TEXTS[:2]}))
    status, b64, _ = call_api(embed_event({"model": EMBEDDER, "input": TEXTS[:2], "encoding_format": "base64"}))
    assert status == 200
    for f, b in zip(floats["data"], b64["data"], strict=True):
        decoded = np.frombuffer(base64.b64decode(b["embedding"]), dtype="<f4")
        assert np.array_equal(decoded, np.array(f["embedding"], dtype=np.float32))


def test_embeddings_default_to_the_configured_model_when_model_is_omitted(light_api):
    status, body, _ = call_api(embed_event({"input": "hello"}))
    assert status == 200 and body["model"] == EMBEDDER


def test_classify_returns_the_classifiers_labels_with_probabilities(light_api, bundles_dir):
    event = load_event("classify_post.json")
    texts = json.loads(event["body"])["input"]
    status, body, _ = call_api(event)
    assert status == 200, body
    labels = Manifest.read(bundles_dir / CLASSIFIER).labels
    want = direct_probabilities(bundles_dir / CLASSIFIER, texts)
    for i, item in enumerate(body["data"]):
        assert item["index"] == i
        assert sorted(s["label"] for s in item["scores"]) == sorted(labels)
        assert item["label"] == labels[int(np.argmax(want[i]))]
        assert sum(s["score"] for s in item["scores"]) == pytest.approx(1.0, abs=1e-4)
        scores = [s["score"] for s in item["scores"]]
        assert scores == sorted(scores, reverse=True)
        assert item["score"] == pytest.approx(want[i].max(), abs=0.02)


def test_classify_picks_the_obvious_support_intent(light_api):
    # The default classifier is fine-tuned on support intents; unambiguous requests must land right.
    cases = {"I was charged twice for my order": "billing", "I cannot log in to my account": "login_problem",
             "Please cancel my order": "cancel_order", "Let me talk to a real person": "human_agent"}
    status, body, _ = call_api(api_event("POST", "/v1/classify", {"model": CLASSIFIER, "input": list(cases)}))
    assert status == 200, body
    assert [d["label"] for d in body["data"]] == list(cases.values())


@pytest.mark.parametrize("top_k", ["2", 0, 1.5, True])
def test_classify_top_k_must_be_a_positive_integer(light_api, top_k):
    err = assert_error(*call_api(api_event("POST", "/v1/classify",
                                           {"model": CLASSIFIER, "input": "x", "top_k": top_k}))[:2], 422)
    assert err["param"] == "top_k"


def test_classify_top_k_keeps_the_best_labels(light_api):
    status, body, _ = call_api(api_event("POST", "/v1/classify",
                                         {"model": CLASSIFIER, "input": "refund my order", "top_k": 2}))
    assert status == 200, body
    assert len(body["data"][0]["scores"]) == 2
    assert body["data"][0]["scores"][0]["label"] == body["data"][0]["label"]


def test_models_lists_every_bundle_with_manifest_metadata(light_api, bundles_dir):
    status, body, _ = call_api(load_event("models_get.json"))
    assert status == 200
    assert body["object"] == "list"
    by_id = {m["id"]: m for m in body["data"]}
    for name in (EMBEDDER, CLASSIFIER):
        manifest = Manifest.read(bundles_dir / name)
        entry = by_id[name]
        assert entry["object"] == "model" and entry["owned_by"] == "cirrus" and entry["created"] > 0
        assert entry["cirrus"]["version"] == manifest.version
        assert entry["cirrus"]["task"] == manifest.task
        assert entry["cirrus"]["labels"] == manifest.labels


def test_get_one_model_returns_the_same_entry_as_the_list(light_api):
    _, listed, _ = call_api(load_event("models_get.json"))
    by_id = {m["id"]: m for m in listed["data"]}
    for name in (EMBEDDER, CLASSIFIER):
        status, body, _ = call_api(api_event("GET", f"/v1/models/{name}"))
        assert status == 200, body
        assert body == by_id[name]


def test_get_one_heavy_model_when_the_endpoint_is_enabled(env, bundles_dir):
    env(model_dir=str(bundles_dir), heavy_endpoint_name="ep", heavy_models=["big-heavy"])
    status, body, _ = call_api(api_event("GET", "/v1/models/big-heavy"))
    assert status == 200, body
    assert body["id"] == "big-heavy" and body["cirrus"] == {"path": "heavy", "task": "text-generation"}


def test_get_unknown_or_unserved_model_is_404_model_not_found(env, bundles_dir):
    env(model_dir=str(bundles_dir), models=[EMBEDDER], heavy_models=["big-heavy"])  # heavy endpoint off
    for name in ("no-such-model", CLASSIFIER, "big-heavy"):
        err = assert_error(*call_api(api_event("GET", f"/v1/models/{name}"))[:2], 404, "model_not_found")
        assert err["param"] == "model"


def test_health_is_ok_and_names_loaded_models(light_api):
    call_api(embed_event({"model": EMBEDDER, "input": "warm up"}))
    status, body, _ = call_api(load_event("health_get.json"))
    assert status == 200 and body["status"] == "ok"
    assert EMBEDDER in body["models_loaded"]


# ------------------------------------------------------------------------------ errors
@pytest.mark.parametrize(("raw", "status", "code"), [
    ("{not json", 400, "invalid_json"),
    ("", 400, "invalid_json"),
    ('"just a string"', 422, "invalid_value"),
    ("[1, 2]", 422, "invalid_value"),
])
def test_embeddings_rejects_bodies_that_are_not_a_json_object(light_api, raw, status, code):
    assert_error(*call_api(api_event("POST", "/v1/embeddings", raw=raw))[:2], status, code)


@pytest.mark.parametrize("raw", [
    "[" * 5000 + "]" * 5000,                                    # past Python's recursion limit
    '{"model": "m", "input": ' + "[" * 70 + '"x"' + "]" * 70 + "}",  # parses, but past MAX_JSON_DEPTH
    '{"a": ' * 3000 + "1" + "}" * 3000,
])
def test_deeply_nested_json_is_a_400_not_a_recursion_error(light_api, raw):
    for path in ("/v1/embeddings", "/v1/classify", "/v1/chat/completions"):
        assert_error(*call_api(api_event("POST", path, raw=raw))[:2], 400, "json_too_deep")


def test_deeply_nested_json_sent_as_text_plain_base64_is_a_400(light_api):
    event = api_event("POST", "/v1/embeddings", raw=base64.b64encode(("[" * 5000 + "]" * 5000).encode()).decode())
    event["isBase64Encoded"] = True
    event["headers"]["Content-Type"] = "text/plain"
    assert_error(*call_api(event)[:2], 400, "json_too_deep")


@pytest.mark.parametrize(("body", "param"), [
    ({"model": EMBEDDER, "input": []}, "input"),
    ({"model": EMBEDDER, "input": ["ok", ""]}, "input"),
    ({"model": EMBEDDER, "input": 42}, "input"),
    ({"model": EMBEDDER, "input": ["ok", 3]}, "input"),
    ({"model": EMBEDDER, "input": [[101, 2023, 102]]}, "input"),
    ({"model": EMBEDDER, "input": "x", "dimensions": "384"}, "dimensions"),
    ({"model": EMBEDDER, "input": "x", "encoding_format": "int8"}, "encoding_format"),
    ({"model": EMBEDDER, "input": "x", "temperature": 1}, "temperature"),
    ({"model": 7, "input": "x"}, "model"),
    ({"model": EMBEDDER}, "input"),
])
def test_embeddings_rejects_invalid_fields_with_422_naming_the_field(light_api, body, param):
    err = assert_error(*call_api(embed_event(body))[:2], 422, "invalid_value")
    assert err["param"] == param


def test_invalid_field_message_never_echoes_the_input(light_api):
    secret_text = "my-private-sentence-" * 3
    _, body, _ = call_api(embed_event({"model": EMBEDDER, "input": [secret_text, 5]}))
    assert secret_text not in json.dumps(body)


def test_token_id_input_is_refused_with_a_hint(light_api):
    _, body, _ = call_api(embed_event({"model": EMBEDDER, "input": [1, 2, 3]}))
    assert "token-id input is not supported" in body["error"]["message"]


def test_classify_requires_a_model(light_api):
    err = assert_error(*call_api(api_event("POST", "/v1/classify", {"input": "x"}))[:2], 422)
    assert err["param"] == "model"


def test_embeddings_on_a_classifier_is_a_task_mismatch(light_api):
    err = assert_error(*call_api(embed_event({"model": CLASSIFIER, "input": "x"}))[:2], 422, "model_task_mismatch")
    assert err["param"] == "model"


@pytest.mark.parametrize("model", ["no-such-model", "../all-minilm-l6-v2", "a/b", "x" * 300])
def test_unknown_model_is_404_model_not_found(light_api, model):
    err = assert_error(*call_api(embed_event({"model": model, "input": "x"}))[:2], 404, "model_not_found")
    assert err["param"] == "model"


def test_model_outside_the_served_list_is_404(env, bundles_dir):
    env(model_dir=str(bundles_dir), models=[EMBEDDER])
    assert_error(*call_api(api_event("POST", "/v1/classify", {"model": CLASSIFIER, "input": "x"}))[:2],
                 404, "model_not_found")


@pytest.mark.parametrize(("method", "path"), [("GET", "/v1/nothing"), ("GET", "/v1/embeddings"),
                                              ("DELETE", "/v1/models")])
def test_unknown_route_is_404_in_the_openai_shape(light_api, method, path):
    assert_error(*call_api(api_event(method, path))[:2], 404, "unknown_route")


def test_body_over_the_limit_is_413(light_api, env, bundles_dir):
    env(model_dir=str(bundles_dir), max_body_bytes=1000)
    assert_error(*call_api(embed_event({"model": EMBEDDER, "input": "é" * 600}))[:2], 413, "body_too_large")


def test_too_many_inputs_is_413(light_api, env, bundles_dir):
    env(model_dir=str(bundles_dir), max_inputs=3)
    err = assert_error(*call_api(embed_event({"model": EMBEDDER, "input": ["a"] * 4}))[:2], 413, "too_many_inputs")
    assert err["param"] == "input"


def test_embeddings_accept_up_to_2048_inputs_by_default(light_api):
    status, body, _ = call_api(embed_event({"model": EMBEDDER, "input": ["ok"] * 2048}))
    assert status == 200 and len(body["data"]) == 2048
    assert_error(*call_api(embed_event({"model": EMBEDDER, "input": ["ok"] * 2049}))[:2], 413, "too_many_inputs")


def test_inputs_over_the_request_token_cap_are_413_naming_the_cap(light_api, env, bundles_dir):
    env(model_dir=str(bundles_dir), max_request_tokens=40)
    # "ok" is 3 tokens with [CLS]/[SEP]: 13 inputs = 39 tokens fit, 14 = 42 do not.
    assert call_api(embed_event({"model": EMBEDDER, "input": ["ok"] * 13}))[0] == 200
    err = assert_error(*call_api(embed_event({"model": EMBEDDER, "input": ["ok"] * 14}))[:2], 413, "too_many_tokens")
    assert err["param"] == "input" and "42 tokens" in err["message"] and "limit is 40" in err["message"]
    assert_error(*call_api(api_event("POST", "/v1/classify", {"model": CLASSIFIER, "input": ["ok"] * 14}))[:2],
                 413, "too_many_tokens")


def test_dimensions_equal_to_the_native_size_is_accepted(light_api):
    plain = call_api(embed_event({"model": EMBEDDER, "input": "where is my parcel?"}))[1]
    same = call_api(embed_event({"model": EMBEDDER, "input": "where is my parcel?", "dimensions": 384}))[1]
    assert len(same["data"][0]["embedding"]) == 384
    assert same["data"][0]["embedding"] == plain["data"][0]["embedding"]


def test_other_dimensions_are_422_naming_the_native_size(light_api):
    err = assert_error(*call_api(embed_event({"model": EMBEDDER, "input": "x", "dimensions": 256}))[:2],
                       422, "unsupported_dimensions")
    assert err["param"] == "dimensions" and "384" in err["message"]


def test_dimensions_truncate_only_models_trained_for_it(env, bundles_dir, tmp_path):
    import shutil

    bundle = tmp_path / EMBEDDER
    shutil.copytree(bundles_dir / EMBEDDER, bundle)
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["matryoshka_dimensions"] = [128, 256]
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    env(model_dir=str(tmp_path))
    full = np.array(call_api(embed_event({"model": EMBEDDER, "input": "refund please"}))[1]["data"][0]["embedding"])
    status, body, _ = call_api(embed_event({"model": EMBEDDER, "input": "refund please", "dimensions": 128}))
    assert status == 200
    cut = np.array(body["data"][0]["embedding"])
    assert cut.shape == (128,)
    np.testing.assert_allclose(cut, full[:128] / np.linalg.norm(full[:128]), atol=1e-6)
    assert abs(np.linalg.norm(cut) - 1) < 1e-5
    err = assert_error(*call_api(embed_event({"model": EMBEDDER, "input": "x", "dimensions": 200}))[:2],
                       422, "unsupported_dimensions")
    assert "128, 256, 384" in err["message"]


def test_input_over_the_character_limit_is_413(light_api, env, bundles_dir):
    env(model_dir=str(bundles_dir), max_chars=50)
    assert_error(*call_api(embed_event({"model": EMBEDDER, "input": ["ok", "y" * 51]}))[:2], 413, "input_too_long")


def test_input_over_the_token_limit_is_truncated_by_default(light_api, bundles_dir):
    max_len = Manifest.read(bundles_dir / EMBEDDER).max_length
    status, body, _ = call_api(embed_event({"model": EMBEDDER, "input": "word " * (2 * max_len)}))
    assert status == 200
    assert body["usage"]["prompt_tokens"] == max_len


def test_input_over_the_token_limit_is_400_context_length_exceeded_when_overflow_is_reject(light_api, env,
                                                                                           bundles_dir):
    # 400 as OpenAI answers context_length_exceeded (and as the generation path does); 413 is request size.
    env(model_dir=str(bundles_dir), token_overflow="reject")
    max_len = Manifest.read(bundles_dir / EMBEDDER).max_length
    err = assert_error(*call_api(embed_event({"model": EMBEDDER, "input": ["fine", "word " * (2 * max_len)]}))[:2],
                       400, "context_length_exceeded")
    assert "input[1]" in err["message"]


def test_a_bug_is_a_bare_500_without_internals(light_api, monkeypatch):
    def broken(self, texts, **_):
        raise RuntimeError("internal detail /opt/secret/path.py line 3")

    monkeypatch.setattr(OnnxModel, "embed", broken)
    status, body, _ = call_api(embed_event({"model": EMBEDDER, "input": "x"}))
    err = assert_error(status, body, 500, "internal_error")
    assert "internal detail" not in json.dumps(body)


def test_powertools_http_errors_from_a_router_keep_their_status_in_the_openai_shape(light_api, monkeypatch):
    from aws_lambda_powertools.event_handler.exceptions import BadRequestError

    from functions.core.light import service

    def refuse(*_):
        raise BadRequestError("missing header X")

    monkeypatch.setattr(service, "list_models", refuse)
    err = assert_error(*call_api(api_event("GET", "/v1/models"))[:2], 400)
    assert err["message"] == "missing header X"


# ------------------------------------------------------------------------------ unicode
UNICODE_CASES = {
    "emoji": "I love it 👍🏽🔥 — 10/10 🎉",
    "zwj_family": "👨‍👩‍👧‍👦 family",
    "rtl_arabic": "مرحبا بالعالم",
    "rtl_hebrew_mixed": "שלום world 123",
    "combining_marks": "e\u0301 n\u0303 Z\u0351\u0352\u0353",
    "nul_and_controls": "a\x00b\x07c\td",
    "only_whitespace": "   \n\t ",
    "cjk": "你好，世界",
}


def test_unicode_edge_cases_embed_without_error(light_api):
    texts = list(UNICODE_CASES.values())
    status, body, _ = call_api(embed_event({"model": EMBEDDER, "input": texts}))
    assert status == 200, body
    vectors = np.array([d["embedding"] for d in body["data"]])
    assert vectors.shape[0] == len(texts) and np.isfinite(vectors).all()


def test_lone_surrogates_are_replaced_by_u_fffd(light_api):
    # Written as JSON escapes, exactly as a client that sends broken UTF-16 would.
    raw = '{"model": "%s", "input": ["bad \\ud800 half", "bad \\ufffd half", "pair \\ud83d\\ude00 ok"]}' % EMBEDDER
    status, body, _ = call_api(api_event("POST", "/v1/embeddings", raw=raw))
    assert status == 200, body
    a, b, _ = (np.array(d["embedding"]) for d in body["data"])
    assert np.allclose(a, b, atol=1e-6)


def test_base64_encoded_event_body_is_decoded(light_api):
    event = embed_event(None)
    event["body"] = base64.b64encode(json.dumps({"model": EMBEDDER, "input": "héllo"}).encode()).decode()
    event["isBase64Encoded"] = True
    status, body, _ = call_api(event)
    assert status == 200 and len(body["data"]) == 1


# ------------------------------------------------------------------------------ observability
def test_logs_carry_sizes_but_never_the_input_text(light_api, capsys, monkeypatch):
    logs = io.StringIO()
    # The Powertools logger bound its stream at import time; point it at a buffer for this test.
    monkeypatch.setattr(logger.registered_handler, "stream", logs)
    text = "ZEBRA-CONFIDENTIAL-7731 appears only in the request"
    status, _, _ = call_api(embed_event({"model": EMBEDDER, "input": [text, "two"]}))
    assert status == 200
    out = logs.getvalue() + capsys.readouterr().out  # logs + EMF metrics (printed)
    assert "ZEBRA-CONFIDENTIAL" not in out
    records = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    done = [r for r in records if r.get("message") == "embeddings done"]
    assert done and done[0]["inputs"] == 2 and done[0]["model"] == EMBEDDER
    assert done[0]["correlation_id"] == "c6af9ac6-7b61-11e6-9a41-93e8deadbeef"  # API Gateway request id
    emf = [r for r in records if "_aws" in r]
    names = {m["Name"] for r in emf for d in r["_aws"]["CloudWatchMetrics"] for m in d["Metrics"]}
    assert {"InferenceLatency", "Tokens", "Inputs"} <= names


def test_tokens_are_metered_once_per_request(light_api, capsys):
    from functions.core.observability import metrics

    metrics.clear_metrics()
    status, body, _ = call_api(embed_event({"model": EMBEDDER, "input": ["one text", "and another one"]}))
    assert status == 200
    emf = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith('{"_aws"')]
    tokens = [v for r in emf if "Tokens" in r for v in (r["Tokens"] if isinstance(r["Tokens"], list) else [r["Tokens"]])]
    assert tokens == [body["usage"]["total_tokens"]]  # the usage middleware's, not a second copy from the service


def test_each_request_is_metered_per_key_id_with_its_tokens_and_never_the_key_or_text(light_api, caplog):
    secret_text = "my very private sentence"
    with caplog.at_level("INFO", logger="cirrus"):
        status, body, _ = call_api(embed_event({"model": EMBEDDER, "input": [secret_text, "two"]}))
    assert status == 200
    (usage,) = [r for r in caplog.records if r.getMessage() == "usage"]
    assert usage.key_id == "0123456789abcdef" and usage.requests == 1 and usage.route == "/{proxy+}"
    assert usage.tokens == body["usage"]["total_tokens"] > 0
    everything = json.dumps([vars(r) for r in caplog.records], default=str)
    assert secret_text not in everything and "Bearer" not in everything
