"""Powertools Logger, Tracer and Metrics: one instance of each per container, shared by all modules."""
from __future__ import annotations

import os
from contextlib import asynccontextmanager, contextmanager
from typing import Any

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.tracing.base import BaseProvider, BaseSegment

# Powertools' own variables name the service (the stack sets one per function, e.g. cirrus-api) and the
# metrics namespace; without them (the local system runs every handler in one process) "cirrus"/"Cirrus".
SERVICE = os.environ.get("POWERTOOLS_SERVICE_NAME") or "cirrus"
NAMESPACE = os.environ.get("POWERTOOLS_METRICS_NAMESPACE") or "Cirrus"


class _NoSegment(BaseSegment):
    """A subsegment that records nothing (tracing is off)."""

    def close(self, end_time: int | None = None) -> None: ...
    def add_subsegment(self, subsegment: Any) -> None: ...
    def remove_subsegment(self, subsegment: Any) -> None: ...
    def put_annotation(self, key: str, value: Any) -> None: ...
    def put_metadata(self, key: str, value: Any, namespace: str = "default") -> None: ...
    def add_exception(self, exception: BaseException, stack: Any, remote: bool = False) -> None: ...


class _NoTracing(BaseProvider):
    """Tracer provider for when tracing is off: same decorators, no X-Ray SDK imported."""

    _segment = _NoSegment()

    @contextmanager
    def in_subsegment(self, name=None, **kwargs):
        yield self._segment

    @asynccontextmanager
    async def in_subsegment_async(self, name=None, **kwargs):
        yield self._segment

    def put_annotation(self, key: str, value: Any) -> None: ...
    def put_metadata(self, key: str, value: Any, namespace: str = "default") -> None: ...
    def patch(self, modules: Any) -> None: ...
    def patch_all(self) -> None: ...


# Cirrus's only outbound calls are AWS calls through botocore (S3, DynamoDB, SQS, SageMaker), so
# only botocore is patched. The default (patch_all) imports and patches every library X-Ray
# supports that happens to be installed (~0.2 s on a dev machine at cold start), and its httplib
# patch records each AWS call a second time as a plain HTTP subsegment.
TRACED_MODULES = ("botocore",)


def tracing_off(environ: Any = None) -> bool:
    """Powertools' documented rule for tracing off: POWERTOOLS_TRACE_DISABLED is true, or the code
    runs outside Lambda (no LAMBDA_TASK_ROOT) or under a local emulator (SAM local, Chalice local)."""
    env = os.environ if environ is None else environ
    if str(env.get("POWERTOOLS_TRACE_DISABLED", "false")).strip().lower() in ("1", "true", "yes", "on", "y", "t"):
        return True
    return not env.get("LAMBDA_TASK_ROOT") or bool(env.get("AWS_SAM_LOCAL") or env.get("AWS_CHALICE_CLI_MODE"))


def _tracer() -> Tracer:
    # Powertools builds its X-Ray provider (aws_xray_sdk.core: ~0.15-0.3 s of imports at cold start)
    # even when tracing is off. Then a provider that records nothing stands in.
    if tracing_off():
        return Tracer(service=SERVICE, disabled=True, provider=_NoTracing())
    return Tracer(service=SERVICE, patch_modules=TRACED_MODULES)


# The other POWERTOOLS_* environment variables (log level, sampling, disabling tracing) apply as usual.
logger = Logger(service=SERVICE)
tracer = _tracer()
metrics = Metrics(namespace=NAMESPACE, service=SERVICE)
