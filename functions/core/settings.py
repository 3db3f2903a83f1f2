"""Runtime settings: the Lambda environment, validated once per container (names only, no secrets).

Every environment variable the functions read is declared here and nowhere else. The CDK stack
(infra/) and the local system (local/) set exactly these names.
"""
from __future__ import annotations

import os
from collections.abc import Iterable
from functools import lru_cache
from typing import Literal, get_origin

from pydantic import BaseModel, Field, ValidationError, ValidationInfo, field_validator

ENV_PREFIX = "CIRRUS_"


class Settings(BaseModel):
    # --- where models come from: S3 registry (artifacts bucket) or a local folder of bundles ---
    artifacts_bucket: str | None = None
    model_dir: str | None = None             # local alternative: <model_dir>/<name>/ is a bundle
    models: list[str] = Field(default_factory=list)  # model names served (empty: all in registry/dir)
    default_embedding_model: str = "all-minilm-l6-v2"
    cache_dir: str = "/tmp/cirrus"
    # --- stores ---
    api_keys_table: str | None = None
    jobs_table: str | None = None
    data_bucket: str | None = None
    work_queue_url: str | None = None
    # --- heavy path ---
    heavy_endpoint_name: str | None = None   # empty/None: heavy path disabled in this stage
    heavy_models: list[str] = Field(default_factory=list)
    heavy_inference_component: str | None = None  # set when the endpoint hosts inference components
    heavy_async_endpoint_name: str | None = None  # SageMaker async endpoint for async jobs (None: none)
    heavy_connect_timeout_s: float = Field(2.0, gt=0)
    heavy_read_timeout_s: float = Field(25.0, gt=0)   # under API Gateway's 29 s, with room to answer
    heavy_max_attempts: int = Field(3, ge=1, le=10)   # per request, on throttling/5xx/connect errors
    heavy_breaker_failures: int = Field(5, ge=1)      # consecutive failures that open the breaker
    heavy_breaker_reset_s: float = Field(30.0, gt=0)  # open this long, then one half-open probe
    # --- generation (functions/core/generation) ---
    # Light path (ONNX on Lambda). Empty by default: the stage names them (dev: the cirrus-tiny-gpt2 demo).
    generation_models: list[str] = Field(default_factory=list)
    generation_default_max_tokens: int = Field(128, ge=1)
    light_max_tokens: int = Field(256, ge=1)     # larger requests leave the Lambda (heavy or async)
    sync_max_tokens: int = Field(1024, ge=1)     # larger requests become async jobs
    # --- limits ---
    max_inputs: int = 2048                    # as in the OpenAI API
    # Tokens per embeddings/classify request (after truncation): what the api function finishes
    # inside its 29 s at the dev stage's 2,048 MB: 6.9 s on one quiet core, 24 s on one core at load 13
    # (bench/token_cap.py), so the cap holds with room for a slower Lambda vCPU.
    max_request_tokens: int = Field(32_768, ge=1)
    max_chars: int = 20_000
    # Characters of a generation prompt (all messages' contents, or the completion prompt), checked
    # before tokenizing: a bigger prompt is a cheap 413 instead of seconds of tokenizer work.
    max_prompt_chars: int = Field(100_000, ge=1)
    max_body_bytes: int = 2_000_000
    # POST /v1/files in one request: a Lambda request payload is at most 6 MB; larger files use the
    # presigned upload (POST /v1/files with a JSON body).
    max_upload_bytes: int = Field(5_000_000, ge=1024)
    token_overflow: Literal["truncate", "reject"] = "truncate"
    batch_size: int = 32
    # --- batch jobs (functions/core/batch) ---
    batch_chunk_lines: int = Field(1_000, ge=1)          # input lines per work message
    # Chat lines generate up to light_max_tokens each (~40 tokens/s per line on one vCPU): a chunk of
    # 8 stays well inside the worker's timeout.
    batch_chat_chunk_lines: int = Field(8, ge=1)
    batch_chunk_bytes: int = Field(4_000_000, ge=1024)   # ...or fewer, so one chunk stays small
    batch_max_file_bytes: int = Field(256 * 1024 * 1024, ge=1)
    batch_max_line_bytes: int = Field(100_000, ge=64)
    batch_max_lines: int = Field(1_000_000, ge=1)
    batch_job_ttl_days: int = Field(30, ge=1)           # job records expire (DynamoDB TTL)
    batch_url_expiry_s: int = Field(3600, ge=60, le=7 * 24 * 3600)  # presigned result (GET) URLs
    # Presigned upload (POST) forms for job inputs and OpenAI files: short, since a form can be
    # reused until it expires; a job never uploaded within this window is shown as expired.
    batch_upload_expiry_s: int = Field(900, ge=60, le=12 * 3600)
    max_receive_count: int = Field(3, ge=1)             # = the queues' redrive maxReceiveCount
    # Jobs of files dropped straight into the bucket have no owner: shown to every API key only when
    # set (a single-tenant stage, the local system); always shown to callers without an authorizer.
    batch_unowned_jobs_visible: bool = False
    # --- browsers (CORS): the stage's api.cors_origins / api.cors_headers; empty: no CORS headers ---
    cors_origins: list[str] = Field(default_factory=list)
    cors_headers: list[str] = Field(default_factory=list)   # request headers allowed besides the standard ones
    # --- runtime ---
    intra_op_threads: int = 0  # 0: one per CPU the function has
    stage: str = "local"

    @field_validator("models", "heavy_models", "generation_models", "cors_origins", "cors_headers", mode="before")
    @classmethod
    def _split_csv(cls, v: object) -> object:
        if isinstance(v, str):
            return [s.strip() for s in v.split(",") if s.strip()]
        return v

    @field_validator("*", mode="before")
    @classmethod
    def _empty_is_none(cls, v: object, info: ValidationInfo) -> object:
        if v == "" and get_origin(cls.model_fields[info.field_name].annotation) is list:
            return []  # env() writes an empty list as "": read it back as empty, not as unset
        return None if v == "" else v

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> "Settings":
        environ = os.environ if environ is None else environ
        raw = {k[len(ENV_PREFIX):].lower(): v for k, v in environ.items() if k.startswith(ENV_PREFIX)}
        known = {k: v for k, v in raw.items() if k in cls.model_fields}
        try:
            return cls(**known)
        except ValidationError as exc:
            # A misconfigured function must fail loudly at cold start, naming the variable.
            names = ", ".join(ENV_PREFIX + str(e["loc"][0]).upper() for e in exc.errors())
            raise RuntimeError(f"invalid Cirrus environment: {names}: {exc}") from exc

    def env(self, only: Iterable[str] | None = None) -> dict[str, str]:
        """The inverse of ``from_env``: the environment that yields these settings (``only``: just
        those fields, e.g. the ones a function receives)."""
        keep = set(self.model_fields) if only is None else set(only)
        out: dict[str, str] = {}
        for name, value in self.model_dump().items():
            if value is None or name not in keep:
                continue
            if isinstance(value, list):
                value = ",".join(value)
            out[ENV_PREFIX + name.upper()] = str(value)
        return out


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Settings for this container, read once. Tests call ``get_settings.cache_clear()``."""
    return Settings.from_env()
