"""OpenAI chat/completions request models (validated at the edge) and the response bodies.

Every sampling field OpenAI clients send is accepted with OpenAI's bounds (a value out of bounds,
non-finite or of the wrong type is a 422 naming the field). A field one route cannot honour
(``tools`` on the light route, ``logit_bias`` on the heavy one) is refused by name, with the route
that can, rather than silently ignored: see ``light_refusals`` / ``heavy_refusals``.
"""
from __future__ import annotations

import time
import uuid
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, field_validator, model_validator

from functions.core.generation.tgi import ResponseFormat, Tool, ToolChoice
from functions.core.inference.generator import Generation, SamplingParams, TokenLogprob
from functions.core.inference.text import clean_text

Role = Literal["system", "developer", "user", "assistant"]
MAX_STOP = 4            # as in the OpenAI API
MAX_N = 4               # choices per request on the light route (each costs a full decode)
MAX_TOP_LOGPROBS = 20   # as in the OpenAI API (legacy completions: 5)
MAX_LOGIT_BIAS = 300    # entries; OpenAI's own limit
SEED_MAX = 2**64 - 1
# Fields of OpenAI's chat API that only the heavy endpoint (TGI) implements.
HEAVY_ONLY = ("tools", "tool_choice", "parallel_tool_calls", "response_format")
# Sampling fields the light loop implements and TGI does not (TGI documents them as unused).
LIGHT_ONLY = ("logit_bias", "n")


def _finite(lo: float, hi: float, **kw: Any) -> Any:
    return Field(None, ge=lo, le=hi, allow_inf_nan=False, **kw)


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


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    include_usage: StrictBool | None = None


class _GenerationRequest(BaseModel):
    """Fields shared by chat and completions: sampling, budget, stops."""

    model_config = ConfigDict(extra="forbid")
    model: StrictStr = Field(min_length=1, max_length=256)
    max_tokens: StrictInt | None = Field(None, ge=1)
    temperature: float | None = _finite(0.0, 2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0, allow_inf_nan=False)
    stop: StrictStr | list[StrictStr] | None = None
    seed: StrictInt | None = Field(None, ge=0, le=SEED_MAX)
    n: StrictInt | None = Field(None, ge=1, le=MAX_N)
    stream: StrictBool | None = None
    stream_options: StreamOptions | None = None
    user: StrictStr | None = Field(None, max_length=256)  # accepted (abuse tracing); never logged
    presence_penalty: float | None = _finite(-2.0, 2.0)
    frequency_penalty: float | None = _finite(-2.0, 2.0)
    logit_bias: dict[StrictStr, float] | None = None

    @field_validator("stop")
    @classmethod
    def _stops(cls, v: str | list[str] | None) -> str | list[str] | None:
        stops = [v] if isinstance(v, str) else (v or [])
        if len(stops) > MAX_STOP:
            raise ValueError(f"at most {MAX_STOP} stop sequences")
        if any(s == "" for s in stops):
            raise ValueError("stop sequences must not be empty")
        return v

    @field_validator("logit_bias")
    @classmethod
    def _bias(cls, v: dict[str, float] | None) -> dict[str, float] | None:
        if v is None:
            return v
        if len(v) > MAX_LOGIT_BIAS:
            raise ValueError(f"at most {MAX_LOGIT_BIAS} entries")
        for key, bias in v.items():
            if not (key.isascii() and key.isdigit() and len(key) <= 9):
                raise ValueError("keys must be token ids (non-negative integers as strings)")
            if not (-100.0 <= bias <= 100.0):  # NaN fails this too
                raise ValueError("biases must be between -100 and 100")
        return v

    @model_validator(mode="after")
    def _stream_options_need_stream(self) -> "_GenerationRequest":
        if self.stream_options is not None and not self.stream:
            raise ValueError("stream_options: only allowed when stream is true")
        if self.stream and (self.n or 1) > 1:
            raise ValueError("n: a streamed answer has one choice; send n > 1 without stream")
        if self.stream and getattr(self, "logprobs", None) not in (None, False):
            raise ValueError("logprobs: not sent in streamed answers; send the request without stream")
        if self.stream and getattr(self, "tools", None):
            # Streamed answers carry text deltas only; tool calls would be lost on the way.
            raise ValueError("tools: tool calls are not streamed; send the request without stream")
        return self

    @property
    def streamed(self) -> bool:
        return bool(self.stream)

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    def stops(self) -> tuple[str, ...]:
        return tuple([self.stop] if isinstance(self.stop, str) else (self.stop or []))

    def budget(self, default: int) -> int:
        return self.max_tokens or default

    def bias_pairs(self) -> tuple[tuple[int, float], ...]:
        return tuple((int(k), float(b)) for k, b in (self.logit_bias or {}).items())

    def top_logprobs_wanted(self) -> int | None:
        """None: no logprobs; k: each token's logprob and the k most likely alternatives."""
        raise NotImplementedError

    def _set(self, names: tuple[str, ...]) -> list[str]:
        return [f for f in names if getattr(self, f, None) not in (None, False)
                and not (f == "n" and self.n == 1)
                and not (f == "response_format" and getattr(self, f).type == "text")]

    def light_refusals(self) -> list[str]:
        """Fields set in this request that the light route cannot honour."""
        return self._set(HEAVY_ONLY)

    def heavy_refusals(self) -> list[str]:
        """Fields set in this request that the heavy endpoint (TGI) cannot honour."""
        return self._set(LIGHT_ONLY)

    def heavy_sampling(self, default_max_tokens: int) -> dict:
        """The budget, sampling and stop fields of a heavy-endpoint body (TGI takes OpenAI's names)."""
        body: dict = {"max_tokens": self.budget(default_max_tokens), "stream": False}
        if self.include_usage:  # the heavy client sets "stream": true; TGI >= 2.2 honours this
            body["stream_options"] = {"include_usage": True}
        for key in ("temperature", "top_p", "seed", "presence_penalty", "frequency_penalty"):
            if getattr(self, key) is not None:
                body[key] = getattr(self, key)
        if self.stop is not None:
            body["stop"] = list(self.stops())
        return body

    def sampling(self, default_max_tokens: int) -> SamplingParams:
        return SamplingParams(max_new_tokens=self.budget(default_max_tokens),
                              temperature=1.0 if self.temperature is None else self.temperature,
                              top_p=1.0 if self.top_p is None else self.top_p, seed=self.seed, stop=self.stops(),
                              presence_penalty=self.presence_penalty or 0.0,
                              frequency_penalty=self.frequency_penalty or 0.0, logit_bias=self.bias_pairs(),
                              top_logprobs=self.top_logprobs_wanted(), n=self.n or 1)


