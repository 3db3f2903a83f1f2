"""OpenAI <-> TGI wire translation for the heavy route: tools, structured output and the answer's shape.

The heavy container is TGI 3.0 (infra/constructs/heavy_endpoint.py). Its Messages API takes OpenAI's
``tools`` / ``tool_choice`` / ``logprobs`` / ``top_logprobs`` as they are, but not OpenAI's
``response_format``: TGI reads a grammar, ``{"type": "json", "value": <JSON schema>}`` (``json_object``
is an alias of ``json``; a ``json_schema`` type only arrived in later TGI releases). Its answers differ
from OpenAI's in three places a client notices: tool-call ``arguments`` is a JSON object (OpenAI: a
string holding JSON), the call ids are "0", "1", ... and ``finish_reason`` uses TGI's names
(``eos_token``, ``stop_sequence``). Both directions are translated here and nowhere else.
"""
from __future__ import annotations

import json
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictStr

# What OpenAI's ``json_object`` mode promises: some JSON object, nothing more.
ANY_OBJECT: dict[str, Any] = {"type": "object"}
FINISH_REASONS = {"eos_token": "stop", "stop_sequence": "stop", "length": "length", "stop": "stop",
                  "tool_calls": "tool_calls", "content_filter": "content_filter"}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FunctionSpec(_Strict):
    name: StrictStr = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    description: StrictStr | None = None
    parameters: dict[str, Any] | None = None
    strict: StrictBool | None = None


class Tool(_Strict):
    """One entry of OpenAI's ``tools``."""

    type: Literal["function"]
    function: FunctionSpec


class _FunctionName(_Strict):
    name: StrictStr = Field(min_length=1)


class NamedToolChoice(_Strict):
    type: Literal["function"]
    function: _FunctionName


ToolChoice = Literal["none", "auto", "required"] | NamedToolChoice


class JsonSchemaFormat(_Strict):
    name: StrictStr = Field(min_length=1, max_length=64)
    description: StrictStr | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    strict: StrictBool | None = None


class ResponseFormat(_Strict):
    """OpenAI's ``response_format``: ``text``, ``json_object`` or ``json_schema``."""

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    def grammar(self) -> dict[str, Any] | None:
        """TGI's ``response_format`` (its grammar) for this format; None for plain text."""
        if self.type == "text":
            return None
        if self.type == "json_object":
            return {"type": "json", "value": ANY_OBJECT}
        if self.json_schema is None:
            raise ValueError("response_format.json_schema is required for type json_schema")
        return {"type": "json", "value": self.json_schema.schema_ or ANY_OBJECT}


def openai_tool_call(call: dict[str, Any]) -> dict[str, Any]:
    """One TGI tool call in OpenAI's shape: ``{"id", "type": "function", "function": {"name", "arguments"}}``."""
    fn = call.get("function") or {}
    args = fn.get("arguments")
    if not isinstance(args, str):  # TGI 3.0 sends the object itself
        args = json.dumps(args if args is not None else {}, ensure_ascii=False)
    call_id = call.get("id")
    if not isinstance(call_id, str) or not call_id.startswith("call_"):
        call_id = f"call_{uuid.uuid4().hex[:24]}"
    return {"id": call_id, "type": "function", "function": {"name": fn.get("name", ""), "arguments": args}}


def openai_choice(choice: dict[str, Any]) -> dict[str, Any]:
    """A TGI chat/completion choice in OpenAI's shape (tool calls, finish reason, logprobs kept)."""
    out = dict(choice)
    message = out.get("message")
    if isinstance(message, dict):
        message = dict(message)
        calls = message.get("tool_calls")
        if calls:
            message["tool_calls"] = [openai_tool_call(c) for c in calls if isinstance(c, dict)]
            message.setdefault("content", None)
            out["finish_reason"] = "tool_calls"
        else:
            message.pop("tool_calls", None)  # TGI may send null; OpenAI omits it
        message.setdefault("role", "assistant")
        out["message"] = message
    reason = out.get("finish_reason")
    if isinstance(reason, str):
        out["finish_reason"] = FINISH_REASONS.get(reason, reason)
    out.setdefault("logprobs", None)
    return out
