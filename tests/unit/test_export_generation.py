"""The text-generation exporter on the real default chat model (SmolLM2-135M-Instruct from its GGUF).

The bundle is the session's default bundle (built once by ``build-defaults`` and cached); these
tests read it with the exporter's own loop and transformers, never the served runtime.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from functions.core.inference.manifest import Manifest, sha256_file, verify_bundle
from model_export.config import QuantizeConfig, WeightOnlyConfig
from model_export.errors import ExportError
from export_support import run_cli

SMOL = "smollm2-135m-instruct"
TINY = "cirrus-tiny-gpt2"
CHATS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "system", "content": "Answer in one word."}, {"role": "user", "content": "Hi there"},
     {"role": "assistant", "content": "Hello"}, {"role": "user", "content": "Name a colour, 2 + 2 = ?"}],
]


@pytest.fixture(scope="module")
def smol(bundles_dir: Path) -> tuple[Path, Manifest]:
    path = bundles_dir / SMOL
    return path, verify_bundle(path)


@pytest.fixture(scope="module")
def smol_tokenizer(smol):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(smol[0] / "tokenizer.json"))
    tok.no_padding()
    tok.no_truncation()
    return tok


@pytest.fixture(scope="module")
def gguf_tokenizer():
    """transformers' own tokenizer for the GGUF file (the reference for chat prompts)."""
    from transformers import AutoTokenizer

    from model_export.smollm2 import gguf_path

    path = gguf_path()
    return AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)


def test_gguf_source_is_recorded_with_the_files_sha256(smol):
    from model_export.smollm2 import gguf_path

    manifest = smol[1]
    assert manifest.source.format == "gguf"
    assert manifest.source.content_sha256 == sha256_file(gguf_path())
    assert "SmolLM2-135M-Instruct" in manifest.source.id


def test_manifest_carries_the_models_own_chat_template_and_special_tokens(smol, smol_tokenizer):
    from model_export.gguf import read_tokens
    from model_export.smollm2 import gguf_path

    gen = smol[1].generation
    meta = read_tokens(gguf_path())
    assert gen["chat_template"] == meta.chat_template  # the file's Jinja source, not a hand-written one
    assert gen["special_tokens"] == {"bos_token": "<|im_start|>", "eos_token": "<|im_end|>",
                                     "pad_token": "<|im_end|>"}
    assert smol_tokenizer.token_to_id("<|im_end|>") in gen["eos_token_ids"]
    assert (gen["num_layers"], gen["num_kv_heads"], gen["head_dim"], gen["context_length"]) == (30, 3, 64, 8192)
    assert gen["past_name"] == "past_key_values.{layer}.{kind}" and gen["uses_position_ids"] is True


@pytest.mark.parametrize("messages", CHATS, ids=["one-turn", "multi-turn-with-system"])
def test_rendered_prompt_encoded_without_special_tokens_equals_apply_chat_template(
        smol, smol_tokenizer, gguf_tokenizer, messages):
    from model_export.tasks.text_generation import render_chat

    prompt = render_chat(smol[1].generation, messages)
    ours = smol_tokenizer.encode(prompt, add_special_tokens=False).ids
    assert ours == list(gguf_tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True))
    assert prompt.endswith("<|im_start|>assistant\n")
    if messages[0]["role"] != "system":  # the template's own default system prompt
        assert prompt.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")


def test_gguf_tokenizer_trap_adds_bos_and_the_bundle_tokenizer_does_not(smol_tokenizer, gguf_tokenizer):
    # transformers' GGUF conversion puts a BOS (<|im_start|>, id 1) in the post-processor although
    # the file says add_bos_token=false: encoding a rendered prompt with it doubles the first token.
    prompt = "<|im_start|>user\nHi<|im_end|>\n"
    assert gguf_tokenizer(prompt).input_ids[:2] == [1, 1]
    assert smol_tokenizer.encode(prompt).ids == smol_tokenizer.encode(prompt, add_special_tokens=False).ids
    assert smol_tokenizer.encode(prompt).ids[0] == 1 and smol_tokenizer.encode(prompt).ids[1] != 1


def test_gate_passed_with_its_metrics_and_thresholds_in_the_manifest(smol):
    from model_export.tasks.text_generation import TASK

    gate = smol[1].gate
    assert gate.passed and not gate.forced
    assert gate.thresholds == {k: r.value for k, r in TASK.thresholds.items()}
    m = gate.metrics
    assert m["fp32_greedy_exact"] == 1.0 and m["template_matches_transformers"] == 1.0
    assert m["ppl_ratio"] <= gate.thresholds["ppl_ratio"] and m["next_token_agreement"] >= 0.85
    assert m["qa_reference_right"] >= 20 and m["qa_right"] / m["qa_reference_right"] == m["qa_kept"] >= 0.9
    assert m["ppl_ratio"] != 1.0 and m["next_token_agreement"] < 1.0  # the shipped file is not the fp32 one


