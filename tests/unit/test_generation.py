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
    from functions.core.inference.spec import GenerationSpec
    from model_export.tasks.text_generation import TASK, build_tiny_gpt2, generation_block

    root = tmp_path_factory.mktemp("tiny")
    src = build_tiny_gpt2(root / "source")
    onnx = TASK.export(str(src), root / "onnx", local=True)
    # The loop needs only the KV-cache layout here; chat rendering is tested on the bundle.
    layout = {k: v for k, v in generation_block(src).items() if k not in ("chat_template", "special_tokens")}
    return src, onnx, GenerationSpec.model_validate(layout)


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
    from model_export.tasks.text_generation import candidate_metrics, generation_block, reference_run

    src = fp32_export[0]
    block = generation_block(src)
    ref = reference_run(src, tiny_bundle / "tokenizer.json", block)
    got = candidate_metrics(tiny_bundle / "model.onnx", tiny_bundle / "tokenizer.json", block, ref)
    print(f"\nint8 vs PyTorch: next-token agreement {got['next_token_agreement']:.3f}, "
          f"perplexity ratio {got['ppl_ratio']:.4f}")
    gate = Manifest.read(tiny_bundle).gate
    assert gate and gate.passed and gate.metrics["fp32_greedy_exact"] == 1.0
    assert got["next_token_agreement"] >= gate.thresholds["next_token_agreement"]
    assert got["ppl_ratio"] == pytest.approx(gate.metrics["ppl_ratio"], rel=1e-4)  # the gate measured this file


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
    assert tiny_generator.chat(msgs, greedy)[0].token_ids == tiny_generator.chat(msgs, greedy)[0].token_ids
    s = SamplingParams(max_new_tokens=24, temperature=1.0, seed=7)
    [a], [b] = tiny_generator.chat(msgs, s), tiny_generator.chat(msgs, s)
    [c] = tiny_generator.chat(msgs, SamplingParams(max_new_tokens=24, temperature=1.0, seed=8))
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
    ids = tiny_generator.encode_chat([("system", "Be brief."), ("user", "Hi")])
    assert tiny_generator.tokenizer.token_to_id("<|assistant|>") in ids


def test_chat_prompts_are_encoded_without_added_special_tokens(tiny_bundle, tmp_path):
    """A GGUF-converted tokenizer.json adds BOS in its post-processor; the template already wrote it,
    so encoding the rendered chat with special tokens would double it (the model then answers the
    France question in garbled French). The chat path must encode with add_special_tokens=False."""
    import json
    import shutil

    from tokenizers import Tokenizer, processors

    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    tok = Tokenizer.from_file(str(bundle / "tokenizer.json"))
    bos = "<|system|>"
    tok.post_processor = processors.TemplateProcessing(single=f"{bos} $A", special_tokens=[(bos, tok.token_to_id(bos))])
    tok.save(str(bundle / "tokenizer.json"))
    gen = OnnxGenerator.from_files(bundle / "model.onnx", bundle / "tokenizer.json", tiny_generator_spec(bundle),
                                   intra_op_threads=1)
    bos_id = tok.token_to_id(bos)
    text = gen.render_chat([("system", "Be brief."), ("user", "Hi")])
    assert gen.encode(text)[:2] == [bos_id, bos_id]  # the trap: BOS twice
    ids = gen.encode_chat([("system", "Be brief."), ("user", "Hi")])
    assert ids[0] == bos_id and ids[1] != bos_id and ids == tok.encode(text, add_special_tokens=False).ids
    assert json.loads((bundle / "tokenizer.json").read_text())["post_processor"]["type"] == "TemplateProcessing"


def tiny_generator_spec(bundle):
    from functions.core.inference.spec import GenerationSpec

    return GenerationSpec.of(Manifest.read(bundle))


def test_stream_yields_the_same_text_token_by_token_and_can_be_cancelled(tiny_generator):
    ids = tiny_generator.encode("The quick brown fox")
    params = SamplingParams(max_new_tokens=12, temperature=1.0, seed=4)
    whole = tiny_generator.generate_ids(ids, params)
    deltas = list(tiny_generator.stream(ids, params))
    assert "".join(d.text for d in deltas) == whole.text
    assert [d.token_id for d in deltas if d.token_id >= 0] == whole.token_ids
    it = tiny_generator.stream(ids, params)
    first = next(it)
    it.close()  # a client gone away: the loop stops at its next step, nothing left running
    assert first.token_id == whole.token_ids[0]
    with pytest.raises(StopIteration):
        next(it)


