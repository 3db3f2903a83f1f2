"""The contract between exporter, stack, functions and local system: S3 layout, registry pointer, queue timing.

Written once here and imported by ``functions/``, ``infra/``, ``local/`` and ``model_export/``
(the functions ship without the others, so the shared facts live on their side).
"""
from __future__ import annotations

from pydantic import BaseModel, Field

# --- S3 layout -----------------------------------------------------------------------------------
MODELS_PREFIX = "models/"                    # artifacts bucket: models/<name>/<version>/<file>
POINTER_NAME = "current.json"                # artifacts bucket: models/<name>/current.json
JOBS_INPUT_PREFIX = "jobs/input/"            # data bucket: a *.jsonl object here starts a batch job
JOBS_INPUT_SUFFIX = ".jsonl"
JOBS_WORK_PREFIX = "jobs/work/"              # per-chunk outputs of running jobs
JOBS_OUTPUT_PREFIX = "jobs/output/"          # results.jsonl / errors.jsonl of finished jobs
# Async generation jobs: beside jobs/input/ (which would start a batch job), never under it.
JOBS_GENERATION_PREFIX = "jobs/generation/"
# Where SageMaker async inference writes (the endpoint's S3OutputPath / S3FailurePath): results as
# <inference id>.out, failures as <inference id>-error.out; the API reads the locations it returns.
JOBS_GENERATION_OUTPUT_PREFIX = f"{JOBS_GENERATION_PREFIX}out/"
JOBS_GENERATION_FAILURE_PREFIX = f"{JOBS_GENERATION_PREFIX}failed/"
# The OpenAI Files/Batch API (functions/core/batch/openai_api.py): uploaded files and their metadata,
# converted output files, and one record per batch. Outside jobs/input/, so nothing here starts a job.
OPENAI_FILES_PREFIX = "openai/files/"        # <file id>/content, <file id>/meta.json
OPENAI_BATCHES_PREFIX = "openai/batches/"    # <batch id>.json

# --- HTTP headers and CORS ----------------------------------------------------------------------------
MODEL_VERSION_HEADER = "X-Cirrus-Model-Version"
ROUTE_HEADER = "x-cirrus-route"  # where a generation request ran, and why (functions/core/generation/router.py)
# CORS (a browser page on another origin calling the API): the stage lists the origins
# (infra.settings ApiSettings.cors_origins, CIRRUS_CORS_ORIGINS); the API Gateway preflight, the
# gateway's own error responses, the functions' answers and the local gateway all use these.
# Request headers a browser client sends: the key, JSON, the async preference, and what the official
# openai JS client adds (X-Stainless-*, OpenAI-*). A stage adds its own with api.cors_headers.
CORS_ALLOW_HEADERS: tuple[str, ...] = (
    "Authorization", "Content-Type", "Prefer", "OpenAI-Organization", "OpenAI-Project", "OpenAI-Beta",
    "X-Stainless-Arch", "X-Stainless-Lang", "X-Stainless-OS", "X-Stainless-Package-Version",
    "X-Stainless-Retry-Count", "X-Stainless-Runtime", "X-Stainless-Runtime-Version", "X-Stainless-Timeout",
)
# Response headers a page's script may read besides the CORS-safelisted ones.
CORS_EXPOSE_HEADERS: tuple[str, ...] = (MODEL_VERSION_HEADER, ROUTE_HEADER, "Retry-After", "x-amzn-RequestId")
CORS_METHODS: tuple[str, ...] = ("GET", "POST", "OPTIONS")
CORS_MAX_AGE_S = 600   # how long a browser may reuse a preflight answer


def cors_allow_origin(origin: str | None, allowed: "list[str] | tuple[str, ...]") -> str | None:
    """The ``Access-Control-Allow-Origin`` for a request from ``origin``: the origin itself when the
    stage lists it (exact ``scheme://host[:port]``, as browsers send it), ``*`` when the stage lists
    ``*``, else None (no CORS headers: the browser refuses to hand the answer to the page)."""
    if not origin:
        return None
    if origin in allowed:
        return origin
    return "*" if "*" in allowed else None


# --- quantization profiles ----------------------------------------------------------------------
# The named recipes a default bundle is built in (model_export/defaults.py PROFILES holds each recipe
# and its gate); a stage picks one (cdk.json ``quantization_profile``) and its manifests record it.
QUANT_PROFILES = ("accurate", "fast")
DEFAULT_QUANT_PROFILE = "accurate"

# --- SQS -----------------------------------------------------------------------------------------
# AWS guidance: a queue's visibility timeout >= 6x its consuming function's timeout.
VISIBILITY_FACTOR = 6


def pointer_key(name: str) -> str:
    return f"{MODELS_PREFIX}{name}/{POINTER_NAME}"


def bundle_prefix(name: str, version: str) -> str:
    return f"{MODELS_PREFIX}{name}/{version}/"


def bundle_key(name: str, version: str, rel: str) -> str:
    return f"{bundle_prefix(name, version)}{rel}"


class PointerEntry(BaseModel):
    """An earlier version in a pointer's rollback history."""

    version: str
    manifest_sha256: str
    updated_at: str | None = None


class Pointer(BaseModel):
    """``models/<name>/current.json``: the version served, pinned by its manifest's sha256.

    Written by the publisher (``model_export/publish.py``) and by the stack's bundle upload
    (``infra/constructs/artifacts.py``); read by the model store.
    """

    name: str
    version: str
    manifest_sha256: str
    updated_at: str | None = None
    history: list[PointerEntry] = Field(default_factory=list)

    def entry(self) -> PointerEntry:
        return PointerEntry(version=self.version, manifest_sha256=self.manifest_sha256, updated_at=self.updated_at)

    def json_bytes(self, *, indent: int | None = 2) -> bytes:
        """The stored form: sorted keys, so equal pointers are equal bytes."""
        import json

        return json.dumps(self.model_dump(mode="json", exclude_none=True), indent=indent, sort_keys=True).encode()