def test_shipped_file_is_block_quantized_including_embedding_and_head(smol):
    import onnx
    from onnx import TensorProto

    path, manifest = smol
    assert manifest.quantization.mode == "weight-only"
    wo = manifest.quantization.weight_only
    assert (wo["bits"], wo["block_size"], wo["head_bits"], wo["embedding_bits"]) == (8, 32, 8, 8)
    graph = onnx.load(str(path / "model.onnx"), load_external_data=False).graph
    ops = [n.op_type for n in graph.node]
    weights = {i.name: i for i in graph.initializer}
    assert ops.count("MatMulNBits") == 30 * 7 + 1  # q, k, v, o, gate, up, down per layer + the LM head
    assert all(n.attribute and {a.name: a.i for a in n.attribute}["bits"] == 8
               for n in graph.node if n.op_type == "MatMulNBits")
    # The token embedding is int8 rows (+ one scale per row), looked up by input_ids.
    lookup = [n for n in graph.node if n.op_type == "Gather" and n.input[1] == "input_ids"]
    assert len(lookup) == 2 and weights[lookup[0].input[0]].data_type == TensorProto.INT8
    assert not [n.name for n in graph.node if n.op_type == "MatMul" and any(i in weights for i in n.input)]
    assert manifest.files["model.onnx"].bytes < 200e6  # fp32 is 539 MB


def test_shipped_bundle_answers_a_factual_question_through_its_template(smol, smol_tokenizer):
    from model_export.decoder import Decoder
    from model_export.tasks.text_generation import chat_ids

    path, manifest = smol
    gen = manifest.generation
    ids = chat_ids(smol_tokenizer, gen, "What is the capital of France?")
    out = Decoder(path / "model.onnx").greedy(ids, 24, gen["eos_token_ids"])
    assert out.stopped  # ends on <|im_end|>
    assert "Paris" in smol_tokenizer.decode(out.tokens, skip_special_tokens=True)


def test_tiny_fixture_has_a_jinja_template_of_the_same_shape(bundles_dir):
    from model_export.tasks.text_generation import TINY_CHAT_TEMPLATE, render_chat

    gen = verify_bundle(bundles_dir / TINY).generation
    assert gen["chat_template"] == TINY_CHAT_TEMPLATE
    assert render_chat(gen, CHATS[1][:2]) == "<|system|>\nAnswer in one word.\n<|user|>\nHi there\n<|assistant|>\n"
    assert gen["special_tokens"]["eos_token"] == "<|endoftext|>"


def test_answers_count_only_whole_token_matches():
    from model_export.tasks.text_generation import answer_is_right

    assert answer_is_right("The capital of France is Paris.", ["Paris"])
    assert not answer_is_right("The Earth is approximately 129.999967527", ["seven", "7"])
    assert not answer_is_right("The freezing point is -18.0°C.", ["0°C"])
    assert answer_is_right("Water freezes at 0°C.", ["0°C"])


def test_eval_questions_are_many_and_short():
    from model_export.tasks.text_generation import load_eval

    data = load_eval()
    assert len(data["questions"]) >= 20 and all(q["a"] and len(q["q"]) < 100 for q in data["questions"])
    assert sum(len(p.split()) for p in data["heldout"]) > 700


@pytest.mark.parametrize("kwargs, needle", [
    ({"bits": 3}, "bits=3"), ({"block_size": 48}, "power of two"), ({"head_bits": 2}, "head_bits=2"),
    ({"accuracy_level": 7}, "accuracy_level=7"),
])
def test_weight_only_config_rejects_bad_values(kwargs, needle):
    with pytest.raises(ExportError, match=needle):
        WeightOnlyConfig(**kwargs)


def test_weight_only_config_round_trips_through_work_json():
    cfg = QuantizeConfig(method="weight-only", weight_only=WeightOnlyConfig(block_size=64, accuracy_level=None))
    from dataclasses import asdict

    back = QuantizeConfig(**json.loads(json.dumps(asdict(cfg))))  # as bundle() reads work.json
    assert back.weight_only == cfg.weight_only and back.mode == "weight-only" and back.preset is None
    assert back.weight_only.block_size == 64 and back.weight_only.accuracy_level is None


def test_a_file_that_is_not_gguf_is_a_one_line_error(tmp_path):
    bad = tmp_path / "model.gguf"
    bad.write_bytes(b"not a gguf file at all")
    code, _, err = run_cli("export", str(bad), "--task", "text-generation", "--out", str(tmp_path / "w"))
    assert code != 0 and "not a readable GGUF file" in err and "Traceback" not in err
    other = tmp_path / "weights.bin"
    other.write_bytes(b"x")
    code, _, err = run_cli("export", str(other), "--task", "text-generation", "--out", str(tmp_path / "w2"))
    assert code != 0 and "is a file" in err and ".gguf" in err
