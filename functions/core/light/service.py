"""The light-path use cases behind the HTTP routes: embeddings, classification, model list, health.

Each takes a validated request, enforces the limits from Settings, asks the model store for the
model and shapes an OpenAI-style response body. Logs carry ids, sizes and timings, never text.
"""
from __future__ import annotations

import base64
import time
from datetime import datetime
from typing import Any

import numpy as np

from functions.core.errors import ModelNotFound, PayloadTooLarge, ValidationFailed
from functions.core.inference import model_store
from functions.core.inference.model_store import loaded_versions, store
from functions.core.observability import logger, metrics, tracer
from functions.core.result import Result
from functions.core.inference.encoder import ranked_labels, require_task
from functions.core.light.schemas import ClassifyRequest, EmbeddingsRequest
from functions.core.settings import Settings

def check_limits(texts: list[str], settings: Settings) -> None:
    """Inputs per request and characters per input (tokens are checked by the runtime)."""
    if len(texts) > settings.max_inputs:
        raise PayloadTooLarge(f"too many inputs: {len(texts)} > {settings.max_inputs} per request",
                              param="input", code="too_many_inputs")
    for i, text in enumerate(texts):
        if len(text) > settings.max_chars:
            raise PayloadTooLarge(f"input[{i}] has {len(text)} characters, the limit is {settings.max_chars}",
                                  param="input", code="input_too_long")


def model_for(name: str, task: str) -> Any:
    """The loaded model ``name``, refused with 422 when it serves another task (e.g. generation)."""
    model = model_store.get_model(name)  # (this module's own get_model is the retrieve-model route)
    require_task(model.manifest, task)  # before touching embed/classify, which a generator lacks
    return model


def _usage(token_counts: list[int]) -> dict[str, int]:
    total = int(sum(token_counts))
    return {"prompt_tokens": total, "total_tokens": total}


def _record(kind: str, model_name: str, version: str, n_inputs: int, tokens: int, seconds: float) -> None:
    tracer.put_annotation(key="model", value=model_name)
    tracer.put_annotation(key="model_version", value=version)
    metrics.add_dimension(name="model", value=model_name)
    metrics.add_metadata(key="model_version", value=version)
    metrics.add_metric(name="InferenceLatency", unit="Milliseconds", value=seconds * 1000)
    metrics.add_metric(name="Inputs", unit="Count", value=n_inputs)
    # Tokens are metered once per request by the HTTP layer's usage middleware (app.py), from the
    # body's usage: adding them here too counted every token twice in the same EMF record.
    logger.info(f"{kind} done", extra={"model": model_name, "version": version, "inputs": n_inputs,
                                       "tokens": tokens, "ms": round(seconds * 1000, 2)})


def _encode_vector(v: np.ndarray, encoding: str) -> list[float] | str:
    if encoding == "base64":
        # OpenAI's base64 format: the little-endian float32 bytes (what the openai client decodes).
        return base64.b64encode(v.astype("<f4").tobytes()).decode("ascii")
    return v.tolist()


def output_dimensions(model: Any, requested: int | None) -> int | None:
    """The size to truncate to (None: the native size) for OpenAI's ``dimensions``: the native size
    is always fine; a smaller one only if the manifest says the model was trained for it."""
    if requested is None or requested == model.dimensions:
        return None
    trained = sorted(d for d in model.manifest.matryoshka_dimensions if d < model.dimensions)
    if requested in trained:
        return requested
    allowed = ", ".join(str(d) for d in [*trained, model.dimensions])
    raise ValidationFailed(f"dimensions: model {model.name!r} returns {model.dimensions}-dimensional embeddings "
                           f"(allowed: {allowed}); omit dimensions or send {model.dimensions}",
                           param="dimensions", code="unsupported_dimensions")


def _truncate(vectors: np.ndarray, size: int, normalize: bool) -> np.ndarray:
    # Matryoshka truncation keeps the first ``size`` components; a normalised model stays normalised.
    cut = vectors[:, :size]
    if normalize:
        cut = cut / np.clip(np.linalg.norm(cut, axis=1, keepdims=True), 1e-12, None)
    return cut


