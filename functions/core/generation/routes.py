"""HTTP routes of the generation API (a Powertools Router included by functions/core/api.py)."""
from __future__ import annotations

from aws_lambda_powertools.event_handler import Response
from aws_lambda_powertools.event_handler.api_gateway import Router

from functions.core.generation import service
from functions.core.generation.schemas import ChatCompletionRequest, CompletionRequest
from functions.core.rest import caller_key_id, json_response, parse
from functions.core.settings import get_settings

router = Router()


def _wants_async() -> bool:
    # RFC 7240: "Prefer: respond-async" (the openai client sends it with extra_headers=...).
    prefer = router.current_event.headers.get("prefer") or router.current_event.headers.get("Prefer") or ""
    return "respond-async" in prefer.lower()


@router.post("/v1/chat/completions")
def chat_completions() -> Response:
    return json_response(*service.generate(parse(ChatCompletionRequest, router), get_settings(),
                                      want_async=_wants_async(), owner=caller_key_id(router)))


@router.post("/v1/completions")
def completions() -> Response:
    return json_response(*service.generate(parse(CompletionRequest, router), get_settings(),
                                      want_async=_wants_async(), owner=caller_key_id(router)))


@router.get("/v1/generation/jobs/<job_id>")
def generation_job(job_id: str) -> Response:
    return json_response(service.job_status(job_id, get_settings(), caller=caller_key_id(router)))