def test_n_choices_share_one_prefill_and_one_seeded_stream(tiny_generator):
    ids = tiny_generator.encode("Hello")
    params = SamplingParams(max_new_tokens=10, temperature=1.0, seed=9, n=3)
    a, b = tiny_generator.generate_n(ids, params), tiny_generator.generate_n(ids, params)
    assert [g.token_ids for g in a] == [g.token_ids for g in b]
    assert len({tuple(g.token_ids) for g in a}) > 1
    greedy = tiny_generator.generate_n(ids, SamplingParams(max_new_tokens=10, temperature=0.0, n=2))
    assert greedy[0].token_ids == greedy[1].token_ids == tiny_generator.generate_ids(
        ids, SamplingParams(max_new_tokens=10, temperature=0.0)).token_ids


def test_logit_bias_forces_and_bans_tokens(tiny_generator):
    ids = tiny_generator.encode("Hello")
    forced = tiny_generator.generate_ids(ids, SamplingParams(max_new_tokens=4, temperature=1.0, seed=1,
                                                             logit_bias=((42, 100.0),)))
    assert forced.token_ids == [42] * 4
    greedy = tiny_generator.generate_ids(ids, SamplingParams(max_new_tokens=6, temperature=0.0))
    banned = tiny_generator.generate_ids(ids, SamplingParams(max_new_tokens=6, temperature=0.0,
                                                             logit_bias=tuple((t, -100.0) for t in greedy.token_ids)))
    assert not set(banned.token_ids) & set(greedy.token_ids)


def test_presence_and_frequency_penalties_stop_repetition(tiny_generator):
    spec = tiny_generator.spec
    saved, spec.eos_token_ids = spec.eos_token_ids, [-1]
    try:
        ids = tiny_generator.encode("A")
        plain = tiny_generator.generate_ids(ids, SamplingParams(max_new_tokens=40, temperature=0.0))
        pen = tiny_generator.generate_ids(ids, SamplingParams(max_new_tokens=40, temperature=0.0,
                                                              presence_penalty=2.0, frequency_penalty=2.0))
    finally:
        spec.eos_token_ids = saved
    assert len(set(pen.token_ids)) > len(set(plain.token_ids))
    # A negative presence penalty rewards repeats: greedy then locks onto tokens already said.
    rep = tiny_generator.generate_ids(ids, SamplingParams(max_new_tokens=20, temperature=0.0, presence_penalty=-2.0,
                                                          frequency_penalty=-2.0))
    assert len(set(rep.token_ids)) <= len(set(plain.token_ids[:20]))


def test_logprobs_are_normalised_and_the_top_list_is_sorted(tiny_generator):
    import math

    import numpy as np

    ids = tiny_generator.encode("Hello")
    out = tiny_generator.generate_ids(ids, SamplingParams(max_new_tokens=3, temperature=0.0, top_logprobs=5))
    assert len(out.logprobs) == 3
    first = out.logprobs[0]
    logits = tiny_generator.logits(ids)[-1].astype(np.float64)
    want = logits - (logits.max() + math.log(np.exp(logits - logits.max()).sum()))
    assert first.token_id == out.token_ids[0] and abs(first.logprob - want[first.token_id]) < 1e-3
    assert [i for i, _ in first.top] == list(np.argsort(-want)[:5])
    none = tiny_generator.generate_ids(ids, SamplingParams(max_new_tokens=3, temperature=0.0))
    assert none.logprobs is None and none.token_ids == out.token_ids


def test_non_finite_logits_never_reach_the_sampler():
    import numpy as np

    from functions.core.inference.generator import _Logits

    rng = np.random.default_rng(0)
    z = np.full(8, np.nan, dtype=np.float32)
    z[3] = 1.0
    for params in (SamplingParams(4, temperature=0.7), SamplingParams(4, temperature=0.0, top_logprobs=2),
                   SamplingParams(4, temperature=1e-30)):
        assert _Logits(params, 8, rng).pick(z)[0] == 3
    with pytest.raises(BundleError):
        _Logits(SamplingParams(4, temperature=0.7), 8, rng).pick(np.full(8, np.nan, dtype=np.float32))
    with pytest.raises(BundleError):
        _Logits(SamplingParams(4, temperature=0.0), 8, rng).pick(np.full(8, np.inf, dtype=np.float32))


def test_a_non_generation_bundle_is_refused(bundles_dir):
    with pytest.raises(BundleError):
        OnnxGenerator(Path(bundles_dir) / "all-minilm-l6-v2")
