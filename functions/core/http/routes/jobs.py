"""HTTP routes of the batch job API: create a job (201), read one, list recent ones."""
from __future__ import annotations

from aws_lambda_powertools.event_handler import Response
from aws_lambda_powertools.event_handler.router import APIGatewayRouter

from functions.core.batch import service
from functions.core.http.body import caller_key_id, parse
from functions.core.http.response import json_response
from functions.core.settings import get_settings

router = APIGatewayRouter()


@router.post("/v1/jobs")
def create_job() -> Response:
    body = service.create_job(parse(service.CreateJob, router), get_settings(), owner=caller_key_id(router))
    return json_response(body, 201)


@router.get("/v1/jobs/<job_id>")
def get_job(job_id: str) -> Response:
    return json_response(service.get_job(job_id, get_settings(), caller=caller_key_id(router)))


@router.get("/v1/jobs")
def list_jobs() -> Response:
    limit = service.parse_limit(router.current_event.get_query_string_value("limit", "20"))
    return json_response(service.list_jobs(limit, get_settings(), caller=caller_key_id(router)))
