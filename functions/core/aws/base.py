"""Shared boto3 plumbing for the adapters: one client per service per container, explicit timeouts.

Endpoints come from boto3's own ``AWS_ENDPOINT_URL`` (the local system points it at the moto
server), so this code is the same in AWS and on one machine.
"""
from __future__ import annotations

import threading
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from functions.core.errors import CirrusError, ModelUnavailable, Throttled

# Lambda functions have seconds, not minutes: fail fast on a dead connection and let the
# standard retry mode (with jitter) absorb transient errors and throttles a few times.
_CLIENT_OPTIONS: dict[str, Any] = dict(
    connect_timeout=3,
    read_timeout=10,
    retries={"max_attempts": 3, "mode": "standard"},
    tcp_keepalive=True,
)
_config: Any = None  # built by _client_config()


def _client_config() -> Any:
    """The botocore Config of the options above, built on first use: botocore.config alone costs
    ~0.1 s of imports, and a cold start with a local model folder makes no AWS call at all."""
    global _config
    if _config is None:
        from botocore.config import Config

        _config = Config(**_CLIENT_OPTIONS)
    return _config


# Error codes meaning "slow down": surfaced as 429 rather than as a server error.
THROTTLING_CODES = frozenset({
    "Throttling", "ThrottlingException", "ThrottledException", "RequestThrottled",
    "RequestThrottledException", "TooManyRequestsException", "ProvisionedThroughputExceededException",
    "RequestLimitExceeded", "SlowDown",
})

_clients: dict[str, Any] = {}
_lock = threading.Lock()


def make_client(service: str, *, endpoint_url: str | None = None, region_name: str | None = None,
                options: dict[str, Any] | None = None, credentials: dict[str, str] | None = None) -> Any:
    """A new client with Cirrus's timeouts/retries: the one boto3 client factory (functions use
    ``client``, which caches these). ``options`` override botocore Config fields (e.g. the heavy
    path's own timeouts); ``credentials`` (aws_access_key_id, ...) replace the environment's."""
    # boto3 costs ~0.15 s of imports: paid with the first client, not at import.
    import boto3
    from botocore.config import Config

    config = _client_config()
    if options:
        config = config.merge(Config(**options))
    # SigV4 for S3 always: presigned URLs for SSE-KMS objects are refused with any other signature.
    config = config.merge(Config(signature_version="s3v4")) if service == "s3" else config
    session = boto3.session.Session(**(credentials or {}))
    return session.client(service, endpoint_url=endpoint_url, region_name=region_name, config=config)


def client(service: str) -> Any:
    """The container's client for ``service``, created on first use (not at import: cold start)."""
    found = _clients.get(service)
    if found is None:
        with _lock:
            found = _clients.get(service)
            if found is None:
                found = _clients[service] = make_client(service)
    return found


def reset_clients() -> None:
    """Forget cached clients (tests start a new moto context per test)."""
    with _lock:
        _clients.clear()


def error_code(exc: BaseException) -> str | None:
    """The AWS error code of a ``ClientError`` (None for anything else): the one reader of it."""
    if isinstance(exc, ClientError):
        return exc.response.get("Error", {}).get("Code")
    return None


def error_message(exc: BaseException) -> str:
    """AWS's message of a ``ClientError`` ("" for anything else); for operators' CLIs, never clients."""
    if isinstance(exc, ClientError):
        return exc.response.get("Error", {}).get("Message", "") or ""
    return ""


def translate(exc: BaseException, what: str) -> CirrusError:
    """Map an AWS failure to the client-facing error: throttles to 429, the rest to 503.

    ``what`` names the operation for the message; AWS error text is not echoed (it can hold
    bucket/table names and account ids).
    """
    code = error_code(exc)
    if code in THROTTLING_CODES:
        return Throttled(f"{what}: the backing store is throttling requests, retry shortly",
                         retry_after=1)
    if isinstance(exc, (ClientError, BotoCoreError)):
        return ModelUnavailable(f"{what}: backing store unavailable ({code or exc.__class__.__name__})",
                                code="dependency_unavailable")
    raise TypeError(f"not an AWS error: {exc!r}")
