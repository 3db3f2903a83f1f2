"""model_export end to end on the real default model: export -> quantize -> validate -> bundle via the CLI."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from functions.core.inference.manifest import Manifest, sha256_file, verify_bundle
from model_export.defaults import default_model_dir
from model_export.pipeline import FP32_FILE, INT8_FILE, content_hash
from export_support import bundle_outputs, run_cli

pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def staged(tmp_path_factory) -> dict:
    """One real export of all-MiniLM-L6-v2 per session, stage by stage through the CLI verbs."""
    root = tmp_path_factory.mktemp("export")
    work, bundle = root / "work", root / "bundle"
    results = {}
    for verb, argv in [
        ("export", ["export", str(default_model_dir()), "--task", "feature-extraction", "--out", str(work),
                    "--name", "minilm-test"]),
        ("quantize", ["quantize", str(work), "--arch", "x86_64"]),
        ("validate", ["validate", str(work)]),
        ("bundle", ["bundle", str(work), "--out", str(bundle), "--version", "t1"]),
    ]:
        code, result, err = run_cli(*argv, "--json")
        assert code == 0, f"{verb} failed: {err}"
        assert f"[{verb}] done in" in err  # each stage reports its timing
        results[verb] = result
    return {"work": work, "bundle": bundle, "results": results}


def test_export_writes_fp32_onnx_with_runtime_ready_tokenizer(staged):
    work = staged["work"]
    assert (work / FP32_FILE).stat().st_size > 80e6
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(work / "tokenizer.json"))
    # The bundle's tokenizer truncates at the manifest's max length and pads to the longest text
    # (the exported file pads everything to a fixed 128).
    long_ids = tok.encode(" ".join(["word"] * 400)).ids
    assert len(long_ids) == 256
    batch = tok.encode_batch(["hi", "a slightly longer text"])
    assert len(batch[0].ids) == len(batch[1].ids) < 20
    assert staged["results"]["export"]["pooling"] == "mean" and staged["results"]["export"]["normalize"] is True


def test_quantize_shrinks_the_model_and_keeps_sensitive_matmuls_in_fp32(staged):
    quant = staged["results"]["quantize"]
    assert quant["int8_bytes"] < quant["fp32_bytes"] / 2
    import onnx

    model = onnx.load(str(staged["work"] / INT8_FILE))
    ops = {n.op_type for n in model.graph.node}
    assert "MatMulInteger" in ops or "DynamicQuantizeMatMul" in ops
    fp32_matmuls = {n.name for n in model.graph.node if n.op_type == "MatMul"}
    assert "/encoder/layer.0/attention/self/MatMul" in fp32_matmuls   # attention scores
    assert "/encoder/layer.5/output/dense/MatMul" in fp32_matmuls     # FFN down-projection
    assert "/encoder/layer.2/intermediate/dense/MatMul" in fp32_matmuls  # FFN up-projection
    assert "/encoder/layer.2/attention/self/query/MatMul" not in fp32_matmuls  # weights: int8


def test_gate_passes_the_int8_model_at_default_thresholds(staged):
    gate = staged["results"]["validate"]
    assert gate["passed"] is True and gate["file"] == INT8_FILE
    m = gate["metrics"]
    assert m["n_texts"] >= 200
    assert m["mean_cosine"] >= 0.995 and m["p1_cosine"] >= 0.98 and m["nn_agreement"] >= 0.98
    assert m["min_cosine"] <= m["p1_cosine"] <= m["mean_cosine"] < 1.0  # int8 is not bit-identical
    assert gate["file_sha256"] == sha256_file(staged["work"] / INT8_FILE)


def test_manifest_describes_everything_the_runtime_needs(staged):
    bundle = staged["bundle"]
    manifest = verify_bundle(bundle)
    assert sorted(p.name for p in bundle.iterdir()) == ["config.json", "manifest.json", "model.onnx",
                                                       "tokenizer.json"]
    assert (manifest.name, manifest.version, manifest.task) == ("minilm-test", "t1", "feature-extraction")
    assert (manifest.pooling, manifest.normalize, manifest.max_length) == ("mean", True, 256)
    assert manifest.output_name == "last_hidden_state" and manifest.arch == "x86_64"
    assert manifest.source.id == str(default_model_dir())
    assert manifest.source.content_sha256 == content_hash(default_model_dir())
    q = manifest.quantization
    assert (q.mode, q.preset, q.per_channel) == ("dynamic-int8", "u8s8-7bit", True)
    assert len(q.nodes_excluded) == 24  # 12 attention score matmuls + 12 FFN matmuls
    assert manifest.gate.passed and not manifest.gate.forced
    assert manifest.gate.thresholds == {"mean_cosine": 0.995, "p1_cosine": 0.98, "nn_agreement": 0.98}
    assert manifest.gate.eval_set.startswith("eval_texts.jsonl@sha256:")
    assert {"torch", "transformers", "optimum", "onnxruntime", "tokenizers"} <= set(manifest.tools)
    assert set(manifest.model_extra["timings"]) >= {"export", "quantize", "validate"}
    for rel, entry in manifest.files.items():
        assert entry.sha256 == sha256_file(bundle / rel) and entry.bytes == (bundle / rel).stat().st_size


def test_bundle_serves_normalised_embeddings_that_rank_paraphrases_first(staged):
    texts = ["How do I reset my password?", "I forgot my password and need a new one",
             "The cat slept on the warm windowsill.", "我的密码忘记了"]
    vecs = bundle_outputs(staged["bundle"], texts)
    assert vecs.shape == (4, 384)
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    sims = vecs @ vecs[0]
    assert sims[1] > 0.6 and sims[1] > sims[2] + 0.3


def test_gate_fails_on_a_damaged_model_and_no_bundle_is_made(staged, tmp_path):
    import onnx
    from onnx import numpy_helper

    work = tmp_path / "work"
    shutil.copytree(staged["work"], work)
    model = onnx.load(str(work / INT8_FILE))
    # Damage one quantized weight matrix (the first FFN up-projection): shuffle its int8 values.
    init = next(i for i in model.graph.initializer
                if i.name.startswith("onnx::MatMul") and numpy_helper.to_array(i).dtype in (np.uint8, np.int8)
                and numpy_helper.to_array(i).size > 100_000)
    arr = numpy_helper.to_array(init).copy()
    np.random.default_rng(0).shuffle(arr.reshape(-1))
    init.CopyFrom(numpy_helper.from_array(arr, init.name))
    onnx.save(model, str(work / INT8_FILE))

    code, _, err = run_cli("validate", str(work), "--json")
    assert code == 3
    assert err.strip().splitlines()[-1].startswith("model_export validate: error: accuracy gate failed: ")
    gate = json.loads((work / "gate.json").read_text())
    assert gate["passed"] is False and gate["metrics"]["mean_cosine"] < 0.99

    code, _, err = run_cli("bundle", str(work), "--out", str(tmp_path / "b"))
    assert code == 3 and "refusing to bundle" in err
    assert not (tmp_path / "b" / "manifest.json").exists()

    code, result, _ = run_cli("bundle", str(work), "--out", str(tmp_path / "forced"), "--force", "--json")
    assert code == 0
    manifest = Manifest.read(tmp_path / "forced")
    assert manifest.gate.forced is True and manifest.gate.passed is False
    assert manifest.gate.metrics["mean_cosine"] < 0.99


def test_gate_thresholds_are_configurable(staged, tmp_path):
    work = tmp_path / "work"
    shutil.copytree(staged["work"], work)
    code, _, err = run_cli("validate", str(work), "--threshold", "mean_cosine=0.9999")
    assert code == 3 and "mean_cosine=" in err and "need >= 0.9999" in err


def test_bundle_refuses_a_file_the_gate_did_not_measure(staged, tmp_path):
    work = tmp_path / "work"
    shutil.copytree(staged["work"], work)
    code, _, _ = run_cli("quantize", str(work), "--per-tensor")  # new file, old gate result dropped
    assert code == 0
    code, _, err = run_cli("bundle", str(work), "--out", str(tmp_path / "b"))
    assert code == 1 and "run `validate` first" in err


def test_no_quantize_ships_fp32_that_matches_pytorch(staged, tmp_path):
    work = tmp_path / "work"
    shutil.copytree(staged["work"], work)
    assert run_cli("quantize", str(work), "--no-quantize")[0] == 0
    code, gate, _ = run_cli("validate", str(work), "--json")
    assert code == 0 and gate["file"] == FP32_FILE
    # exact ties between neighbours may still flip (nn_agreement_all), clear neighbours never do
    assert gate["metrics"]["min_cosine"] > 0.9999 and gate["metrics"]["nn_agreement"] == 1.0


def test_weight_options_pick_the_stored_integer_type_and_range(staged, tmp_path):
    import onnx
    from onnx import TensorProto, numpy_helper

    def weights(path: Path) -> dict[int, int]:
        """data type -> largest |w| over the quantized matmul weights."""
        model = onnx.load(str(path))
        gathered = {n.input[0] for n in model.graph.node if n.op_type in ("Gather", "DequantizeLinear")}
        out: dict[int, int] = {}
        for i in model.graph.initializer:
            # the word-embedding table is quantized as an activation (u8) and only looked up
            if i.name.endswith("_quantized") and len(i.dims) == 2 and i.name not in gathered:
                w = numpy_helper.to_array(i).astype(np.int32)
                big = int(np.abs(w - 128).max() if i.data_type == TensorProto.UINT8 else np.abs(w).max())
                out[i.data_type] = max(out.get(i.data_type, 0), big)
        return out

    work = tmp_path / "work"
    shutil.copytree(staged["work"], work)
    assert weights(work / INT8_FILE) == {TensorProto.INT8: 64}   # default: s8, 7-bit (no AVX2 saturation)
    assert run_cli("quantize", str(work), "--weights", "u8")[0] == 0
    assert set(weights(work / INT8_FILE)) == {TensorProto.UINT8}
    code, _, err = run_cli("quantize", str(work), "--full-range")  # x86_64: refused, one line
    assert code != 0 and "not safe on x86_64 without VNNI" in err
    assert run_cli("quantize", str(work), "--arch", "arm64", "--full-range")[0] == 0
    assert weights(work / INT8_FILE)[TensorProto.INT8] > 64
    assert json.loads((work / "work.json").read_text())["quantization"]["config"]["arch"] == "arm64"


def test_fuse_quantizes_the_fused_attention(staged, tmp_path):
    import onnx

    work = tmp_path / "work"
    shutil.copytree(staged["work"], work)
    assert run_cli("quantize", str(work), "--fuse", "--exclude", "nothing-matches")[0] == 0
    ops = {n.op_type for n in onnx.load(str(work / INT8_FILE)).graph.node}
    assert {"QAttention", "SkipLayerNormalization"} <= ops and "Softmax" not in ops
    code, gate, _ = run_cli("validate", str(work), "--json", "--threshold", "mean_cosine=0.98",
                            "--threshold", "p1_cosine=0.95", "--threshold", "nn_agreement=0.9")
    assert code == 0 and 0.98 <= gate["metrics"]["mean_cosine"] < 0.995  # all-int8: fast, less exact