@tracer.capture_method(capture_response=False)
def create_embeddings(req: EmbeddingsRequest, settings: Settings) -> Result:
    name = req.model or settings.default_embedding_model
    texts = req.texts()
    check_limits(texts, settings)
    model = model_for(name, "feature-extraction")
    size = output_dimensions(model, req.dimensions)
    started = time.perf_counter()
    vectors, counts = model.embed(texts, overflow=settings.token_overflow,
                                  max_total_tokens=settings.max_request_tokens)
    if size is not None:
        vectors = _truncate(vectors, size, model.manifest.normalize)
    seconds = time.perf_counter() - started
    _record("embeddings", name, model.version, len(texts), sum(counts), seconds)
    data = [{"object": "embedding", "index": i, "embedding": _encode_vector(v, req.encoding_format)}
            for i, v in enumerate(vectors)]
    return Result({"object": "list", "data": data, "model": name, "usage": _usage(counts)},
                  model.version)


@tracer.capture_method(capture_response=False)
def classify(req: ClassifyRequest, settings: Settings) -> Result:
    texts = req.texts()
    check_limits(texts, settings)
    model = model_for(req.model, "text-classification")
    started = time.perf_counter()
    probs, counts = model.classify(texts, overflow=settings.token_overflow,
                                   max_total_tokens=settings.max_request_tokens)
    seconds = time.perf_counter() - started
    _record("classify", req.model, model.version, len(texts), sum(counts), seconds)
    data = [{"object": "classification", "index": i, **ranked_labels(row, model.manifest.labels, req.top_k)}
            for i, row in enumerate(probs)]
    return Result({"object": "list", "data": data, "model": req.model, "usage": _usage(counts)},
                  model.version)


def _created(iso: str) -> int:
    try:
        return int(datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp())
    except ValueError:
        return 0


def _light_entry(st: Any, name: str) -> dict[str, Any]:
    info = st.describe(name)
    entry: dict[str, Any] = {"id": name, "object": "model", "owned_by": "cirrus", "created": 0}
    if info.manifest is None:
        entry["cirrus"] = {"path": "light", "status": "unavailable", "error": info.error}
    else:
        m = info.manifest
        entry["created"] = _created(m.created_at)
        entry["cirrus"] = {
            "path": "light", "status": "ready" if name in st.loaded() else "available",
            "version": m.version, "task": m.task, "max_length": m.max_length,
            "pooling": m.pooling, "normalize": m.normalize, "labels": m.labels,
            "quantization": m.quantization.model_dump(), "arch": m.arch,
            "source": m.source.model_dump(), "gate": m.gate.model_dump() if m.gate else None,
        }
    return entry


def _heavy_entry(name: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "owned_by": "cirrus", "created": 0,
            "cirrus": {"path": "heavy", "task": "text-generation"}}


def _heavy_names(settings: Settings) -> list[str]:
    return list(settings.heavy_models) if settings.heavy_endpoint_name else []


def list_models(settings: Settings) -> Result:
    """OpenAI's model list; ``cirrus`` holds the manifest facts a client may need."""
    st = store()
    data = [_light_entry(st, name) for name in st.names()]
    data += [_heavy_entry(name) for name in _heavy_names(settings)]
    return Result({"object": "list", "data": data})


def get_model(name: str, settings: Settings) -> Result:
    """One entry of ``list_models`` (OpenAI's retrieve-model); 404 for a name the list does not show."""
    st = store()
    if name in st.names():
        return Result(_light_entry(st, name))
    if name in _heavy_names(settings):
        return Result(_heavy_entry(name))
    raise ModelNotFound(f"The model '{name[:128]}' does not exist", param="model")


def health(settings: Settings) -> Result:
    """Liveness: cheap, never loads a model or calls AWS."""
    return Result({"status": "ok", "stage": settings.stage, "models_loaded": loaded_versions()})
