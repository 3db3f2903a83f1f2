"""The ONNX generation loop on the real cirrus-tiny-gpt2 model: parity with PyTorch, sampling, stops."""
from __future__ import annotations

from pathlib import Path

import pytest

from functions.core.errors import BadRequest, BundleError
from functions.core.inference.generator import OnnxGenerator, SamplingParams
from functions.core.inference.manifest import Manifest, verify_bundle

PROMPTS = ["Hello, how can I help you today?", "Where is my package?", "The quick brown fox", "A"]


@pytest.fixture(scope="module")
def fp32_export(tmp_path_factory):
    """The tiny model's PyTorch source and its fp32 ONNX export (same recipe as the bundle)."""
    from model_export.tasks.text_generation import TASK, build_tiny_gpt2, generation_spec

    root = tmp_path_factory.mktemp("tiny")
    src = build_tiny_gpt2(root / "source")
    onnx = TASK.export(str(src), root / "onnx", local=True)
    return src, onnx, generation_spec(src)


def test_onnx_greedy_equals_pytorch_generate_token_for_token_fp32(fp32_export):
    import torch
    from transformers import AutoModelForCausalLM

    src, onnx, spec = fp32_export
    gen = OnnxGenerator.from_files(onnx, src / "tokenizer.json", spec.model_copy(update={"eos_token_ids": [-1]}),
                                   intra_op_threads=1)
    model = AutoModelForCausalLM.from_pretrained(src).eval()
    for prompt in PROMPTS:
        ids = gen.encode(prompt)
        with torch.inference_mode():
            ref = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                 max_new_tokens=32, min_new_tokens=32, do_sample=False, eos_token_id=None,
                                 pad_token_id=model.config.eos_token_id)[0, len(ids):].tolist()
        got = gen.generate_ids(ids, SamplingParams(max_new_tokens=32, temperature=0.0)).token_ids
        assert got == ref, prompt
        assert len(set(got)) > 3  # a real continuation, not one token repeated


def test_int8_bundle_agreement_with_pytorch_is_measured_and_reported(fp32_export, tiny_bundle):
    from model_export.tasks.text_generation import agreement, reference_greedy

    src, _, spec = fp32_export
    refs = reference_greedy(src, tiny_bundle / "tokenizer.json", PROMPTS, 24)
    got = agreement(tiny_bundle / "model.onnx", tiny_bundle / "tokenizer.json", spec, refs)
    print(f"\nint8 vs PyTorch greedy: next-token agreement {got['next_token_agreement']:.3f}, "
          f"exact sequences {got['greedy_exact']:.2f}")
    gate = Manifest.read(tiny_bundle).gate
    assert gate and gate.passed and gate.metrics["fp32_greedy_exact"] == 1.0
    assert got["next_token_agreement"] >= gate.thresholds["next_token_agreement"]


def test_bundle_manifest_describes_the_kv_cache_and_is_int8(tiny_bundle):
    m = verify_bundle(tiny_bundle)
    assert m.task == "text-generation" and m.output_name == "logits"
    assert m.quantization.mode == "dynamic-int8"
    g = m.generation
    assert g["num_layers"] == 2 and g["num_kv_heads"] == 4 and g["head_dim"] == 16 and g["context_length"] == 512
    assert 0 in g["eos_token_ids"]  # <|endoftext|>


def test_generator_session_uses_the_runtimes_shared_session_options(tiny_generator):
    from functions.core.inference.encoder import session_options

    got = tiny_generator.session.get_session_options()
    want = session_options(tiny_generator.threads)
    assert got.graph_optimization_level == want.graph_optimization_level
    assert got.execution_mode == want.execution_mode
    assert (got.intra_op_num_threads, got.inter_op_num_threads) == (1, 1)


def test_greedy_is_deterministic_and_sampling_follows_the_seed(tiny_generator):
    msgs = [("user", "Where is my order?")]
    greedy = SamplingParams(max_new_tokens=16, temperature=0.0)
    assert tiny_generator.chat(msgs, greedy).token_ids == tiny_generator.chat(msgs, greedy).token_ids
    s = SamplingParams(max_new_tokens=24, temperature=1.0, seed=7)
    a, b = tiny_generator.chat(msgs, s), tiny_generator.chat(msgs, s)
    c = tiny_generator.chat(msgs, SamplingParams(max_new_tokens=24, temperature=1.0, seed=8))
    assert a.token_ids == b.token_ids
    assert a.token_ids != c.token_ids


def test_tiny_top_p_keeps_only_the_most_likely_token(tiny_generator):
    ids = tiny_generator.encode("The quick brown fox")
    greedy = tiny_generator.generate_ids(ids, SamplingParams(max_new_tokens=12, temperature=0.0))
    nucleus = tiny_generator.generate_ids(ids, SamplingParams(max_new_tokens=12, temperature=1.0, top_p=1e-6,
                                                              seed=3))
    assert nucleus.token_ids == greedy.token_ids


def test_max_tokens_ends_with_finish_reason_length(tiny_generator):
    ids = tiny_generator.encode("A")
    spec = tiny_generator.spec
    saved = spec.eos_token_ids
    spec.eos_token_ids = [-1]  # never stop on EOS, so the budget is what ends it
    try:
        out = tiny_generator.generate_ids(ids, SamplingParams(max_new_tokens=5, temperature=1.0, seed=1))
    finally:
        spec.eos_token_ids = saved
    assert out.finish_reason == "length" and out.completion_tokens == 5 and out.prompt_tokens == len(ids)


def test_stop_sequence_cuts_the_text_before_it(tiny_generator):
    ids = tiny_generator.encode("Hello")
    full = tiny_generator.generate_ids(ids, SamplingParams(max_new_tokens=40, temperature=1.0, seed=5))
    assert len(full.text) > 4, full
    stop = full.text[2:4]
    cut = tiny_generator.generate_ids(ids, SamplingParams(max_new_tokens=40, temperature=1.0, seed=5, stop=(stop,)))
    assert cut.finish_reason == "stop"
    assert cut.text == full.text[:full.text.find(stop)]
    assert stop not in cut.text


def test_prompt_over_the_context_window_is_a_400(tiny_generator):
    with pytest.raises(BadRequest) as exc:
        tiny_generator.generate_ids([5] * 600, SamplingParams(max_new_tokens=4))
    assert (exc.value.status, exc.value.code) == (400, "context_length_exceeded")  # the same as embeddings


def test_chat_template_marks_roles_with_the_tokenizers_special_tokens(tiny_generator):
    text = tiny_generator.render_chat([("system", "Be brief."), ("user", "Hi")])
    assert text == "<|system|>\nBe brief.\n<|user|>\nHi\n<|assistant|>\n"
    ids = tiny_generator.encode(text)
    assert tiny_generator.tokenizer.token_to_id("<|assistant|>") in ids


def test_a_non_generation_bundle_is_refused(bundles_dir):
    with pytest.raises(BundleError):
        OnnxGenerator(Path(bundles_dir) / "all-minilm-l6-v2")
