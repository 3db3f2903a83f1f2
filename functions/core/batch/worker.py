"""The worker: one chunk message -> its lines validated, inferred in batches, written once, counted once.

Crash safety, in order: chunk outputs go to deterministic keys with write-once puts; the chunk is
then recorded and counted into the job in one DynamoDB transaction that succeeds at most once; a
message whose chunk is already recorded only re-tries finalisation. So a worker killed at any point
and retried produces no duplicate lines and no double counts.
"""
from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass, field

from pydantic import ValidationError

from functions.core import json_text
from functions.core.batch.finalise import try_finalise
from functions.core.batch.formats import (ChunkMessage, LineError, LineInput, body_error, parse_line, resolve_task,
                                         too_long)
from functions.core.batch.job import Status, work_key
from functions.core.batch.job_store import job_store
from functions.core.batch.objects import ObjectChanged, iter_lines, put_if_absent, read_blocks
from functions.core.errors import CirrusError, ModelNotFound
from functions.core.generation.schemas import ChatCompletionRequest
from functions.core.generation.service import answer_light, check_prompt
from functions.core.inference.encoder import ranked_labels
from functions.core.inference.model_store import get_model, store as model_store
from functions.core.observability import logger, metrics
from functions.core.settings import Settings, get_settings


@dataclass
class ChunkOutput:
    results: list[str] = field(default_factory=list)   # JSON lines, input order
    errors: list[str] = field(default_factory=list)
    models: set[str] = field(default_factory=set)      # "name@version" actually used


def process_message(body: str, *, message_id: str, receive_count: int) -> None:
    """Handle one Work-queue message. Raises to have SQS retry it (and finally dead-letter it)."""
    settings = get_settings()
    msg = ChunkMessage.model_validate_json(body)  # malformed: nothing to mark, let it reach the DLQ
    store = job_store()
    if store.get_chunk(msg.job_id, msg.chunk) is None:
        job = store.get(msg.job_id)
        if job is None:
            raise RuntimeError(f"chunk message for unknown job {msg.job_id}")
        if job.status != Status.RUNNING:
            logger.info("chunk skipped: job not running", extra={"job_id": msg.job_id, "chunk": msg.chunk,
                                                                 "status": job.status.value})
            return
        try:
            run_and_record(msg, settings)
        except ObjectChanged as exc:
            # Permanent: retrying cannot bring the original bytes back.
            record_failed(msg, f"input file changed or deleted during the job ({exc})")
        except Exception as exc:
            if receive_count >= settings.max_receive_count:
                # Last delivery: account for the chunk's lines before the message goes to the DLQ.
                record_failed(msg, f"chunk failed after {receive_count} attempts ({exc.__class__.__name__})")
                _finalise_quietly(msg.job_id, message_id)
            raise
    try_finalise(msg.job_id, token=message_id)


def _finalise_quietly(job_id: str, token: str) -> None:
    try:
        try_finalise(job_id, token=token)
    except Exception:  # the DLQ backstop finalises; the original error is what gets re-raised
        logger.exception("finalisation after a failed chunk did not complete", extra={"job_id": job_id})


def run_and_record(msg: ChunkMessage, settings: Settings) -> None:
    started = time.perf_counter()
    out = run_chunk(msg, settings)
    bucket = msg.bucket
    # Write-once: after a crash the retry finds the earlier (identical) objects and keeps them.
    if out.results:
        put_if_absent(bucket, work_key(msg.job_id, msg.chunk, "results"), _join(out.results))
    if out.errors:
        put_if_absent(bucket, work_key(msg.job_id, msg.chunk, "errors"), _join(out.errors))
    counted = job_store().complete_chunk(
        msg.job_id, msg.chunk, {"first_line": msg.first_line, "lines": msg.lines, "models": sorted(out.models)},
        ok=len(out.results), errors=len(out.errors), failed=False)
    seconds = time.perf_counter() - started
    logger.info("chunk done", extra={"job_id": msg.job_id, "chunk": msg.chunk, "lines": msg.lines,
                                     "ok": len(out.results), "errors": len(out.errors), "counted": counted,
                                     "ms": round(seconds * 1000, 1)})
    metrics.add_metric(name="BatchLines", unit="Count", value=msg.lines)


def record_failed(msg: ChunkMessage, reason: str) -> None:
    """Count every line of the chunk as an error (the finaliser writes one error line for each)."""
    job_store().fail_chunk(msg.job_id, msg.chunk, first_line=msg.first_line, lines=msg.lines, reason=reason)


def _join(lines: list[str]) -> bytes:
    return ("\n".join(lines) + "\n").encode("utf-8")


