"""Request models for the HTTP API (pydantic), validated at the edge before any model work.

Responses are built as plain dicts by the service (large float arrays do not benefit from a
pydantic round trip); their shapes are documented in docs/ARCHITECTURE.md.
"""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, field_validator

from functions.core.inference.text import clean_text



class _Request(BaseModel):
    # Unknown fields are refused (422 naming the field) rather than silently ignored: a typo in
    # an option must not change results unnoticed.
    model_config = ConfigDict(extra="forbid")


TextInput = StrictStr | list[StrictStr] | list[StrictInt] | list[list[StrictInt]]


class _TextsRequest(_Request):
    model: StrictStr | None = None
    input: TextInput

    @field_validator("input")
    @classmethod
    def _only_text(cls, v: object) -> object:
        if isinstance(v, list) and not v:
            raise ValueError("input must not be an empty list")
        if isinstance(v, list) and not isinstance(v[0], str):
            # OpenAI also takes token ids (tiktoken ids); they mean nothing to this model's vocabulary,
            # so they are refused instead of producing silently wrong vectors.
            raise ValueError("token-id input is not supported by this server; send text "
                             "(LangChain: OpenAIEmbeddings(check_embedding_ctx_length=False))")
        texts = [v] if isinstance(v, str) else v
        for i, t in enumerate(texts):
            if t == "":
                raise ValueError(f"input[{i}] is an empty string")
        return v

    def texts(self) -> list[str]:
        raw = [self.input] if isinstance(self.input, str) else self.input
        return [clean_text(t) for t in raw]  # type: ignore[arg-type]


class EmbeddingsRequest(_TextsRequest):
    """OpenAI ``POST /v1/embeddings``."""

    encoding_format: Literal["float", "base64"] = "float"
    # The model's native size is always accepted; a smaller one only for models trained for
    # truncation (manifest ``matryoshka_dimensions``). Checked against the model in the service.
    dimensions: StrictInt | None = Field(default=None, ge=1)
    user: str | None = None  # accepted for compatibility; not stored


class ClassifyRequest(_TextsRequest):
    """``POST /v1/classify``: label probabilities per input (text-embeddings-inference ``/predict`` style)."""

    model: StrictStr  # no server-side default classifier: say which one
    top_k: StrictInt | None = Field(default=None, ge=1)  # None: every label; "2" is refused, not coerced
