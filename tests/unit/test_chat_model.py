"""The real chat model (smollm2-135m-instruct) through the light loop: its own template, one BOS, real answers."""
from __future__ import annotations

from pathlib import Path

import pytest

from functions.core.inference.generator import OnnxGenerator, SamplingParams

CHAT_MODEL = "smollm2-135m-instruct"
FRANCE = [("user", "What is the capital of France?")]


@pytest.fixture(scope="module")
def chat_bundle(bundles_dir: Path) -> Path:
    return bundles_dir / CHAT_MODEL


@pytest.fixture(scope="module")
def chat_model(chat_bundle: Path) -> OnnxGenerator:
    return OnnxGenerator(chat_bundle, intra_op_threads=2)


def _hf_tokenizer(chat_model: OnnxGenerator):
    from transformers import PreTrainedTokenizerFast

    spec = chat_model.spec
    return PreTrainedTokenizerFast(tokenizer_file=str(chat_model.bundle_dir / "tokenizer.json"),
                                   chat_template=spec.chat_template, **spec.special_tokens.variables())


def test_the_bundle_carries_the_models_own_chatml_template(chat_model):
    spec = chat_model.spec
    assert "<|im_start|>" in spec.chat_template and "add_generation_prompt" in spec.chat_template
    assert chat_model.tokenizer.token_to_id("<|im_end|>") in spec.eos_token_ids


@pytest.mark.parametrize("messages", [FRANCE, [("system", "Answer in one word."), ("user", "Capital of Italy?"),
                                               ("assistant", "Rome"), ("user", "And of Spain?")]])
def test_prompt_text_and_ids_equal_transformers_apply_chat_template(chat_model, messages):
    tok = _hf_tokenizer(chat_model)
    conv = [{"role": r, "content": c} for r, c in messages]
    assert chat_model.render_chat(messages) == tok.apply_chat_template(conv, tokenize=False,
                                                                       add_generation_prompt=True)
    assert chat_model.encode_chat(messages) == tok.apply_chat_template(conv, tokenize=True, add_generation_prompt=True)


def test_the_chat_prompt_starts_with_exactly_one_bos(chat_model):
    # The GGUF-converted tokenizer adds BOS in its post-processor; the exporter removes that
    # (pinned in test_export_generation) and encode_chat adds no special tokens (test_generation).
    bos = chat_model.tokenizer.token_to_id("<|im_start|>")
    text = chat_model.render_chat(FRANCE)
    assert text.startswith("<|im_start|>")
    assert chat_model.encode(text)[:2] != [bos, bos]
    ids = chat_model.encode_chat(FRANCE)
    assert ids[0] == bos and ids[1] != bos                 # the template's own BOS only


def test_greedy_answers_the_france_question_and_stops_at_the_end_of_turn(chat_model):
    [out] = chat_model.chat(FRANCE, SamplingParams(max_new_tokens=48, temperature=0.0))
    assert "Paris" in out.text, out.text
    assert out.finish_reason == "stop" and "<|im_end|>" not in out.text
