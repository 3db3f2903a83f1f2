"""HTTP routes of the API's description: /openapi.json and the Swagger UI page at /docs (public routes)."""
from __future__ import annotations

import base64

from aws_lambda_powertools.event_handler import Response
from aws_lambda_powertools.event_handler.router import APIGatewayRouter

from functions.core.errors import NotFound
from functions.core.http.response import json_response

router = APIGatewayRouter()

# Swagger UI's files, shipped in the swagger-ui-bundle package (no CDN: the page works offline).
ASSETS = {"swagger-ui.css": "text/css", "swagger-ui-bundle.js": "application/javascript",
          "swagger-ui-standalone-preset.js": "application/javascript", "favicon-32x32.png": "image/png"}

# Relative URLs throughout: the same page works at /docs locally and at /<stage>/docs in AWS.
PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Cirrus API</title>
<link rel="icon" type="image/png" href="docs/favicon-32x32.png">
<link rel="stylesheet" href="docs/swagger-ui.css"></head>
<body><div id="swagger-ui"></div>
<script src="docs/swagger-ui-bundle.js"></script>
<script src="docs/swagger-ui-standalone-preset.js"></script>
<script>
window.ui = SwaggerUIBundle({url: "openapi.json", dom_id: "#swagger-ui", deepLinking: true,
  presets: [SwaggerUIBundle.presets.apis, SwaggerUIStandalonePreset], layout: "StandaloneLayout",
  persistAuthorization: true});
</script></body></html>
"""


@router.get("/openapi.json")
def openapi() -> Response:
    from functions.core.http.openapi import document  # on first use: not on every cold start

    return json_response(document())


@router.get("/docs")
def docs_page() -> Response:
    return Response(status_code=200, content_type="text/html; charset=utf-8", body=PAGE)


@router.get("/docs/<file>")
def docs_asset(file: str) -> Response:
    if file not in ASSETS:
        raise NotFound(f"no documentation file {file[:64]!r}", code="unknown_route")
    from swagger_ui_bundle import swagger_ui_path

    data = (swagger_ui_path / file).read_bytes()
    headers = {"Cache-Control": "public, max-age=86400"}
    if ASSETS[file].startswith("image/"):
        return Response(status_code=200, content_type=ASSETS[file], headers=headers,
                        body=base64.b64encode(data).decode("ascii"), compress=False)
    return Response(status_code=200, content_type=ASSETS[file], headers=headers, body=data.decode("utf-8"))
