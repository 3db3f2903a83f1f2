"""The official ``openai`` client against the handlers: its requests become API Gateway events in-process.

An httpx transport does what API Gateway does (authorizer on the Authorization header, then the
proxy event to the API function), so the client's real request shape and response parsing are
exercised without a network. The end-to-end test over HTTP lives with the local system.
"""
from __future__ import annotations

import json
from urllib.parse import urlsplit

import httpx2 as httpx  # the HTTP library this openai release is built on
import numpy as np
import openai
import pytest

from functions.core.auth import KeyStore, RejectToken
from functions.handlers.api import handler as api_handler
from functions.handlers.authorizer import handler as authorizer
from light_support import EMBEDDER, direct_embeddings, keys_table, lambda_context, load_event

STAGE_URL = "https://abc123defg.execute-api.us-east-1.amazonaws.com/dev"


def gateway(request: httpx.Request) -> httpx.Response:
    """API Gateway (REST, proxy integration, TOKEN authorizer) in front of the two handlers."""
    path = urlsplit(str(request.url)).path.removeprefix("/dev")
    token = request.headers.get("authorization", "")
    unauthorized = httpx.Response(401, json={"error": {"message": "Unauthorized", "type": "authentication_error",
                                                       "param": None, "code": "invalid_api_key"}})
    if not token:
        return unauthorized
    auth_event = load_event("authorizer_token.json")
    auth_event["authorizationToken"] = token
    auth_event["methodArn"] = f"arn:aws:execute-api:us-east-1:123456789012:abc123defg/dev/{request.method}{path}"
    try:
        policy = authorizer(auth_event, lambda_context())
    except RejectToken:
        return unauthorized
    event = load_event("embeddings_post.json")
    event.update(httpMethod=request.method, path=path, pathParameters={"proxy": path.lstrip("/")},
                 body=request.content.decode() or None,
                 headers=dict(request.headers.items()),
                 multiValueHeaders={k: [v] for k, v in request.headers.items()})
    event["requestContext"].update(httpMethod=request.method, path=f"/dev{path}",
                                   authorizer={"principalId": policy["principalId"], **policy["context"]})
    resp = api_handler(event, lambda_context())
    return httpx.Response(resp["statusCode"], headers=resp.get("headers") or {}, content=resp["body"].encode())


@pytest.fixture
def client(light_api, aws, env, bundles_dir):
    env(model_dir=str(bundles_dir), api_keys_table=keys_table())
    key, _ = KeyStore().create("openai-client")
    return openai.OpenAI(api_key=key, base_url=f"{STAGE_URL}/v1", max_retries=0,
                         http_client=httpx.Client(transport=httpx.MockTransport(gateway)))


def test_openai_client_embeddings_default_base64_decodes_to_the_models_vectors(client, bundles_dir):
    texts = ["The food was delicious.", "Where is my parcel?"]
    # The client asks for base64 by default and decodes it itself.
    result = client.embeddings.create(model=EMBEDDER, input=texts)
    got = np.array([d.embedding for d in result.data], dtype=np.float32)
    want = direct_embeddings(bundles_dir / EMBEDDER, texts)
    assert got.shape == (2, want.shape[1])
    assert (got * want).sum(1).min() > 0.97  # batched int8 vs single runs (see test_api)
    assert result.model == EMBEDDER and result.usage.prompt_tokens == result.usage.total_tokens > 0


def test_openai_client_float_format_and_single_string(client, bundles_dir):
    result = client.embeddings.create(model=EMBEDDER, input="hello world", encoding_format="float")
    assert np.allclose(result.data[0].embedding, direct_embeddings(bundles_dir / EMBEDDER, ["hello world"])[0],
                       atol=1e-5)


def test_openai_client_lists_models(client):
    ids = [m.id for m in client.models.list()]
    assert EMBEDDER in ids


def test_openai_client_sees_typed_errors(client):
    with pytest.raises(openai.NotFoundError) as nf:
        client.embeddings.create(model="no-such-model", input="x")
    assert nf.value.code == "model_not_found"
    with pytest.raises(openai.UnprocessableEntityError) as bad:
        client.embeddings.create(model=EMBEDDER, input="x", dimensions=64)
    assert bad.value.body["param"] == "dimensions"
    assert "384" in bad.value.body["message"]


def test_openai_client_dimensions_at_the_native_size(client):
    out = client.embeddings.create(model=EMBEDDER, input=["a", "b"], dimensions=384)
    assert [len(d.embedding) for d in out.data] == [384, 384]


def test_openai_client_with_a_wrong_key_gets_authentication_error(client):
    wrong = client.with_options(api_key="cir_0123456789abcdef_" + "A" * 43)
    with pytest.raises(openai.AuthenticationError):
        wrong.embeddings.create(model=EMBEDDER, input="x")


def test_openai_request_shape_is_what_the_handler_parses(client):
    seen: list[dict] = []

    def spy(request: httpx.Request) -> httpx.Response:
        seen.append({"method": request.method, "path": request.url.path,
                     "auth": request.headers["authorization"], "body": json.loads(request.content)})
        return gateway(request)

    spying = openai.OpenAI(api_key=client.api_key, base_url=str(client.base_url), max_retries=0,
                           http_client=httpx.Client(transport=httpx.MockTransport(spy)))
    spying.embeddings.create(model=EMBEDDER, input=["a", "b"])
    [req] = seen
    assert req["method"] == "POST" and req["path"] == "/dev/v1/embeddings"
    assert req["auth"].startswith("Bearer cir_")
    assert req["body"] == {"model": EMBEDDER, "input": ["a", "b"], "encoding_format": "base64"}
