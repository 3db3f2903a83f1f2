"""Per-key rate, burst and quota: API Gateway usage plans and API keys, one per Cirrus key.

The REST API takes its API key from the authorizer (``apiKeySource: AUTHORIZER``): the TOKEN
authorizer answers the ``usageIdentifierKey`` stored with the Cirrus key, and API Gateway meters
and throttles that key by the usage plan it belongs to. A key created without limits joins the
stage's default plan (cdk.json ``api.key_*``); ``--rate/--burst/--quota`` give it a plan of its own
on the same API stage. The API Gateway key value is not a credential: clients never send it, only
the authorizer hands it to API Gateway, so it is stored in the keys table next to the key's hash.

The local gateway (local/gateway.py) reads the same plans from moto's API Gateway and enforces
them with the same token-bucket and quota semantics.
"""
from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any, Literal

from functions.core.errors import ValidationFailed

Period = Literal["DAY", "WEEK", "MONTH"]


@dataclass(frozen=True)
class KeyLimits:
    """A usage plan's limits: steady requests/s, burst (bucket size), requests per period."""

    rate: float | None = None
    burst: int | None = None
    quota: int | None = None
    period: Period = "DAY"

    def __post_init__(self) -> None:
        if self.rate is not None and not 0 < self.rate <= 10_000:
            raise ValidationFailed("rate: requests per second, > 0 and <= 10000", param="rate")
        if self.burst is not None and not 1 <= self.burst <= 5_000:
            raise ValidationFailed("burst: 1..5000 requests", param="burst")
        if self.quota is not None and self.quota < 1:
            raise ValidationFailed("quota: at least 1 request per period", param="quota")
        if self.period not in ("DAY", "WEEK", "MONTH"):
            raise ValidationFailed("period: DAY, WEEK or MONTH", param="period")

    @property
    def any(self) -> bool:
        return self.rate is not None or self.burst is not None or self.quota is not None

    def plan_fields(self) -> dict[str, Any]:
        """``create_usage_plan`` throttle/quota arguments (API Gateway needs rate and burst together)."""
        out: dict[str, Any] = {}
        if self.rate is not None or self.burst is not None:
            out["throttle"] = {"rateLimit": float(self.rate if self.rate is not None else self.burst or 1),
                               "burstLimit": int(self.burst if self.burst is not None else max(1, int(self.rate or 1)))}
        if self.quota is not None:
            out["quota"] = {"limit": int(self.quota), "period": self.period}
        return out

    @classmethod
    def of_plan(cls, plan: dict[str, Any]) -> "KeyLimits":
        throttle, quota = plan.get("throttle") or {}, plan.get("quota") or {}
        return cls(rate=throttle.get("rateLimit"), burst=throttle.get("burstLimit"),
                   quota=quota.get("limit"), period=quota.get("period", "DAY"))


@dataclass(frozen=True)
class UsageKey:
    """The API Gateway key standing for one Cirrus key: its id (to disable it) and value."""

    id: str
    value: str
    plan_id: str


class UsagePlans:
    """Registers Cirrus keys in usage plans. ``default_plan_id``: the stage's plan (stack output)."""

    def __init__(self, apigw: Any, default_plan_id: str) -> None:
        self.apigw = apigw
        self.default_plan_id = default_plan_id

    def register(self, key_id: str, limits: KeyLimits | None = None) -> UsageKey:
        """An API Gateway key for ``key_id`` in the default plan, or in its own plan with ``limits``."""
        default = self.apigw.get_usage_plan(usagePlanId=self.default_plan_id)
        plan_id = self.default_plan_id
        if limits is not None and limits.any:
            # Unset limits fall back to the stage's: a key's own plan never lifts what it does not name.
            merged = KeyLimits.of_plan(default)
            merged = KeyLimits(rate=limits.rate if limits.rate is not None else merged.rate,
                               burst=limits.burst if limits.burst is not None else merged.burst,
                               quota=limits.quota if limits.quota is not None else merged.quota,
                               period=limits.period if limits.quota is not None else merged.period)
            plan = self.apigw.create_usage_plan(
                name=f"cirrus-key-{key_id}", description=f"limits of Cirrus key {key_id}",
                apiStages=default.get("apiStages", []), **merged.plan_fields())
            plan_id = plan["id"]
        value = secrets.token_urlsafe(30)  # API Gateway wants >= 20 characters
        key = self.apigw.create_api_key(name=f"cirrus-{key_id}", enabled=True, value=value,
                                        description=f"usage identifier of Cirrus key {key_id}")
        self.apigw.create_usage_plan_key(usagePlanId=plan_id, keyId=key["id"], keyType="API_KEY")
        return UsageKey(id=key["id"], value=value, plan_id=plan_id)

    def disable(self, usage_key_id: str) -> None:
        self.apigw.update_api_key(apiKey=usage_key_id,
                                  patchOperations=[{"op": "replace", "path": "/enabled", "value": "false"}])


def limits_for(apigw: Any, value: str) -> KeyLimits | None:
    """The limits API Gateway applies to the key with ``value``; None if no enabled key is in a plan
    (API Gateway then answers 403). Used by the local gateway, which has no metering of its own."""
    position = None
    while True:
        page = apigw.get_api_keys(includeValues=True, **({"position": position} if position else {}))
        for item in page.get("items", []):
            if item.get("value") == value:
                if not item.get("enabled", False):
                    return None
                plans = apigw.get_usage_plans(keyId=item["id"]).get("items", [])
                return KeyLimits.of_plan(plans[0]) if plans else None
        position = page.get("position")
        if not position:
            return None