class ChatCompletionRequest(_GenerationRequest):
    """OpenAI ``POST /v1/chat/completions`` (``stream: true`` answers with server-sent events)."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: StrictInt | None = Field(None, ge=1)  # the newer name of max_tokens
    logprobs: StrictBool | None = None
    top_logprobs: StrictInt | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)
    # Heavy-only (TGI implements them); the light route refuses them by name.
    # Typed as OpenAI defines them (generation/tgi.py), so a malformed tool or format is a 422 here,
    # before the GPU endpoint is called.
    tools: list[Tool] | None = Field(None, min_length=1, max_length=128)
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: StrictBool | None = None
    response_format: ResponseFormat | None = None

    @model_validator(mode="after")
    def _one_budget(self) -> "ChatCompletionRequest":
        if self.max_tokens is None and self.max_completion_tokens is not None:
            self.max_tokens = self.max_completion_tokens
        if self.response_format is not None:
            self.response_format.grammar()  # json_schema without a schema: refused here, not by TGI
        return self

    @field_validator("top_logprobs")
    @classmethod
    def _needs_logprobs(cls, v: int | None, info: Any) -> int | None:
        if v is not None and not info.data.get("logprobs"):
            raise ValueError("top_logprobs needs logprobs: true")
        return v

    def top_logprobs_wanted(self) -> int | None:
        return (self.top_logprobs or 0) if self.logprobs else None

    prompt_param: ClassVar[str] = "messages"  # the field a prompt_too_long error names

    def prompt_chars(self) -> int:
        """Characters of the prompt as sent (every message's content and name), counted raw: cheap,
        and what the cap applies to before any cleaning or tokenizing."""
        return sum((len(m.content) if isinstance(m.content, str) else sum(len(p.text) for p in m.content))
                   + len(m.name or "") for m in self.messages)

    def turns(self) -> list[tuple[str, str]]:
        # "developer" is OpenAI's newer name for the system role.
        return [("system" if m.role == "developer" else m.role, m.text()) for m in self.messages]

    def heavy_payload(self, default_max_tokens: int) -> dict:
        """The body for the heavy endpoint: TGI's Messages API (see docs/heavy.md)."""
        body = {"model": self.model, "messages": [{"role": r, "content": c} for r, c in self.turns()],
                **self.heavy_sampling(default_max_tokens)}
        for key in ("logprobs", "top_logprobs", "tools", "tool_choice", "parallel_tool_calls"):
            value = getattr(self, key)
            if isinstance(value, list):
                value = [v.model_dump(exclude_none=True) for v in value]
            elif isinstance(value, BaseModel):
                value = value.model_dump(exclude_none=True)
            if value is not None:
                body[key] = value
        grammar = self.response_format.grammar() if self.response_format else None
        if grammar is not None:
            body["response_format"] = grammar  # TGI's grammar shape, not OpenAI's (generation/tgi.py)
        return body


class CompletionRequest(_GenerationRequest):
    """OpenAI ``POST /v1/completions`` (legacy text completion, one prompt)."""

    prompt: StrictStr | list[StrictStr] = Field(min_length=1)
    echo: Literal[False] | None = None
    logprobs: StrictInt | None = Field(None, ge=0, le=5)  # legacy: how many alternatives (0: just the token's)

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, v: str | list[str]) -> str | list[str]:
        if isinstance(v, list) and len(v) != 1:
            raise ValueError("exactly one prompt per request")
        text = v if isinstance(v, str) else v[0]
        if not text:
            raise ValueError("prompt must not be empty")
        return v

    def top_logprobs_wanted(self) -> int | None:
        return self.logprobs

    prompt_param: ClassVar[str] = "prompt"

    def prompt_chars(self) -> int:
        return len(self.prompt if isinstance(self.prompt, str) else self.prompt[0])

    def text(self) -> str:
        return clean_text(self.prompt if isinstance(self.prompt, str) else self.prompt[0])

    def heavy_payload(self, default_max_tokens: int) -> dict:
        """The body for the heavy endpoint: TGI's OpenAI-compatible completions route."""
        body = {"model": self.model, "prompt": self.text(), **self.heavy_sampling(default_max_tokens)}
        if self.logprobs is not None:
            body["logprobs"] = self.logprobs
        return body


