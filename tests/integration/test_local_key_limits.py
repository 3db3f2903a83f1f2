"""Per-key rate, burst and quota over HTTP: keys created with the keys CLI, held to their usage plan."""
from __future__ import annotations

import json

import requests


def _create_key(local_cirrus, *limits: str) -> str:
    out = local_cirrus.cli("keys", "create", "--name", "limited", *limits)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)["api_key"]


def test_a_key_created_with_its_own_rate_is_throttled_with_429_and_retry_after_others_are_not(local_cirrus):
    key = _create_key(local_cirrus, "--rate", "0.01", "--burst", "3")
    auth = {"Authorization": f"Bearer {key}"}
    statuses = [requests.get(local_cirrus.url + "/health", headers=auth, timeout=30) for _ in range(5)]
    assert [r.status_code for r in statuses] == [200, 200, 200, 429, 429]
    throttled = statuses[-1]
    assert throttled.headers["Retry-After"] == "1"
    assert throttled.json()["error"]["type"] == "rate_limit_error" and throttled.json()["error"]["code"] == "rate_limited"
    assert local_cirrus.get("/health").status_code == 200  # the dev key's budget is its own


def test_a_key_over_its_quota_gets_quota_exceeded(local_cirrus):
    key = _create_key(local_cirrus, "--quota", "2")
    auth = {"Authorization": f"Bearer {key}"}
    codes = [requests.get(local_cirrus.url + "/health", headers=auth, timeout=30).status_code for _ in range(3)]
    assert codes[:2] == [200, 200] and codes[2] == 429
    r = requests.get(local_cirrus.url + "/health", headers=auth, timeout=30)
    assert r.json()["error"]["code"] == "quota_exceeded" and r.headers["Retry-After"]


def test_a_key_created_without_a_usage_plan_is_refused_403(local_cirrus):
    out = local_cirrus.cli("keys", "create", "--help")  # the CLI documents the limits
    assert "--rate" in out.stdout and "--quota" in out.stdout
    # A key without a usage key (made with the plan id emptied) is let in by the authorizer, but
    # API Gateway requires a usage key on every method: 403.
    from functions.core.auth import KeyStore

    store = KeyStore(local_cirrus.state["tables"]["ApiKeys"], ddb=local_cirrus.aws("dynamodb"))
    key, _ = store.create("no-plan")
    r = requests.post(local_cirrus.url + "/v1/embeddings", json={"model": "all-minilm-l6-v2", "input": "x"},
                      headers={"Authorization": f"Bearer {key}"}, timeout=30)
    assert r.status_code == 403 and r.json()["error"]["code"] == "key_not_enabled"
