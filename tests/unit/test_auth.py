"""API keys on a KMS-encrypted DynamoDB table (moto): the TOKEN authorizer, the key store and the CLI."""
from __future__ import annotations

import io
import json

import boto3
import pytest
from botocore.stub import Stubber

from ops import keys as keys_cli
from functions.core.aws import base
from functions.core.auth import KeyStore, RejectToken
from functions.core.errors import NotFound, Throttled, ValidationFailed
from functions.core.observability import logger
from functions.handlers.authorizer import handler as authorizer
from light_support import REGION, lambda_context, keys_table, load_event


@pytest.fixture
def table(env, aws):
    name = keys_table()
    env(api_keys_table=name)
    return name


def token_event(key: str | None) -> dict:
    event = load_event("authorizer_token.json")
    event["authorizationToken"] = f"Bearer {key}" if key is not None else ""
    return event


def test_table_is_encrypted_with_a_customer_kms_key(table):
    sse = boto3.client("dynamodb", region_name=REGION).describe_table(TableName=table)["Table"]["SSEDescription"]
    assert sse["Status"] == "ENABLED" and sse["SSEType"] == "KMS"


def test_valid_key_gets_an_allow_policy_for_the_whole_stage_with_key_context(table):
    key, record = KeyStore().create("shop-search")
    event = token_event(key)
    policy = authorizer(event, lambda_context())
    assert policy["principalId"] == record.key_id
    [statement] = policy["policyDocument"]["Statement"]
    assert statement == {"Action": "execute-api:Invoke", "Effect": "Allow",
                         "Resource": "arn:aws:execute-api:us-east-1:123456789012:abc123defg/dev/*"}
    assert policy["context"] == {"key_id": record.key_id, "key_name": "shop-search"}


@pytest.mark.parametrize("mangle", [
    lambda k: None,                           # no header value at all
    lambda k: "",                             # empty
    lambda k: k[:-1] + ("A" if k[-1] != "A" else "B"),  # wrong secret
    lambda k: "cir_" + "f" * 16 + k[20:],     # unknown key id, well-formed
    lambda k: "sk-" + k,                      # not our format
    lambda k: k + " extra",
])
def test_wrong_or_missing_key_is_rejected_with_unauthorized(table, mangle):
    key, _ = KeyStore().create("tests")
    with pytest.raises(RejectToken) as exc:
        authorizer(token_event(mangle(key)), lambda_context())
    # API Gateway answers 401 only when the authorizer fails with exactly this message.
    assert str(exc.value) == "Unauthorized"


def test_revoked_key_is_rejected(table):
    store = KeyStore()
    key, record = store.create("leaked")
    assert authorizer(token_event(key), lambda_context())["principalId"] == record.key_id
    revoked = store.revoke(record.key_id)
    assert revoked.revoked and revoked.revoked_at
    with pytest.raises(RejectToken):
        authorizer(token_event(key), lambda_context())


def test_bearer_scheme_is_case_insensitive(table):
    key, record = KeyStore().create("tests")
    event = token_event(key)
    event["authorizationToken"] = f"bearer {key}"
    assert authorizer(event, lambda_context())["principalId"] == record.key_id


@pytest.mark.parametrize("form", ["{key}", "Basic {key}", "Bearer{key}", "Token {key}", "Bearer  {key} extra"])
def test_a_key_without_the_bearer_scheme_is_refused(table, form):
    key, _ = KeyStore().create("tests")
    event = token_event(key)
    event["authorizationToken"] = form.format(key=key)
    with pytest.raises(RejectToken):
        authorizer(event, lambda_context())


def test_only_a_salted_hash_is_stored(table):
    key, record = KeyStore().create("tests")
    key2, _ = KeyStore().create("tests")
    secret = key.split("_", 2)[2]
    items = boto3.client("dynamodb", region_name=REGION).scan(TableName=table)["Items"]
    stored = json.dumps(items, default=str)
    assert secret not in stored and key not in stored
    salts = {bytes(i["salt"]["B"]) for i in items}
    assert len(salts) == 2  # a fresh salt per key
    item = next(i for i in items if i["key_id"]["S"] == record.key_id)
    assert set(item) >= {"key_id", "name", "created_at", "salt", "hash", "revoked"}


def test_list_shows_keys_without_secrets_or_hashes(table):
    store = KeyStore()
    store.create("a")
    _, b = store.create("b")
    store.revoke(b.key_id)
    listed = {r.name: r for r in store.list()}
    assert set(listed) == {"a", "b"}
    assert listed["b"].revoked and not listed["a"].revoked
    assert "hash" not in listed["a"].public() and "salt" not in listed["a"].public()


def test_revoking_an_unknown_key_is_not_found(table):
    with pytest.raises(NotFound):
        KeyStore().revoke("0" * 16)


def test_key_names_are_validated(table):
    with pytest.raises(ValidationFailed):
        KeyStore().create("")


def test_table_throttling_is_not_reported_as_a_bad_key(table):
    # A throttled lookup must not answer 401 (the key may be fine): it fails as an error (500 at the gateway).
    key, _ = KeyStore().create("tests")
    stubber = Stubber(base.client("dynamodb"))
    for _ in range(3):
        stubber.add_client_error("get_item", service_error_code="ProvisionedThroughputExceededException",
                                 http_status_code=400)
    with stubber, pytest.raises(Throttled):
        authorizer(token_event(key), lambda_context())


def test_authorizer_never_logs_the_key(table, monkeypatch):
    logs = io.StringIO()
    monkeypatch.setattr(logger.registered_handler, "stream", logs)
    key, _ = KeyStore().create("tests")
    authorizer(token_event(key), lambda_context())
    with pytest.raises(RejectToken):
        authorizer(token_event(key + "x"), lambda_context())
    out = logs.getvalue()
    assert "api key accepted" in out and "api key rejected" in out
    assert key.split("_", 2)[2] not in out