def _usage(gens: list[Generation]) -> dict[str, int]:
    prompt = gens[0].prompt_tokens
    completion = sum(g.completion_tokens for g in gens)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _token_entry(text: str, logprob: float) -> dict:
    return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8"))}


def chat_logprobs(lps: list[TokenLogprob] | None, token_text: Any) -> dict | None:
    """OpenAI chat ``logprobs``: ``{"content": [{token, logprob, bytes, top_logprobs}]}``."""
    if lps is None:
        return None
    return {"content": [{**_token_entry(token_text(lp.token_id), lp.logprob),
                         "top_logprobs": [_token_entry(token_text(i), v) for i, v in lp.top]} for lp in lps],
            "refusal": None}


def completion_logprobs(lps: list[TokenLogprob] | None, token_text: Any) -> dict | None:
    """Legacy completions ``logprobs``: parallel lists of tokens, their logprobs, top maps, offsets."""
    if lps is None:
        return None
    tokens = [token_text(lp.token_id) for lp in lps]
    offsets, at = [], 0
    for t in tokens:
        offsets.append(at)
        at += len(t)
    return {"tokens": tokens, "token_logprobs": [lp.logprob for lp in lps],
            "top_logprobs": [{token_text(i): v for i, v in lp.top} for lp in lps], "text_offset": offsets}


def chat_completion_body(model: str, gens: list[Generation], *, fingerprint: str | None = None,
                         token_text: Any = None) -> dict:
    return {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
            "model": model, "system_fingerprint": fingerprint,
            "choices": [{"index": i, "message": {"role": "assistant", "content": g.text},
                         "logprobs": chat_logprobs(g.logprobs, token_text), "finish_reason": g.finish_reason}
                        for i, g in enumerate(gens)],
            "usage": _usage(gens)}


def completion_body(model: str, gens: list[Generation], *, fingerprint: str | None = None,
                    token_text: Any = None) -> dict:
    return {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()),
            "model": model, "system_fingerprint": fingerprint,
            "choices": [{"index": i, "text": g.text, "logprobs": completion_logprobs(g.logprobs, token_text),
                         "finish_reason": g.finish_reason} for i, g in enumerate(gens)],
            "usage": _usage(gens)}
