"""Auth and errors at the local gateway, as API Gateway + the authorizer + the API answer them."""
from __future__ import annotations

import json

import requests

EMBED = {"model": "all-minilm-l6-v2", "input": "hi"}


def _error(r: requests.Response) -> dict:
    body = r.json()
    assert set(body) == {"error"}
    assert {"message", "type", "code"} <= set(body["error"])
    return body["error"]


def test_missing_key_is_401(local_cirrus):
    r = requests.post(local_cirrus.url + "/v1/embeddings", json=EMBED, timeout=30)
    assert r.status_code == 401 and _error(r)["type"] == "authentication_error"


def test_wrong_and_malformed_keys_are_401(local_cirrus):
    real = local_cirrus.key
    forged = real[:-4] + ("AAAA" if not real.endswith("AAAA") else "BBBB")
    for token in (f"Bearer {forged}", "Bearer not-a-key", "Basic dXNlcjpwYXNz", f"Bearer {real}x"):
        r = requests.post(local_cirrus.url + "/v1/embeddings", json=EMBED, headers={"Authorization": token}, timeout=30)
        assert r.status_code == 401, token[:12]
        assert _error(r)["code"] == "invalid_api_key"


def test_openai_client_with_a_wrong_key_raises_authentication_error(local_cirrus):
    import openai

    client = openai.OpenAI(base_url=local_cirrus.url + "/v1", api_key="cir_0000000000000000_" + "x" * 43,
                           max_retries=0)
    try:
        client.embeddings.create(model="all-minilm-l6-v2", input="x")
    except openai.AuthenticationError as exc:
        assert exc.status_code == 401
    else:
        raise AssertionError("a wrong key was accepted")


def test_a_revoked_key_is_refused_at_once(local_cirrus):
    created = local_cirrus.cli("keys", "create", "--name", "it-revoke")
    assert created.returncode == 0, created.stderr
    record = json.loads(created.stdout)
    key, key_id = record["api_key"], record["key_id"]
    headers = {"Authorization": f"Bearer {key}"}
    assert requests.get(local_cirrus.url + "/v1/models", headers=headers, timeout=30).status_code == 200
    revoked = local_cirrus.cli("keys", "revoke", key_id)
    assert revoked.returncode == 0, revoked.stderr
    assert json.loads(revoked.stdout)["revoked"] is True
    r = requests.get(local_cirrus.url + "/v1/models", headers=headers, timeout=30)
    assert r.status_code == 401 and _error(r)["code"] == "invalid_api_key"
    # The key list shows it revoked and never shows a secret.
    listed = local_cirrus.cli("keys", "list")
    assert key_id in listed.stdout and key.split("_")[-1] not in listed.stdout


def test_invalid_json_is_400(local_cirrus):
    r = requests.post(local_cirrus.url + "/v1/embeddings", data=b'{"input": ', timeout=30,
                      headers={**local_cirrus.auth, "Content-Type": "application/json"})
    assert r.status_code == 400 and _error(r)["type"] == "invalid_request_error"


def test_unknown_model_is_404(local_cirrus):
    r = local_cirrus.post("/v1/embeddings", {"model": "no-such-model", "input": "x"})
    assert r.status_code == 404 and _error(r)["code"] == "model_not_found"


def test_unknown_route_is_404(local_cirrus):
    r = local_cirrus.get("/v1/nothing-here")
    assert r.status_code == 404 and _error(r)


def test_invalid_field_is_422(local_cirrus):
    r = local_cirrus.post("/v1/embeddings", {"model": "all-minilm-l6-v2", "input": 42})
    assert r.status_code == 422 and _error(r)["param"] == "input"


def test_body_over_the_api_limit_is_413(local_cirrus):
    r = local_cirrus.post("/v1/embeddings", {"model": "all-minilm-l6-v2", "input": "x" * 2_100_000})
    assert r.status_code == 413 and _error(r)["type"] == "invalid_request_error"


def test_errors_never_carry_a_stack_trace(local_cirrus):
    r = requests.post(local_cirrus.url + "/v1/classify", data=b"\xff\xfe", timeout=30,
                      headers={**local_cirrus.auth, "Content-Type": "application/json"})
    assert 400 <= r.status_code < 500
    assert "Traceback" not in r.text and "File \"" not in r.text
