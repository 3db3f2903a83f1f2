"""OpenAI batch files <-> the pipeline's line formats (docs/batch.md, docs/openai-batch.md).

Input: OpenAI's batch input JSONL (``{"custom_id", "method": "POST", "url": "/v1/embeddings", "body"}``)
becomes pipeline input lines: an embeddings request one line per text, a chat completion request
one ``task: chat`` line holding its body; each line's ``id`` carries the request it belongs to
(``[custom_id, index, count, encoding_format]``, JSON; ``"chat"`` in place of the encoding).
Output: the pipeline's results and errors files become OpenAI's batch output and error files, one
line per request: a request is a result only if every one of its lines succeeded.
"""
from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import ValidationError

from functions.core.batch.formats import body_error
from functions.core.generation.schemas import ChatCompletionRequest
from functions.core.light.schemas import EmbeddingsRequest

CHAT = "/v1/chat/completions"
ENDPOINTS = ("/v1/embeddings", CHAT)
MAX_REQUESTS = 50_000  # per batch file, as in the OpenAI Batch API


class BadLine(ValueError):
    """A line of the input file that is not a valid batch request; the batch is refused."""

    def __init__(self, line: int, message: str) -> None:
        super().__init__(f"line {line}: {message}")
        self.line = line


@dataclass(frozen=True)
class Request:
    custom_id: str
    model: str
    texts: list[str]
    encoding: str                      # "float" / "base64"; "chat" for a chat completion request
    body: dict[str, Any] | None = None  # a chat request's body (the pipeline's chat line)


def parse_request(line_no: int, raw: bytes, endpoint: str, default_model: str) -> Request:
    try:
        obj = json.loads(raw)
    except (ValueError, RecursionError):  # nested past the parser: not a request either (a 400, not a 500)
        raise BadLine(line_no, "not valid JSON") from None
    if not isinstance(obj, dict):
        raise BadLine(line_no, "must be a JSON object")
    unknown = sorted(set(obj) - {"custom_id", "method", "url", "body"})
    if unknown:
        raise BadLine(line_no, f"unknown field(s): {', '.join(unknown)}")
    cid = obj.get("custom_id")
    if not isinstance(cid, str) or not cid or len(cid) > 512:
        raise BadLine(line_no, "custom_id must be a non-empty string (at most 512 characters)")
    if obj.get("method") != "POST":
        raise BadLine(line_no, "method must be POST")
    if obj.get("url") != endpoint:
        raise BadLine(line_no, f"url must be the batch's endpoint {endpoint}")
    if endpoint == CHAT:
        return _chat_request(line_no, cid, obj.get("body"))
    try:
        body = EmbeddingsRequest.model_validate(obj.get("body"))
    except ValidationError as exc:
        raise BadLine(line_no, body_error(exc)) from None
    if body.dimensions is not None:
        raise BadLine(line_no, "body.dimensions is not supported in batches (the native size is returned)")
    return Request(cid, body.model or default_model, body.texts(), body.encoding_format)


def _chat_request(line_no: int, cid: str, body: Any) -> Request:
    """Checked here with the API's own schema, so a malformed request refuses the batch up front."""
    try:
        req = ChatCompletionRequest.model_validate(body)
    except ValidationError as exc:
        raise BadLine(line_no, body_error(exc)) from None
    if req.stream:
        raise BadLine(line_no, "body.stream: batch answers are not streamed")
    assert isinstance(body, dict)
    return Request(cid, req.model, [], "chat", {k: v for k, v in body.items() if k != "model"})


def pipeline_lines(req: Request) -> Iterator[bytes]:
    if req.body is not None:
        line_id = json.dumps([req.custom_id, 0, 1, "chat"], separators=(",", ":"))
        yield (json.dumps({"id": line_id, "model": req.model, "task": "chat", "body": req.body},
                          ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8")
        return
    for i, text in enumerate(req.texts):
        line_id = json.dumps([req.custom_id, i, len(req.texts), req.encoding], separators=(",", ":"))
        yield (json.dumps({"id": line_id, "input": text, "model": req.model, "task": "embed"},
                          ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8")


def _owner(line_id: Any) -> tuple[str, int, int, str] | None:
    try:
        cid, i, n, enc = json.loads(line_id)
        return str(cid), int(i), int(n), str(enc)
    except (TypeError, ValueError):
        return None


def _request_id(batch_id: str, custom_id: str) -> str:
    return "batch_req_" + hashlib.sha256(f"{batch_id}\n{custom_id}".encode()).hexdigest()[:24]


def _vector(values: list[float], encoding: str) -> list[float] | str:
    if encoding == "base64":
        return base64.b64encode(np.asarray(values, dtype="<f4").tobytes()).decode("ascii")
    return values


def failed_requests(error_lines: Iterable[bytes]) -> dict[str, dict[str, str]]:
    """custom_id -> the first error of any of its texts (the pipeline's errors file)."""
    failed: dict[str, dict[str, str]] = {}
    for raw in error_lines:
        obj = json.loads(raw)
        owner = _owner(obj.get("id"))
        key = owner[0] if owner else f"line {obj.get('line')}"
        failed.setdefault(key, {"code": obj["error"]["code"], "message": obj["error"]["message"]})
    return failed


def output_lines(batch_id: str, result_lines: Iterable[bytes], failed: dict[str, dict[str, str]]) -> Iterator[bytes]:
    """OpenAI batch output lines for the requests whose lines all succeeded (results are in input order)."""
    group: list[dict] = []

    def flush() -> Iterator[bytes]:
        if not group:
            return
        cid, _, n, enc = _owner(group[0]["id"])  # type: ignore[misc]
        if cid in failed or len(group) != n:
            return
        if enc == "chat":
            body = group[0]["response"]
        else:
            body = _embeddings_body(group, enc)
        line = {"id": _request_id(batch_id, cid), "custom_id": cid,
                "response": {"status_code": 200, "request_id": _request_id(batch_id, cid), "body": body},
                "error": None}
        yield (json.dumps(line, separators=(",", ":")) + "\n").encode()

    for raw in result_lines:
        row = json.loads(raw)
        owner = _owner(row.get("id"))
        if owner is None:
            continue
        if group and _owner(group[-1]["id"])[0] != owner[0]:  # type: ignore[index]
            yield from flush()
            group = []
        group.append(row)
    yield from flush()


def _embeddings_body(group: list[dict], enc: str) -> dict[str, Any]:
    tokens = sum(int(r.get("tokens", 0)) for r in group)
    return {"object": "list", "model": group[0]["model"],
            "data": [{"object": "embedding", "index": i, "embedding": _vector(r["embedding"], enc)}
                     for i, r in enumerate(group)],
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}


def error_lines(batch_id: str, failed: dict[str, dict[str, str]]) -> Iterator[bytes]:
    """OpenAI batch error-file lines: one per failed request."""
    for cid, err in failed.items():
        line = {"id": _request_id(batch_id, cid), "custom_id": cid,
                "response": {"status_code": 400, "request_id": _request_id(batch_id, cid),
                             "body": {"error": {"message": err["message"], "type": "invalid_request_error",
                                                "param": None, "code": err["code"]}}},
                "error": {"code": err["code"], "message": err["message"]}}
        yield (json.dumps(line, separators=(",", ":")) + "\n").encode()
