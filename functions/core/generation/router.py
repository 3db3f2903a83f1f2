"""Where a generation request runs: light (ONNX on Lambda), heavy (SageMaker GPU) or async (a job).

The decision uses only the model name, the token budget and the async flag, so it is cheap, the
same in every container, and explainable: ``reason`` goes to the client (the HTTP layer's
``x-cirrus-route`` header) and to the log.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from functions.core.errors import ModelNotFound, ModelUnavailable, ValidationFailed
from functions.core.settings import Settings

Route = Literal["light", "heavy", "async"]


@dataclass(frozen=True)
class Decision:
    route: Route
    reason: str

    def summary(self) -> str:
        """``route; reason``: what the HTTP layer reports to the client (x-cirrus-route)."""
        return f"{self.route}; {self.reason}"


def decide(model: str, max_tokens: int, settings: Settings, *, want_async: bool = False,
           stream: bool = False) -> Decision:
    """Pick the route for ``model`` generating up to ``max_tokens`` tokens.

    Light when the model has an ONNX bundle on Lambda and the budget fits ``light_max_tokens``;
    heavy when the endpoint serves the model; async when asked for or over ``sync_max_tokens``.
    A streamed answer is never async: it has no 29 s limit to escape (the stream may last up to
    the function timeout), so a long one goes to heavy.
    """
    light = model in settings.generation_models
    heavy = model in settings.heavy_models
    if not light and not heavy:
        raise ModelNotFound(f"The model '{model[:128]}' does not exist or does not generate text", param="model")
    if heavy and not light and not (settings.heavy_endpoint_name or settings.heavy_async_endpoint_name):
        raise ModelUnavailable(f"model '{model}' is served by the heavy endpoint, which is disabled in "
                               f"stage '{settings.stage}'", code="heavy_endpoint_disabled")
    if stream and want_async:
        raise ValidationFailed("stream: a streamed answer cannot also be an async job (header "
                               "'Prefer: respond-async'); drop one of them", param="stream",
                               code="stream_async_conflict")
    over_sync = max_tokens > settings.sync_max_tokens and not stream
    if want_async or over_sync:
        why = "async requested" if want_async else f"max_tokens {max_tokens} > sync budget {settings.sync_max_tokens}"
        if not heavy:
            raise ValidationFailed(
                f"{why}, but model '{model}' runs on Lambda only, synchronously, up to "
                f"{settings.light_max_tokens} tokens; lower max_tokens or use a heavy model",
                param="max_tokens", code="async_not_available")
        if not settings.heavy_async_endpoint_name:
            raise ModelUnavailable(f"{why}, but async generation is disabled in stage '{settings.stage}' "
                                   f"(CIRRUS_HEAVY_ASYNC_ENDPOINT_NAME is not set)", code="async_disabled")
        return Decision("async", why)
    if light and max_tokens <= settings.light_max_tokens:
        return Decision("light", f"model on Lambda, max_tokens {max_tokens} <= {settings.light_max_tokens}")
    if heavy:
        if not settings.heavy_endpoint_name:
            raise ModelUnavailable(f"model '{model}' is served by the heavy endpoint, which is disabled in "
                                   f"stage '{settings.stage}'", code="heavy_endpoint_disabled")
        why = "heavy model" if not light else f"max_tokens {max_tokens} > light budget {settings.light_max_tokens}"
        return Decision("heavy", why)
    raise ValidationFailed(f"max_tokens {max_tokens} is over the {settings.light_max_tokens}-token budget of "
                           f"model '{model}' (served on Lambda)", param="max_tokens", code="over_token_budget")
