"""HTTP routes of the generation API: 200 with the answer, or 202 + Location for an async job."""
from __future__ import annotations

from aws_lambda_powertools.event_handler import Response
from aws_lambda_powertools.event_handler.api_gateway import Router

from functions.core.generation import service, streaming
from functions.core.generation.schemas import ChatCompletionRequest, CompletionRequest
from functions.core.http.body import caller_key_id, parse
from functions.core.http.response import ROUTE_HEADER, json_response
from functions.core.http.stream import sse_response
from functions.core.settings import get_settings

router = Router()


def _wants_async() -> bool:
    # RFC 7240: "Prefer: respond-async" (the openai client sends it with extra_headers=...).
    prefer = router.current_event.headers.get("prefer") or router.current_event.headers.get("Prefer") or ""
    return "respond-async" in prefer.lower()


def _generated(req: service.Request) -> Response:
    settings = get_settings()
    if req.streamed:
        return sse_response(streaming.stream(req, settings, want_async=_wants_async()))
    out = service.generate(req, settings, want_async=_wants_async(), owner=caller_key_id(router))
    headers = {ROUTE_HEADER: out.decision.summary()}
    if out.job_path is not None:
        headers["Location"] = out.job_path
        return json_response(out.result, 202, headers)
    return json_response(out.result, 200, headers)


@router.post("/v1/chat/completions")
def chat_completions() -> Response:
    return _generated(parse(ChatCompletionRequest, router))


@router.post("/v1/completions")
def completions() -> Response:
    return _generated(parse(CompletionRequest, router))


@router.get("/v1/generation/jobs/<job_id>")
def generation_job(job_id: str) -> Response:
    return json_response(service.job_status(job_id, get_settings(), caller=caller_key_id(router)))
