"""The OpenAPI 3.0 description of the API, generated from the pydantic models the routes validate with.

Paths come from ``OPERATIONS`` (one entry per route of ``infra.resources.ROUTES``, checked by
tests/unit/test_openapi.py); request bodies are the JSON schemas of the very models ``parse()``
validates against, so the description cannot drift from what the API accepts. OpenAPI 3.0 rather
than 3.1 because the Swagger UI that ships on PyPI (4.x) renders 3.0 only: pydantic's JSON Schema
(2020-12) is turned into 3.0's dialect by ``_oas30`` (null unions, const, exclusive bounds).
"""
from __future__ import annotations

from functools import lru_cache
from typing import Any, NamedTuple

from pydantic import BaseModel

from functions.core.batch.openai_api import CreateBatch, FileUpload
from functions.core.batch.service import CreateJob
from functions.core.generation.schemas import ChatCompletionRequest, CompletionRequest
from functions.core.light.schemas import ClassifyRequest, EmbeddingsRequest

ERROR = {"type": "object", "required": ["error"], "properties": {"error": {
    "type": "object", "required": ["message", "type"],
    "properties": {"message": {"type": "string"}, "type": {"type": "string"},
                   "param": {"type": "string", "nullable": True}, "code": {"type": "string", "nullable": True}}}}}
PUBLIC = {("GET", "/openapi.json")}  # no key needed (infra.resources.DOCS_ROUTES)


def _oas30(node: Any) -> Any:
    """JSON Schema 2020-12 (pydantic) -> the OpenAPI 3.0 schema dialect."""
    if isinstance(node, list):
        return [_oas30(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: _oas30(v) for k, v in node.items() if k not in ("const",)}
    if "const" in node:
        out["enum"] = [node["const"]]
    for key in ("anyOf", "oneOf"):
        if key in out:
            kept = [s for s in out[key] if s != {"type": "null"}]
            if len(kept) < len(out[key]):
                out["nullable"] = True
            if len(kept) == 1:
                del out[key]
                out.update(kept[0] if "$ref" not in kept[0] else {"allOf": kept})
            else:
                out[key] = kept
    for bound, plain in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        if isinstance(out.get(bound), (int, float)) and not isinstance(out.get(bound), bool):
            out[plain], out[bound] = out[bound], True
    return out


class Operation(NamedTuple):
    tag: str
    summary: str
    body: type[BaseModel] | str | None = None   # a model, "multipart", or None (no body)
    status: int = 200


OPERATIONS: dict[tuple[str, str], Operation] = {
    ("GET", "/health"): Operation("meta", "Liveness (never loads a model)"),
    ("GET", "/openapi.json"): Operation("meta", "This description"),
    ("GET", "/v1/models"): Operation("models", "List models (OpenAI shape, with Cirrus manifest facts)"),
    ("GET", "/v1/models/{model}"): Operation("models", "Retrieve one model"),
    ("POST", "/v1/embeddings"): Operation("light", "Create embeddings (OpenAI)", EmbeddingsRequest),
    ("POST", "/v1/classify"): Operation("light", "Label probabilities per input", ClassifyRequest),
    ("POST", "/v1/chat/completions"): Operation("generation", "Chat completion (OpenAI)", ChatCompletionRequest),
    ("POST", "/v1/completions"): Operation("generation", "Text completion (OpenAI legacy)", CompletionRequest),
    ("GET", "/v1/generation/jobs/{id}"): Operation("generation", "Status of an async generation job"),
    ("POST", "/v1/jobs"): Operation(
        "batch", "Create a batch job: inline inputs, or answered with `upload`, a presigned POST form "
                 "(send `upload.fields`, then the file, as multipart/form-data to `upload.url`)", CreateJob, 201),
    ("GET", "/v1/jobs"): Operation("batch", "List recent batch jobs"),
    ("GET", "/v1/jobs/{id}"): Operation("batch", "Retrieve a batch job"),
    ("POST", "/v1/files"): Operation("openai-batch", "Upload a batch input file (multipart), or ask for a "
                                                     "presigned upload (JSON body)", "multipart"),
    ("GET", "/v1/files/{id}"): Operation("openai-batch", "Retrieve a file"),
    ("GET", "/v1/files/{id}/content"): Operation("openai-batch", "File content (303 to a presigned URL)", None, 303),
    ("POST", "/v1/batches"): Operation("openai-batch", "Create a batch (OpenAI Batch API)", CreateBatch),
    ("GET", "/v1/batches"): Operation("openai-batch", "List batches"),
    ("GET", "/v1/batches/{id}"): Operation("openai-batch", "Retrieve a batch"),
    ("POST", "/v1/batches/{id}/cancel"): Operation("openai-batch", "Cancel a batch"),
}


def _request_body(op: Operation, schemas: dict[str, Any]) -> dict[str, Any] | None:
    if op.body is None:
        return None
    if op.body == "multipart":
        upload = FileUpload.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas["FileUpload"] = _oas30(upload)
        form = {"type": "object", "required": ["purpose", "file"],
                "properties": {"purpose": {"type": "string", "enum": ["batch"]},
                               "file": {"type": "string", "format": "binary"}}}
        return {"required": True, "content": {"multipart/form-data": {"schema": form},
                                              "application/json": {"schema": {"$ref": "#/components/schemas/FileUpload"}}}}
    assert isinstance(op.body, type)
    schema = op.body.model_json_schema(ref_template="#/components/schemas/{model}")
    schemas.update({k: _oas30(v) for k, v in schema.pop("$defs", {}).items()})
    schemas[op.body.__name__] = _oas30(schema)
    return {"required": True, "content": {"application/json": {
        "schema": {"$ref": f"#/components/schemas/{op.body.__name__}"}}}}


@lru_cache(maxsize=1)
def document() -> dict[str, Any]:
    schemas: dict[str, Any] = {"Error": ERROR}
    paths: dict[str, dict[str, Any]] = {}
    for (method, path), op in OPERATIONS.items():
        entry: dict[str, Any] = {
            "tags": [op.tag], "summary": op.summary,
            "operationId": f"{method.lower()}_{path.strip('/').replace('/', '_').replace('{', '').replace('}', '')}",
            "responses": {str(op.status): {"description": "OK" if op.status < 300 else "Redirect"},
                          "default": {"description": "Error (OpenAI shape)",
                                      "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}},
        }
        params = [p[1:-1] for p in path.split("/") if p.startswith("{")]
        if params:
            entry["parameters"] = [{"name": p, "in": "path", "required": True, "schema": {"type": "string"}}
                                   for p in params]
        body = _request_body(op, schemas)
        if body:
            entry["requestBody"] = body
        if (method, path) in PUBLIC:
            entry["security"] = []
        paths.setdefault(path, {})[method.lower()] = entry
    return {"openapi": "3.0.3",
            "info": {"title": "Cirrus", "version": "1",
                     "description": "OpenAI-compatible embeddings, classification and generation on AWS "
                                    "Lambda; send `Authorization: Bearer <API key>`."},
            "servers": [{"url": "."}],  # relative: the stage URL the document was fetched from
            "security": [{"bearer": []}],
            "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
                           "schemas": schemas},
            "paths": paths}
