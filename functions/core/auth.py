"""API keys: create, list, revoke and verify keys stored only as salted hashes in DynamoDB.

A key reads ``cir_<key_id>_<secret>``: the table is looked up by ``key_id`` and the secret's
salted SHA-256 is compared in constant time. The secret is 256 random bits, so a fast hash is
enough (a slow KDF only protects guessable passwords) and keeps the authorizer quick.
"""
from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Callable

from botocore.exceptions import BotoCoreError, ClientError

from functions.core.aws import dynamodb
from functions.core.aws.base import error_code, translate
from functions.core.errors import CirrusError, NotFound, Unauthorized, ValidationFailed
from functions.core.observability import logger
from functions.core.settings import get_settings

PREFIX = "cir"
_KEY = re.compile(r"^cir_([0-9a-f]{16})_([A-Za-z0-9_-]{43})$")
_NAME = re.compile(r"^[\w .@:-]{1,64}$")
HASH_ALGO = "sha256-salted"


@dataclass(frozen=True)
class KeyRecord:
    """What the table holds about a key (never the secret, never the hash outside this module)."""

    key_id: str
    name: str
    created_at: str
    revoked: bool = False
    revoked_at: str | None = None
    # The API Gateway key this key is metered and throttled as (ops/usage_plans.py): its id, and the
    # value the authorizer answers as usageIdentifierKey. Not a credential (clients never send it).
    usage_key_id: str | None = None
    usage_key: str | None = None
    usage_plan_id: str | None = None

    def public(self) -> dict[str, Any]:
        return {"key_id": self.key_id, "name": self.name, "created_at": self.created_at,
                "revoked": self.revoked, "revoked_at": self.revoked_at,
                "usage_key_id": self.usage_key_id, "usage_plan_id": self.usage_plan_id}


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _digest(salt: bytes, secret: str) -> str:
    return hashlib.sha256(salt + secret.encode("ascii")).hexdigest()


def _record(item: dict[str, Any]) -> KeyRecord:
    return KeyRecord(key_id=item["key_id"]["S"], name=item["name"]["S"], created_at=item["created_at"]["S"],
                     revoked=item.get("revoked", {}).get("BOOL", False),
                     revoked_at=item.get("revoked_at", {}).get("S"),
                     usage_key_id=item.get("usage_key_id", {}).get("S"), usage_key=item.get("usage_key", {}).get("S"),
                     usage_plan_id=item.get("usage_plan_id", {}).get("S"))


