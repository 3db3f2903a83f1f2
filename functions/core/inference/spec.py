"""What a text-generation bundle promises the runtime: the manifest's ``generation`` block, typed.

The generation exporter (model_export/tasks/text_generation.py) writes this block; the runtime
reads it and nothing else to drive the KV-cache loop, so the two cannot drift silently.
"""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from functions.core.errors import BundleError
from functions.core.inference.manifest import Manifest


class ChatTemplate(BaseModel):
    """A plain format (not Jinja: the Lambda zip has no template engine) that renders messages."""

    model_config = ConfigDict(extra="forbid")
    message: str = "<|{role}|>\n{content}\n"      # one per message; {role} and {content} filled in
    generation_prompt: str = "<|assistant|>\n"    # appended once, after the last message

    def render(self, messages: list[tuple[str, str]]) -> str:
        parts = [self.message.replace("{role}", role).replace("{content}", content)
                 for role, content in messages]
        return "".join(parts) + self.generation_prompt


class GenerationSpec(BaseModel):
    """The KV-cache layout and stop tokens of a causal LM exported with past key values."""

    model_config = ConfigDict(extra="allow")
    eos_token_ids: list[int] = Field(min_length=1)  # any of these ends a generation
    context_length: int = Field(gt=1)               # positions the model has (prompt + new tokens)
    num_layers: int = Field(gt=0)
    num_kv_heads: int = Field(gt=0)
    head_dim: int = Field(gt=0)
    past_name: str = "past_key_values.{layer}.{kind}"   # graph inputs, kind in {key, value}
    present_name: str = "present.{layer}.{kind}"        # graph outputs, same layout
    uses_position_ids: bool = True
    chat_template: ChatTemplate = Field(default_factory=ChatTemplate)

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
