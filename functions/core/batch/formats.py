"""The batch file formats: input line and header schema, chunk messages, result and error lines.

Input file (JSONL, UTF-8, one JSON object per line)::

    {"defaults": {"model": "cirrus-intent-minilm", "task": "classify"}}   <- optional, line 1 only
    {"id": "a1", "input": "where is my parcel?"}
    {"input": "refund please", "model": "cirrus-intent-minilm"}
    {"task": "chat", "model": "smollm2-135m-instruct", "body": {"messages": [...], "max_tokens": 64}}

Every input line yields exactly one result line or one error line; both carry the physical line
number of the file (1-based, the header counts) and the line's ``id`` when it had one.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from functions.core.batch.job import Defaults, Task
from functions.core.errors import validation_error

TASKS: tuple[str, ...] = ("embed", "classify", "chat")
# The manifest task a batch task needs (functions/core/inference/manifest.py).
MANIFEST_TASK = {"embed": "feature-extraction", "classify": "text-classification", "chat": "text-generation"}
TASK_FOR_MANIFEST = {v: k for k, v in MANIFEST_TASK.items()}


def resolve_task(manifest_task: str, requested: str | None) -> str | None:
    """The batch task a model of ``manifest_task`` runs for ``requested`` (None: the model's own),
    or None when it cannot run it (a generator, or an embedder asked to classify)."""
    own = TASK_FOR_MANIFEST.get(manifest_task)
    if own is None or (requested is not None and MANIFEST_TASK[requested] != manifest_task):
        return None
    return requested or own

LINE_FIELDS = frozenset({"id", "input", "model", "task", "body"})


class ChunkMessage(BaseModel):
    """One unit of work on the Work queue: a byte range of the input holding whole lines."""

    model_config = ConfigDict(extra="forbid")
    v: Literal[1] = 1
    job_id: str
    chunk: int = Field(ge=0)
    bucket: str
    key: str
    etag: str           # the object the job was split from; a changed object fails the read
    start: int = Field(ge=0)  # first byte (inclusive)
    end: int = Field(ge=0)    # last byte + 1
    first_line: int = Field(ge=1)
    lines: int = Field(ge=1)
    model: str           # resolved file default
    task: Task | None = None


@dataclass(frozen=True)
class LineError:
    """Why one input line produced no result: ``code`` is stable, ``message`` is for people."""

    line: int
    code: str
    message: str
    id: str | int | None = None

    def json(self) -> str:
        return json.dumps({"line": self.line, "id": self.id, "error": {"code": self.code,
                                                                       "message": self.message}},
                          separators=(",", ":"))


@dataclass(frozen=True)
class LineInput:
    """A valid input line, with defaults applied (task may still be None: the model's own task)."""

    line: int
    text: str
    model: str
    task: str | None
    id: str | int | None = None
    body: dict[str, Any] | None = None   # task chat: the chat completion request (without stream)


def parse_header(raw: bytes) -> Defaults | None:
    """The header's defaults if ``raw`` (line 1) is a header, else None. Raises ValueError if malformed."""
    try:
        obj = json.loads(raw)
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None  # not JSON (or nested past the parser): an ordinary bad line, reported by the worker
    if not isinstance(obj, dict) or "defaults" not in obj or "input" in obj:
        return None
    if set(obj) != {"defaults"}:
        raise ValueError("header line must be exactly {\"defaults\": {...}}")
    try:
        return Defaults.model_validate(obj["defaults"])
    except ValidationError as exc:
        raise ValueError(f"invalid header defaults: {_first_error(exc)}") from None


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"]) or "value"
    return f"{where}: {err['msg']}"


def body_error(exc: ValidationError) -> str:
    """A request body's first validation error as the API words it (errors.validation_error), under ``body``."""
    err = validation_error(exc)
    return f"body.{err.message}" if err.param else f"body: {err.message}"


def parse_line(line_no: int, raw: bytes, *, model: str, task: str | None,
               max_chars: int) -> LineInput | LineError:
    """Validate one input line (no trailing newline) against the schema; never raises."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return LineError(line_no, "invalid_utf8", f"line is not valid UTF-8 (byte {exc.start})")
    if not text.strip():
        return LineError(line_no, "empty_line", "line is empty")
    try:
        obj = json.loads(text)
    except ValueError as exc:
        return LineError(line_no, "invalid_json", f"line is not valid JSON: {exc.msg} (column {exc.colno})")
    except RecursionError:  # one line nested past the parser must not fail its whole chunk
        return LineError(line_no, "invalid_json", "line nests too deeply to parse")
    if not isinstance(obj, dict):
        return LineError(line_no, "wrong_type", f"line must be a JSON object, got {type(obj).__name__}")
    line_id = obj.get("id")
    if line_id is not None and (isinstance(line_id, bool) or not isinstance(line_id, (str, int))):
        return LineError(line_no, "wrong_type", "'id' must be a string or an integer")
    unknown = sorted(set(obj) - LINE_FIELDS)
    if unknown:
        return LineError(line_no, "unknown_field", f"unknown field(s): {', '.join(unknown)}", line_id)
    line_task = obj.get("task", task)
    if line_task is not None and line_task not in TASKS:
        return LineError(line_no, "invalid_value", f"'task' must be one of {', '.join(TASKS)}", line_id)
    line_model = obj.get("model", model)
    if not isinstance(line_model, str) or not line_model:
        return LineError(line_no, "wrong_type", "'model' must be a non-empty string", line_id)
    if "body" in obj or line_task == "chat":
        return _chat_line(line_no, obj, line_model, line_task, line_id)
    if "input" not in obj:
        return LineError(line_no, "missing_field", "missing required field 'input'", line_id)
    value = obj["input"]
    if not isinstance(value, str):
        return LineError(line_no, "wrong_type", f"'input' must be a string, got {_json_type(value)}", line_id)
    if not value.strip():
        return LineError(line_no, "invalid_value", "'input' is empty", line_id)
    if len(value) > max_chars:
        return LineError(line_no, "input_too_long",
                         f"'input' has {len(value)} characters, the limit is {max_chars}", line_id)
    return LineInput(line_no, value, line_model, line_task, line_id)


def _chat_line(line_no: int, obj: dict, model: str, task: str | None, line_id: Any) -> LineInput | LineError:
    """A chat line: a ``body`` object (the request, validated by the worker with the generation schema)."""
    if task not in (None, "chat"):
        return LineError(line_no, "invalid_value", f"'body' is for task chat, not {task}", line_id)
    if "input" in obj:
        return LineError(line_no, "invalid_value", "a chat line has 'body' (with messages), not 'input'", line_id)
    body = obj.get("body")
    if not isinstance(body, dict):
        return LineError(line_no, "missing_field" if body is None else "wrong_type",
                         "a chat line needs 'body': a chat completion request object", line_id)
    return LineInput(line_no, "", model, "chat", line_id, body=body)


def _json_type(value: Any) -> str:
    return {dict: "object", list: "array", bool: "boolean", int: "number", float: "number",
            type(None): "null"}.get(type(value), type(value).__name__)


def too_long(line_no: int, size: int, limit: int) -> LineError:
    return LineError(line_no, "line_too_long", f"line has {size} bytes, the limit is {limit}")