class KeyStore:
    """The api-keys table. ``ddb`` defaults to the container's client (tests and the CLI pass one)."""

    def __init__(self, table: str | None = None, ddb: Any = None) -> None:
        table = table or get_settings().api_keys_table
        if not table:
            raise RuntimeError("no API keys table: set CIRRUS_API_KEYS_TABLE or pass --table")
        self.table = table
        self.ddb = ddb

    def create(self, name: str, *, usage: Callable[[str], Any] | None = None) -> tuple[str, KeyRecord]:
        """A new key: returns the full key (shown once, never stored) and its record.

        ``usage(key_id)`` registers the key in a usage plan (``ops.usage_plans.UsagePlans.register``)
        and returns its ``UsageKey``; without it the key has no per-key limits (and a REST API that
        requires usage keys refuses it).
        """
        if not _NAME.match(name):
            raise ValidationFailed("key name: 1-64 letters, digits, spaces or . _ @ : -", param="name")
        key_id, secret = secrets.token_hex(8), secrets.token_urlsafe(32)
        salt = secrets.token_bytes(16)
        registered = usage(key_id) if usage is not None else None
        record = KeyRecord(key_id=key_id, name=name, created_at=_now(),
                           usage_key_id=registered.id if registered else None,
                           usage_key=registered.value if registered else None,
                           usage_plan_id=registered.plan_id if registered else None)
        item = {"key_id": {"S": key_id}, "name": {"S": name}, "created_at": {"S": record.created_at},
                "salt": {"B": salt}, "hash": {"S": _digest(salt, secret)}, "algo": {"S": HASH_ALGO},
                "revoked": {"BOOL": False}}
        if registered:
            item.update({"usage_key_id": {"S": registered.id}, "usage_key": {"S": registered.value},
                         "usage_plan_id": {"S": registered.plan_id}})
        # The condition makes a (vanishingly unlikely) key_id collision fail instead of overwrite.
        dynamodb.put_item(self.table, item, condition="attribute_not_exists(key_id)", ddb=self.ddb)
        return f"{PREFIX}_{key_id}_{secret}", record

    def list(self) -> list[KeyRecord]:
        items = dynamodb.scan(self.table, projection="key_id, #n, created_at, revoked, revoked_at, "
                                                     "usage_key_id, usage_plan_id",
                              names={"#n": "name"}, ddb=self.ddb)
        return sorted((_record(i) for i in items), key=lambda r: r.created_at)

    def revoke(self, key_id: str) -> KeyRecord:
        try:
            attrs = dynamodb.update_item(
                self.table, {"key_id": {"S": key_id}}, update="SET revoked = :t, revoked_at = :now",
                values={":t": {"BOOL": True}, ":now": {"S": _now()}},
                condition="attribute_exists(key_id)", ddb=self.ddb)
        except ClientError as exc:
            if error_code(exc) == "ConditionalCheckFailedException":
                raise NotFound(f"no API key with id {key_id}", param="key_id", code="key_not_found") from exc
            raise
        return _record(attrs)

    def verify(self, authorization: str | None) -> KeyRecord:
        """The key's record for an ``Authorization`` header value; ``Unauthorized`` for anything else.

        The message never says which part failed (unknown id, wrong secret, revoked) to a caller.
        """
        # RFC 7235: the scheme is case-insensitive ("bearer" is as good as "Bearer"); a bare key with
        # no scheme is refused, so only the form the docs and OpenAI clients send ever works.
        scheme, _, token = (authorization or "").strip().partition(" ")
        match = _KEY.match(token.strip()) if scheme.lower() == "bearer" else None
        if not match:
            raise Unauthorized("Incorrect API key provided")
        key_id, secret = match.groups()
        try:
            item = dynamodb.get_item(self.table, {"key_id": {"S": key_id}}, consistent=True, ddb=self.ddb)
        except (ClientError, BotoCoreError) as exc:
            raise translate(exc, "checking the API key") from exc
        if item is None:
            # Hash anyway so an unknown id costs the same time as a known one.
            hmac.compare_digest(_digest(b"\0" * 16, secret), "0" * 64)
            raise Unauthorized("Incorrect API key provided")
        ok = hmac.compare_digest(_digest(item["salt"]["B"], secret), item["hash"]["S"])
        record = _record(item)
        if not ok or record.revoked:
            raise Unauthorized("Incorrect API key provided")
        return record


def authorizer_policy(record: KeyRecord, method_arn: str) -> dict[str, Any]:
    """IAM policy allowing the whole stage (``.../<stage>/*``) so API Gateway's authorizer cache
    answers for every route, with the key id/name as context for the API function's logs."""
    parts = method_arn.split(":", 5)
    if len(parts) != 6 or not parts[0] == "arn":
        raise CirrusError("malformed methodArn in authorizer event")
    api_id, stage = parts[5].split("/")[:2]
    resource = ":".join(parts[:5]) + f":{api_id}/{stage}/*"
    policy = {
        "principalId": record.key_id,
        "policyDocument": {"Version": "2012-10-17", "Statement": [
            {"Action": "execute-api:Invoke", "Effect": "Allow", "Resource": resource}]},
        "context": {"key_id": record.key_id, "key_name": record.name},
    }
    if record.usage_key:
        # apiKeySource AUTHORIZER: API Gateway throttles and meters this key by its usage plan.
        policy["usageIdentifierKey"] = record.usage_key
    return policy


class RejectToken(Exception):
    """Raised to API Gateway by the TOKEN authorizer: the message must be exactly "Unauthorized"
    for API Gateway to answer 401 (any other failure becomes a 500)."""

    def __init__(self) -> None:
        super().__init__("Unauthorized")


def authorize(event: dict[str, Any]) -> dict[str, Any]:
    """The TOKEN authorizer's whole job: verify the bearer key, answer a policy or RejectToken."""
    try:
        record = key_store().verify(event.get("authorizationToken"))
    except Unauthorized:
        logger.info("api key rejected")
        raise RejectToken() from None
    logger.info("api key accepted", extra={"key_id": record.key_id})
    return authorizer_policy(record, event["methodArn"])


_store: KeyStore | None = None


def key_store() -> KeyStore:
    """The container's key store, from settings."""
    global _store
    if _store is None:
        _store = KeyStore()
    return _store


def reset() -> None:
    global _store
    _store = None
