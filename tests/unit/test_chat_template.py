"""The model's own Jinja chat template, rendered in the sandbox exactly as transformers renders it."""
from __future__ import annotations

import pytest

from functions.core.errors import BadRequest, BundleError
from functions.core.inference.chat_template import ChatRenderer
from functions.core.inference.spec import ChatTemplate, GenerationSpec

# ChatML with a default system prompt, loop controls, whitespace control and raise_exception: the
# features real templates use (this one is a test input, not a model's).
CHATML = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{% endif %}"
    "{% if message['role'] == 'tool' %}{{ raise_exception('tool messages are not supported') }}{% endif %}"
    "{% if message['content'] == 'skip' %}{% continue %}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}\n  {{ bos_token }}assistant\n{% endif %}"
)
SPECIAL = {"bos_token": "<|im_start|>", "eos_token": "<|im_end|>"}
CONVERSATIONS = [
    [("user", "What is the capital of France?")],
    [("system", "Be brief."), ("user", "Hi"), ("assistant", "Hello!"), ("user", "skip"), ("user", "Bye")],
    [("user", "Ünïcödé — 日本語 {{ not a tag }}")],
]


@pytest.mark.parametrize("messages", CONVERSATIONS)
def test_rendering_equals_transformers_apply_chat_template(messages):
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel({"a": 0}, unk_token="a")),
                                  unk_token="a", **SPECIAL)
    want = tok.apply_chat_template([{"role": r, "content": c} for r, c in messages], chat_template=CHATML,
                                   tokenize=False, add_generation_prompt=True)
    got = ChatRenderer(CHATML, SPECIAL, label="t").render(messages)
    assert got == want
    assert got.endswith("<|im_start|>assistant\n")


def test_default_system_prompt_comes_from_the_template_only_when_none_is_given():
    r = ChatRenderer(CHATML, SPECIAL, label="t")
    assert r.render([("user", "Hi")]).startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>")
    mine = r.render([("system", "Be brief."), ("user", "Hi")])
    assert mine.startswith("<|im_start|>system\nBe brief.<|im_end|>") and "helpful assistant" not in mine


def test_raise_exception_in_the_template_is_a_400_naming_messages():
    with pytest.raises(BadRequest) as exc:
        ChatRenderer(CHATML, SPECIAL, label="m@1").render([("tool", "x")])
    assert exc.value.status == 400 and exc.value.param == "messages"
    assert "tool messages are not supported" in exc.value.message


@pytest.mark.parametrize("source", [
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",   # the classic sandbox escape
    "{{ messages.append({'role': 'x'}) }}",              # immutable: no mutation of the inputs
])
def test_the_sandbox_refuses_unsafe_templates(source):
    with pytest.raises(BundleError, match="failed to render"):
        ChatRenderer(source, {}, label="m@1").render([("user", "hi")])


def test_a_template_that_does_not_compile_is_a_bundle_error():
    with pytest.raises(BundleError, match="does not compile"):
        ChatRenderer("{% for m in messages %}", {}, label="m@1")


def test_the_legacy_role_format_becomes_the_equivalent_jinja():
    spec = GenerationSpec.model_validate({"eos_token_ids": [0], "context_length": 8, "num_layers": 1,
                                          "num_kv_heads": 1, "head_dim": 1,
                                          "chat_template": ChatTemplate().model_dump()})
    text = ChatRenderer(spec.chat_template, {}, label="t").render([("system", "Be brief."), ("user", "Hi")])
    assert text == "<|system|>\nBe brief.\n<|user|>\nHi\n<|assistant|>\n"


def test_spec_carries_the_template_source_and_special_tokens():
    spec = GenerationSpec.model_validate({"eos_token_ids": [2], "context_length": 8, "num_layers": 1,
                                          "num_kv_heads": 1, "head_dim": 1, "chat_template": CHATML,
                                          "special_tokens": SPECIAL})
    assert spec.chat_template == CHATML
    assert spec.special_tokens.variables() == SPECIAL
