"""Generation use cases behind the routes: route the request, run it light/heavy/async, shape the answer.

Logs carry the route, its reason, model, token counts and timings; never prompt or reply text.
"""
from __future__ import annotations

import json
import re
import time
import uuid
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from functions.core.aws import s3
from functions.core.aws.base import translate
from functions.core.errors import ModelUnavailable, NotFound, PayloadTooLarge, ValidationFailed
from functions.core.generation.heavy import HeavyClient
from functions.core.generation import tgi
from functions.core.generation.router import Decision, decide
from functions.core.generation.schemas import (ChatCompletionRequest, CompletionRequest, chat_completion_body,
                                               completion_body)
from functions.core.inference.model_store import get_model
from functions.core.observability import logger, metrics
from functions.core.result import Result
from functions.core.inference.encoder import require_task
from functions.core.settings import Settings

JOBS_PREFIX = "jobs/generation/"  # beside jobs/input/ (which would start a batch job), never under it
JOB_ID = re.compile(r"^genjob-[0-9a-f]{32}$")
Request = ChatCompletionRequest | CompletionRequest


def _is_chat(req: Request) -> bool:
    return isinstance(req, ChatCompletionRequest)


@dataclass
class Generated:
    """A generation request's outcome: the answer (or the async job's view), where it ran and why."""

    result: Result
    decision: Decision
    job_path: str | None = None  # set when the request became an async job: where its status is read


def check_prompt(req: Request, settings: Settings) -> None:
    """413 for a prompt over the character cap, before routing: nothing is tokenized, loaded or
    forwarded for it (tokenizing 1M characters alone takes over a second)."""
    chars = req.prompt_chars()
    if chars > settings.max_prompt_chars:
        raise PayloadTooLarge(f"the prompt has {chars} characters, the limit is {settings.max_prompt_chars} "
                              f"characters per request", param=req.prompt_param, code="prompt_too_long")


def generate(req: Request, settings: Settings, *, want_async: bool = False,
             owner: str | None = None) -> Generated:
    """Run one chat/completions request: answered light or heavy, or accepted as an async job.

    ``owner`` is the caller's API key id, recorded on an async job so only that key can read it.
    """
    check_prompt(req, settings)
    budget = req.budget(settings.generation_default_max_tokens)
    decision = decide(req.model, budget, settings, want_async=want_async)
    logger.info("generation routed", extra={"model": req.model, "route": decision.route,
                                            "reason": decision.reason, "max_tokens": budget})
    started = time.perf_counter()
    job_path = None
    if decision.route == "light":
        result = answer_light(req, settings)
    elif decision.route == "heavy":
        result = _heavy(req, settings)
    else:
        result = _submit_async(req, settings, owner)
        job_path = result.body["status_url"]
    _record(req.model, decision, result.body.get("usage") or {}, time.perf_counter() - started)
    return Generated(result, decision, job_path)


def _record(model: str, decision: Decision, usage: dict, seconds: float) -> None:
    metrics.add_dimension(name="route", value=decision.route)
    metrics.add_metric(name="GenerationLatency", unit="Milliseconds", value=seconds * 1000)
    metrics.add_metric(name="CompletionTokens", unit="Count", value=int(usage.get("completion_tokens", 0)))
    logger.info("generation done", extra={"model": model, "route": decision.route,
                                          "prompt_tokens": usage.get("prompt_tokens"),
                                          "completion_tokens": usage.get("completion_tokens"),
                                          "ms": round(seconds * 1000, 1)})


# --- light: the ONNX bundle in this container -------------------------------------------------------
def _refuse(fields: list[str], route: str, other: str, model: str) -> None:
    """422 naming the first field this route cannot honour and the route that can."""
    if fields:
        raise ValidationFailed(f"'{fields[0]}' is not supported on the {route} route that serves model "
                               f"'{model}'; it is honoured on the {other}", param=fields[0],
                               code="unsupported_on_route")


def answer_light(req: Request, settings: Settings) -> Result:
    """The answer of this container's ONNX bundle (the API's light route, and batch chat lines)."""
    _refuse(req.light_refusals(), "light (ONNX on Lambda)", "heavy route (a model served by the GPU endpoint)",
            req.model)
    model = get_model(req.model)
    require_task(model.manifest, "text-generation")
    params = req.sampling(settings.generation_default_max_tokens)
    vocab = model.vocab_size  # type: ignore[union-attr]
    if any(i >= vocab for i, _ in params.logit_bias):
        raise ValidationFailed(f"logit_bias: token ids must be below the vocabulary size of '{req.model}' ({vocab})",
                               param="logit_bias")
    if _is_chat(req):
        gens = model.chat(req.turns(), params)  # type: ignore[union-attr]
        body = chat_completion_body(req.model, gens, fingerprint=f"cirrus-{model.version}",
                                    token_text=model.token_text)  # type: ignore[union-attr]
    else:
        gens = model.complete(req.text(), params)  # type: ignore[union-attr]
        body = completion_body(req.model, gens, fingerprint=f"cirrus-{model.version}",
                               token_text=model.token_text)  # type: ignore[union-attr]
    return Result(body, model.version)


