"""HTTP routes of the light path: embeddings, classification, the model list, health."""
from __future__ import annotations

from aws_lambda_powertools.event_handler import Response
from aws_lambda_powertools.event_handler.api_gateway import Router

from functions.core.http.body import parse
from functions.core.http.response import json_response
from functions.core.light import service
from functions.core.light.schemas import ClassifyRequest, EmbeddingsRequest
from functions.core.settings import get_settings

router = Router()


@router.post("/v1/embeddings")
def embeddings() -> Response:
    return json_response(service.create_embeddings(parse(EmbeddingsRequest, router), get_settings()))


@router.post("/v1/classify")
def classify() -> Response:
    return json_response(service.classify(parse(ClassifyRequest, router), get_settings()))


@router.get("/v1/models")
def models() -> Response:
    return json_response(service.list_models(get_settings()))


@router.get("/v1/models/<model>")
def model(model: str) -> Response:
    return json_response(service.get_model(model, get_settings()))


@router.get("/health")
def health() -> Response:
    return json_response(service.health(get_settings()))

