"""Routing decisions: light vs heavy vs async, by model, token budget and the async flag."""
from __future__ import annotations

import pytest

from functions.core.errors import ModelNotFound, ModelUnavailable, ValidationFailed
from functions.core.generation.router import decide
from functions.core.settings import Settings


def settings(**kw) -> Settings:
    base = dict(generation_models=["tiny"], heavy_models=["big", "tiny"], heavy_endpoint_name="ep",
                heavy_async_endpoint_name="ep-async", light_max_tokens=100, sync_max_tokens=500)
    return Settings(**{**base, **kw})


@pytest.mark.parametrize("model,tokens,want_async,route", [
    ("tiny", 100, False, "light"),      # on Lambda and within its budget
    ("tiny", 101, False, "heavy"),      # over the light budget, the endpoint serves it too
    ("big", 10, False, "heavy"),        # only on the endpoint
    ("big", 501, False, "async"),       # over the sync budget
    ("big", 10, True, "async"),         # asked for
    ("tiny", 10, True, "async"),
])
def test_router_picks_the_route_by_model_budget_and_flag(model, tokens, want_async, route):
    d = decide(model, tokens, settings(), want_async=want_async)
    assert d.route == route
    assert d.summary().startswith(route + "; ") and len(d.reason) > 5


def test_unknown_model_is_404():
    with pytest.raises(ModelNotFound):
        decide("nope", 10, settings())


def test_light_only_model_over_its_budget_is_422_naming_the_budget():
    with pytest.raises(ValidationFailed) as exc:
        decide("tiny", 101, settings(heavy_models=["big"]))
    assert exc.value.code == "over_token_budget" and "100" in exc.value.message


def test_async_for_a_light_only_model_is_422():
    with pytest.raises(ValidationFailed) as exc:
        decide("tiny", 10, settings(heavy_models=["big"]), want_async=True)
    assert exc.value.code == "async_not_available"


def test_heavy_model_with_endpoint_disabled_in_the_stage_is_a_clear_503():
    with pytest.raises(ModelUnavailable) as exc:
        decide("big", 10, settings(heavy_endpoint_name=None, stage="dev"))
    assert exc.value.status == 503 and exc.value.code == "heavy_endpoint_disabled" and "dev" in exc.value.message


def test_async_without_an_async_endpoint_is_a_clear_503():
    with pytest.raises(ModelUnavailable) as exc:
        decide("big", 10, settings(heavy_async_endpoint_name=None), want_async=True)
    assert exc.value.code == "async_disabled"