def run_chunk(msg: ChunkMessage, settings: Settings) -> ChunkOutput:
    """Results and error lines of the chunk, both in line order."""
    parsed: list[LineInput | LineError] = []
    line_no = msg.first_line
    blocks = read_blocks(msg.bucket, msg.key, etag=msg.etag, start=msg.start, end=msg.end)
    for content, size in iter_lines(blocks, settings.batch_max_line_bytes):
        if content is None:
            parsed.append(too_long(line_no, size - 1, settings.batch_max_line_bytes))
        else:
            parsed.append(parse_line(line_no, content, model=msg.model, task=msg.task,
                                     max_chars=settings.max_chars))
        line_no += 1
    if len(parsed) != msg.lines:
        raise RuntimeError(f"chunk {msg.chunk} of {msg.job_id}: read {len(parsed)} lines, expected {msg.lines}")

    outcome: list[str | LineError | None] = [p if isinstance(p, LineError) else None for p in parsed]
    groups: dict[tuple[str, str | None], list[int]] = defaultdict(list)
    for i, p in enumerate(parsed):
        if isinstance(p, LineInput):
            groups[(p.model, p.task)].append(i)
    out = ChunkOutput()
    for (model_name, task), idx in groups.items():
        _infer_group(model_name, task, [parsed[i] for i in idx], idx, outcome, out, settings)  # type: ignore[misc]
    for item in outcome:
        if isinstance(item, LineError):
            out.errors.append(item.json())
        else:
            assert item is not None, "every line has a result or an error"
            out.results.append(item)
    return out


def _infer_group(model_name: str, task: str | None, items: list[LineInput], idx: list[int],
                 outcome: list, out: ChunkOutput, settings: Settings) -> None:
    def fail_all(code: str, message: str) -> None:
        for i, item in zip(idx, items):
            outcome[i] = LineError(item.line, code, message, item.id)

    # What the model is comes from its manifest before anything is loaded: a line naming a generator
    # (or an embedder asked to classify) must not make this worker download and build its session.
    try:
        manifest = model_store().manifest(model_name)  # ModelUnavailable/BundleError: transient, retried
    except ModelNotFound:
        return fail_all("model_not_found", f"the model '{model_name[:128]}' does not exist")
    resolved = resolve_task(manifest.task, task)
    if resolved is None:
        return fail_all("model_task_mismatch",
                        f"model '{model_name}' is a {manifest.task} model, it cannot {task or 'embed'}")
    task = resolved
    if task == "chat":  # each line is one request: answer_light loads the model once (the model store)
        for i, item in zip(idx, items):
            outcome[i] = _chat(item, model_name, settings, out)
        return
    try:
        model = get_model(model_name)
    except ModelNotFound:  # unpublished between the two reads
        return fail_all("model_not_found", f"the model '{model_name[:128]}' does not exist")
    texts = [item.text for item in items]
    keep = list(range(len(items)))
    if settings.token_overflow == "reject":
        keep = _within_context(model, texts, items, idx, outcome)
        if not keep:
            return
    texts = [texts[k] for k in keep]
    out.models.add(f"{model.name}@{model.version}")
    if task == "embed":
        vectors, counts = model.embed(texts)
        for k, vec, tokens in zip(keep, vectors, counts):
            outcome[idx[k]] = _result(items[k], model_name, embedding=vec.tolist(), tokens=tokens)
    else:
        probs, _ = model.classify(texts)
        for k, row in zip(keep, probs):
            outcome[idx[k]] = _result(items[k], model_name, **ranked_labels(row, model.manifest.labels))


def _chat(item: LineInput, model_name: str, settings: Settings, out: ChunkOutput) -> str | LineError:
    """One chat line answered as the API's light route answers it; the request's faults are its error."""
    if item.body is None:  # an input line naming a chat model: refused before anything is loaded
        return LineError(item.line, "model_task_mismatch", f"model '{model_name}' is a text-generation model: "
                         "a line for it has task chat and a 'body' (a chat completion request)", item.id)
    try:
        req = ChatCompletionRequest.model_validate({**item.body, "model": model_name})
    except ValidationError as exc:
        return LineError(item.line, "invalid_value", body_error(exc), item.id)
    if req.stream:
        return LineError(item.line, "invalid_value", "body.stream: a batch answer is not streamed", item.id)
    if req.budget(settings.generation_default_max_tokens) > settings.light_max_tokens:
        return LineError(item.line, "over_token_budget", f"max_tokens is above the {settings.light_max_tokens} "
                                                         "tokens a batch chat line may generate", item.id)
    try:
        check_prompt(req, settings)
        answer = answer_light(req, settings)
    except CirrusError as err:
        if err.status >= 500:  # the model could not run (e.g. a bundle load): retried with the chunk
            raise
        # The request's own fault: its prompt is over the context window, a field light cannot honour...
        return LineError(item.line, err.code or "invalid_request", err.message, item.id)
    out.models.add(f"{model_name}@{answer.model_version}")
    return _result(item, model_name, response=answer.body)


def _within_context(model, texts: list[str], items: list[LineInput], idx: list[int], outcome: list) -> list[int]:
    """Positions of texts that fit the model's context; the others become error lines (overflow=reject)."""
    over = set(model.over_context(texts))
    for k in sorted(over):
        outcome[idx[k]] = LineError(items[k].line, "context_length_exceeded",
                                    f"input is longer than the model's limit of {model.manifest.max_length} "
                                    f"tokens", items[k].id)
    return [k for k in range(len(texts)) if k not in over]


def _result(item: LineInput, model: str, **fields) -> str:
    # The per-line hot path: json.dumps of one 384-float vector took ~0.3 ms, a fifth of the line's share
    # of the model run; the shared encoder writes the same values ~30x faster.
    return json_text.dumps({"line": item.line, "id": item.id, "model": model, **fields})

