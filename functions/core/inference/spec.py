"""What a text-generation bundle promises the runtime: the manifest's ``generation`` block, typed.

The generation exporter (model_export/tasks/text_generation.py) writes this block; the runtime
reads it and nothing else to drive the KV-cache loop and to render chats, so the two cannot drift
silently. ``chat_template`` is the model's own Jinja source (tokenizer_config / GGUF metadata),
rendered by functions/core/inference/chat_template.py.
"""
from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from functions.core.errors import BundleError
from functions.core.inference.manifest import Manifest


class SpecialTokens(BaseModel):
    """The strings a chat template may refer to (``{{ bos_token }}``...), as transformers passes them."""

    model_config = ConfigDict(extra="allow")
    bos_token: str | None = None
    eos_token: str | None = None
    pad_token: str | None = None

    def variables(self) -> dict[str, str]:
        return {k: v for k, v in self.model_dump().items() if isinstance(v, str)}


class ChatTemplate(BaseModel):
    """LEGACY plain role format of the first exporter (no Jinja). A manifest or exporter that still
    gives one is converted to the equivalent Jinja source on validation, so the runtime has one
    renderer; drop this once every exporter writes the model's own template."""

    model_config = ConfigDict(extra="forbid")
    message: str = "<|{role}|>\n{content}\n"
    generation_prompt: str = "<|assistant|>\n"

    def jinja(self) -> str:
        def lit(s: str) -> str:
            return "{{ " + repr(s) + " }}"

        head, _, rest = self.message.partition("{role}")
        mid, _, tail = rest.partition("{content}")
        return ("{% for message in messages %}" + lit(head) + "{{ message['role'] }}" + lit(mid)
                + "{{ message['content'] }}" + lit(tail) + "{% endfor %}"
                + "{% if add_generation_prompt %}" + lit(self.generation_prompt) + "{% endif %}")


class GenerationSpec(BaseModel):
    """The KV-cache layout, stop tokens and chat template of a causal LM exported with past key values."""

    model_config = ConfigDict(extra="allow")
    eos_token_ids: list[int] = Field(min_length=1)  # any of these ends a generation (e.g. <|im_end|>)
    context_length: int = Field(gt=1)               # positions the model has (prompt + new tokens)
    num_layers: int = Field(gt=0)
    num_kv_heads: int = Field(gt=0)
    head_dim: int = Field(gt=0)
    past_name: str = "past_key_values.{layer}.{kind}"   # graph inputs, kind in {key, value}
    present_name: str = "present.{layer}.{kind}"        # graph outputs, same layout
    uses_position_ids: bool = True
    # The model's own Jinja chat template; None: a base model, served by /v1/completions only.
    chat_template: str | None = Field(None, min_length=1)
    special_tokens: SpecialTokens = Field(default_factory=SpecialTokens)

    @model_validator(mode="before")
    @classmethod
    def _legacy_template(cls, data: Any) -> Any:
        if isinstance(data, dict):
            tpl = data.get("chat_template")
            if isinstance(tpl, dict):
                data = {**data, "chat_template": ChatTemplate.model_validate(tpl).jinja()}
            elif isinstance(tpl, ChatTemplate):
                data = {**data, "chat_template": tpl.jinja()}
        return data

    @classmethod
    def of(cls, manifest: Manifest) -> "GenerationSpec":
        if manifest.task != "text-generation" or not manifest.generation:
            raise BundleError(f"bundle {manifest.name}@{manifest.version} is not a text-generation bundle")
        try:
            return cls.model_validate(manifest.generation)
        except ValueError as exc:
            raise BundleError(f"bundle {manifest.name}@{manifest.version}: invalid generation block "
                              f"({exc.__class__.__name__})") from exc

    def past_inputs(self) -> list[str]:
        return [self.past_name.format(layer=i, kind=k) for i in range(self.num_layers) for k in ("key", "value")]

    def present_outputs(self) -> list[str]:
        return [self.present_name.format(layer=i, kind=k)
                for i in range(self.num_layers) for k in ("key", "value")]
