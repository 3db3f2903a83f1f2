"""HTTP routes of the OpenAI Files and Batch API (functions/core/batch/openai_api.py)."""
from __future__ import annotations

from aws_lambda_powertools.event_handler import Response
from aws_lambda_powertools.event_handler.router import APIGatewayRouter

from functions.core.batch import openai_api as service
from functions.core.batch.service import parse_limit
from functions.core.http.body import caller_key_id, parse
from functions.core.http.multipart import parse_form, raw_body
from functions.core.http.response import json_response
from functions.core.settings import get_settings

router = APIGatewayRouter()


@router.post("/v1/files")
def create_file() -> Response:
    settings, owner = get_settings(), caller_key_id(router)
    content_type = router.current_event.get_header_value("content-type", "") or ""
    if content_type.split(";")[0].strip().lower() == "application/json":
        # No file in the body: a file record plus a presigned POST form for files past the body limit.
        return json_response(service.create_file_upload(parse(service.FileUpload, router), settings,
                                                        owner=owner), 201)
    form = parse_form(content_type, raw_body(router, limit=settings.max_upload_bytes))
    purpose, upload = form.get("purpose"), form.get("file")
    return json_response(service.create_file(
        purpose.data.decode("utf-8", "replace") if purpose else None, upload.filename if upload else None,
        upload.data if upload else None, settings, owner=owner))


@router.get("/v1/files/<file_id>")
def get_file(file_id: str) -> Response:
    return json_response(service.get_file(file_id, get_settings(), caller=caller_key_id(router)))


@router.get("/v1/files/<file_id>/content")
def file_content(file_id: str) -> Response:
    # A redirect, not the bytes: a Lambda response carries at most 6 MB; clients follow it to S3.
    url = service.file_content_url(file_id, get_settings(), caller=caller_key_id(router))
    return Response(status_code=303, headers={"Location": url}, body="")


@router.post("/v1/batches")
def create_batch() -> Response:
    body = service.create_batch(parse(service.CreateBatch, router), get_settings(), owner=caller_key_id(router))
    return json_response(body)


@router.get("/v1/batches/<batch_id>")
def get_batch(batch_id: str) -> Response:
    return json_response(service.get_batch(batch_id, get_settings(), caller=caller_key_id(router)))


@router.get("/v1/batches")
def list_batches() -> Response:
    ev = router.current_event
    limit = parse_limit(ev.get_query_string_value("limit", "20"))
    return json_response(service.list_batches(limit, ev.get_query_string_value("after", None), get_settings(),
                                              caller=caller_key_id(router)))


@router.post("/v1/batches/<batch_id>/cancel")
def cancel_batch(batch_id: str) -> Response:
    return json_response(service.cancel_batch(batch_id, get_settings(), caller=caller_key_id(router)))