def test_cli_creates_prints_once_lists_and_revokes(table, capsys):
    assert keys_cli.main(["--table", table, "create", "--name", "cli-user"]) == 0
    out = capsys.readouterr()
    created = json.loads(out.out)
    assert "in no usage plan" in out.err  # without --usage-plan: API Gateway would answer it 403
    key = created["api_key"]
    assert key.startswith(f"cir_{created['key_id']}_")
    assert authorizer(token_event(key), lambda_context())["context"]["key_name"] == "cli-user"

    assert keys_cli.main(["--table", table, "list"]) == 0
    listed = capsys.readouterr().out
    assert created["key_id"] in listed and key.split("_", 2)[2] not in listed

    assert keys_cli.main(["--table", table, "revoke", created["key_id"]]) == 0
    assert json.loads(capsys.readouterr().out)["revoked"] is True
    with pytest.raises(RejectToken):
        authorizer(token_event(key), lambda_context())


def test_cli_reports_errors_without_a_traceback(table, capsys):
    assert keys_cli.main(["--table", table, "revoke", "0" * 16]) == 1
    assert "no API key with id" in capsys.readouterr().err


def test_cli_reports_a_table_that_does_not_exist_on_one_line(table, capsys):
    assert keys_cli.main(["--table", "no-such-table", "list"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ResourceNotFoundException") and len(err.strip().splitlines()) == 1


def test_cli_reports_a_missing_region_on_one_line(aws_env, monkeypatch, tmp_path, capsys):
    for var in ("AWS_DEFAULT_REGION", "AWS_REGION"):
        monkeypatch.delenv(var)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))  # no region from ~/.aws/config either
    assert keys_cli.main(["--table", "t", "list"]) == 1
    assert capsys.readouterr().err == "error: You must specify a region.\n"


@pytest.mark.parametrize("endpoint, message", [
    ("http://127.0.0.1:9", 'error: Could not connect to the endpoint URL: "http://127.0.0.1:9/"'),
    ("notaurl", "error: Invalid endpoint: notaurl"),
])
def test_cli_reports_a_bad_endpoint_on_one_line(aws_env, capsys, endpoint, message):
    assert keys_cli.main(["--table", "t", "--endpoint-url", endpoint, "list"]) == 1
    assert capsys.readouterr().err.strip() == message


# ------------------------------------------------------------------------------ usage plans (per-key limits)
@pytest.fixture
def plans(table):
    """The stage's default usage plan on moto's API Gateway, as the stack creates it."""
    from ops.usage_plans import UsagePlans

    ag = boto3.client("apigateway", region_name=REGION)
    api = ag.create_rest_api(name="cirrus-test", apiKeySource="AUTHORIZER")
    plan = ag.create_usage_plan(name="default", apiStages=[{"apiId": api["id"], "stage": "test"}],
                                throttle={"rateLimit": 5.0, "burstLimit": 10}, quota={"limit": 1000, "period": "DAY"})
    return UsagePlans(ag, plan["id"])


def test_a_key_in_the_default_plan_gets_its_limits_and_the_authorizer_names_its_usage_key(plans):
    from ops.usage_plans import KeyLimits, limits_for

    key, record = KeyStore().create("tenant-a", usage=plans.register)
    policy = authorizer(token_event(key), lambda_context())
    assert policy["usageIdentifierKey"] == record.usage_key and record.usage_key != key
    assert key.split("_")[-1] not in record.usage_key  # the usage key is not derived from the secret
    assert limits_for(plans.apigw, record.usage_key) == KeyLimits(rate=5.0, burst=10, quota=1000, period="DAY")
    assert record.usage_key not in json.dumps(record.public())


def test_a_key_with_its_own_limits_gets_its_own_plan_and_keeps_the_stage_quota(plans):
    from ops.usage_plans import KeyLimits, limits_for

    _, record = KeyStore().create("tenant-b", usage=lambda kid: plans.register(kid, KeyLimits(rate=1, burst=2)))
    assert record.usage_plan_id != plans.default_plan_id
    assert limits_for(plans.apigw, record.usage_key) == KeyLimits(rate=1.0, burst=2, quota=1000, period="DAY")


def test_keys_cli_create_with_limits_and_revoke_disables_the_usage_key(plans, capsys):
    from ops.usage_plans import KeyLimits, limits_for

    assert keys_cli.main(["create", "--name", "cli-key", "--usage-plan", plans.default_plan_id,
                          "--rate", "2", "--burst", "4", "--quota", "99", "--quota-period", "WEEK"]) == 0
    out = json.loads(capsys.readouterr().out)
    record = KeyStore().verify(f"Bearer {out['api_key']}")
    assert limits_for(plans.apigw, record.usage_key) == KeyLimits(rate=2.0, burst=4, quota=99, period="WEEK")
    assert keys_cli.main(["revoke", out["key_id"]]) == 0
    assert limits_for(plans.apigw, record.usage_key) is None  # disabled: API Gateway refuses it too


@pytest.mark.parametrize("args", [["--rate", "0"], ["--burst", "0"], ["--quota", "0"], ["--rate", "5"]])
def test_keys_cli_refuses_bad_limits_or_limits_without_a_plan(table, capsys, args, monkeypatch):
    monkeypatch.delenv("CIRRUS_USAGE_PLAN_ID", raising=False)
    assert keys_cli.main(["create", "--name", "x", *args]) == 1
    assert "error:" in capsys.readouterr().err