# --- heavy: the SageMaker endpoint ------------------------------------------------------------------
def _heavy(req: Request, settings: Settings) -> Result:
    _refuse(req.heavy_refusals(), "heavy (GPU endpoint)", "light route (a model served on Lambda)", req.model)
    payload = req.heavy_payload(settings.generation_default_max_tokens)
    answer = HeavyClient(settings).invoke(payload)
    return Result(normalise_answer(answer, req.model, chat=_is_chat(req)))


def normalise_answer(answer: dict[str, Any], model: str, *, chat: bool) -> dict[str, Any]:
    """The endpoint's OpenAI-shaped answer, named for the model the client asked for."""
    out = dict(answer)
    out["choices"] = [tgi.openai_choice(c) if isinstance(c, dict) else c for c in answer.get("choices", [])]
    out["model"] = model  # TGI answers with its own model id (or "tgi")
    out.setdefault("id", f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}")
    out.setdefault("object", "chat.completion" if chat else "text_completion")
    out.setdefault("created", int(time.time()))
    out.setdefault("usage", {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0})
    return out


# --- async: a SageMaker async invocation, state in the data bucket -----------------------------------
def _bucket(settings: Settings) -> str:
    if not settings.data_bucket:
        raise ModelUnavailable("async generation needs the data bucket (CIRRUS_DATA_BUCKET is not set)",
                               code="async_disabled")
    return settings.data_bucket


def _put_json(bucket: str, key: str, obj: dict) -> None:
    try:
        s3.put_bytes(bucket, key, json.dumps(obj).encode(), content_type="application/json")
    except (ClientError, BotoCoreError) as exc:
        raise translate(exc, "storing the generation job") from exc


def _submit_async(req: Request, settings: Settings, owner: str | None) -> Result:
    _refuse(req.heavy_refusals(), "async (GPU endpoint)", "light route (a model served on Lambda)", req.model)
    bucket = _bucket(settings)
    job_id = f"genjob-{uuid.uuid4().hex}"
    request_key = f"{JOBS_PREFIX}{job_id}/request.json"
    _put_json(bucket, request_key, req.heavy_payload(settings.generation_default_max_tokens))
    endpoint = settings.heavy_async_endpoint_name or ""
    where = HeavyClient(settings).invoke_async(endpoint, f"s3://{bucket}/{request_key}", job_id)
    created = int(time.time())
    record = {"id": job_id, "model": req.model, "chat": _is_chat(req), "created": created,
              "endpoint": endpoint, "owner": owner, **where}
    _put_json(bucket, f"{JOBS_PREFIX}{job_id}/job.json", record)
    logger.info("generation job submitted", extra={"job_id": job_id, "model": req.model, "endpoint": endpoint})
    return Result(_job_view(record, "in_progress"))


def status_path(job_id: str) -> str:
    return f"/v1/generation/jobs/{job_id}"


def _job_view(record: dict, status: str, **extra: Any) -> dict:
    return {"id": record["id"], "object": "generation.job", "status": status, "model": record["model"],
            "created": record["created"], "status_url": status_path(record["id"]), **extra}


def _s3_uri(uri: str | None) -> tuple[str, str] | None:
    if not uri or not uri.startswith("s3://"):
        return None
    bucket, _, key = uri[5:].partition("/")
    return bucket, key


def _read(uri: str | None) -> bytes | None:
    loc = _s3_uri(uri)
    if loc is None:
        return None
    try:
        return s3.get_bytes(*loc)
    except s3.ObjectNotFound:
        return None
    except (ClientError, BotoCoreError) as exc:
        raise translate(exc, "reading the generation job") from exc


def job_status(job_id: str, settings: Settings, *, caller: str | None = None) -> Result:
    """``in_progress``, ``succeeded`` (with ``result``: the completion) or ``failed`` (with ``error``).

    ``caller`` is the API key id asking: another key's job is the same 404 as a missing one (so ids
    cannot be probed); None (no authorizer: direct/admin invocation) sees every job, as batch jobs do.
    """
    if not JOB_ID.match(job_id):
        raise NotFound(f"no generation job {job_id[:80]!r}", code="job_not_found")
    raw = _read(f"s3://{_bucket(settings)}/{JOBS_PREFIX}{job_id}/job.json")
    if raw is None:
        raise NotFound(f"no generation job {job_id!r}", code="job_not_found")
    record = json.loads(raw)
    if caller is not None and record.get("owner") != caller:
        raise NotFound(f"no generation job {job_id!r}", code="job_not_found")
    output = _read(record.get("output_location"))
    if output is not None:
        try:
            answer = normalise_answer(json.loads(output), record["model"], chat=record.get("chat", True))
        except ValueError:
            return Result(_job_view(record, "failed", error={"code": "bad_endpoint_response",
                                                             "message": "the endpoint wrote an unreadable result"}))
        return Result(_job_view(record, "succeeded", result=answer))
    failure = _read(record.get("failure_location"))
    if failure is not None:
        # The failure file holds the container's error text: its shape, not the prompt.
        message = failure.decode("utf-8", "replace")[:500]
        return Result(_job_view(record, "failed", error={"code": "generation_failed", "message": message}))
    return Result(_job_view(record, "in_progress"))
