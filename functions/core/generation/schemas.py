"""OpenAI chat/completions request models (validated at the edge) and the response bodies.

Only what Cirrus honours is accepted; a field the OpenAI API has but Cirrus cannot honour (``n``
above 1, streaming, penalties) is refused by name rather than silently ignored.
"""
from __future__ import annotations

import time
import uuid
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, field_validator, model_validator

from functions.core.inference.generator import Generation, SamplingParams
from functions.core.inference.text import clean_text

Role = Literal["system", "developer", "user", "assistant"]
MAX_STOP = 4  # as in the OpenAI API


class TextPart(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["text"]
    text: StrictStr


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Role
    content: StrictStr | list[TextPart]
    name: StrictStr | None = None

    def text(self) -> str:
        raw = self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)
        return clean_text(raw)


class _GenerationRequest(BaseModel):
    """Fields shared by chat and completions: sampling, budget, stops."""

    model_config = ConfigDict(extra="forbid")
    model: StrictStr = Field(min_length=1, max_length=256)
    max_tokens: StrictInt | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    stop: StrictStr | list[StrictStr] | None = None
    seed: StrictInt | None = None
    n: StrictInt | None = Field(None, ge=1, le=1, description="only one choice per request")
    stream: Literal[False] | None = Field(None, description="streaming is not supported; use async jobs")
    user: StrictStr | None = None
    presence_penalty: float | None = Field(None, ge=0.0, le=0.0)
    frequency_penalty: float | None = Field(None, ge=0.0, le=0.0)

    @field_validator("stop")
    @classmethod
    def _stops(cls, v: str | list[str] | None) -> str | list[str] | None:
        stops = [v] if isinstance(v, str) else (v or [])
        if len(stops) > MAX_STOP:
            raise ValueError(f"at most {MAX_STOP} stop sequences")
        if any(s == "" for s in stops):
            raise ValueError("stop sequences must not be empty")
        return v

    def stops(self) -> tuple[str, ...]:
        return tuple([self.stop] if isinstance(self.stop, str) else (self.stop or []))

    def budget(self, default: int) -> int:
        return self.max_tokens or default

    def heavy_sampling(self, default_max_tokens: int) -> dict:
        """The budget, sampling and stop fields of a heavy-endpoint body (TGI takes OpenAI's names)."""
        body: dict = {"max_tokens": self.budget(default_max_tokens), "stream": False}
        for key in ("temperature", "top_p", "seed"):
            if getattr(self, key) is not None:
                body[key] = getattr(self, key)
        if self.stop is not None:
            body["stop"] = list(self.stops())
        return body

    def sampling(self, default_max_tokens: int) -> SamplingParams:
        return SamplingParams(max_new_tokens=self.budget(default_max_tokens),
                              temperature=1.0 if self.temperature is None else self.temperature,
                              top_p=1.0 if self.top_p is None else self.top_p, seed=self.seed, stop=self.stops())


class ChatCompletionRequest(_GenerationRequest):
    """OpenAI ``POST /v1/chat/completions`` (non-streaming)."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: StrictInt | None = Field(None, ge=1)  # the newer name of max_tokens

    @model_validator(mode="after")
    def _one_budget(self) -> "ChatCompletionRequest":
        if self.max_tokens is None and self.max_completion_tokens is not None:
            self.max_tokens = self.max_completion_tokens
        return self

    def turns(self) -> list[tuple[str, str]]:
        # "developer" is OpenAI's newer name for the system role.
        return [("system" if m.role == "developer" else m.role, m.text()) for m in self.messages]

    def heavy_payload(self, default_max_tokens: int) -> dict:
        """The body for the heavy endpoint: TGI's Messages API (see docs/heavy.md)."""
        return {"model": self.model, "messages": [{"role": r, "content": c} for r, c in self.turns()],
                **self.heavy_sampling(default_max_tokens)}


class CompletionRequest(_GenerationRequest):
    """OpenAI ``POST /v1/completions`` (legacy text completion, one prompt)."""

    prompt: StrictStr | list[StrictStr] = Field(min_length=1)
    echo: Literal[False] | None = None

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, v: str | list[str]) -> str | list[str]:
        if isinstance(v, list) and len(v) != 1:
            raise ValueError("exactly one prompt per request")
        text = v if isinstance(v, str) else v[0]
        if not text:
            raise ValueError("prompt must not be empty")
        return v

    def text(self) -> str:
        return clean_text(self.prompt if isinstance(self.prompt, str) else self.prompt[0])

    def heavy_payload(self, default_max_tokens: int) -> dict:
        """The body for the heavy endpoint: TGI's OpenAI-compatible completions route."""
        return {"model": self.model, "prompt": self.text(), **self.heavy_sampling(default_max_tokens)}


def _usage(gen: Generation) -> dict[str, int]:
    return {"prompt_tokens": gen.prompt_tokens, "completion_tokens": gen.completion_tokens,
            "total_tokens": gen.prompt_tokens + gen.completion_tokens}


def chat_completion_body(model: str, gen: Generation, *, fingerprint: str | None = None) -> dict:
    return {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
            "model": model, "system_fingerprint": fingerprint,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": gen.text},
                         "logprobs": None, "finish_reason": gen.finish_reason}],
            "usage": _usage(gen)}


def completion_body(model: str, gen: Generation, *, fingerprint: str | None = None) -> dict:
    return {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()),
            "model": model, "system_fingerprint": fingerprint,
            "choices": [{"index": 0, "text": gen.text, "logprobs": None, "finish_reason": gen.finish_reason}],
            "usage": _usage(gen)}
