"""Typed stage settings (dev, prod, ...) read from cdk.json context and validated with clear messages.

Pure pydantic, no aws_cdk import: the asset builder (infra.assets) and the local emulation (local/)
read the same settings without loading the CDK.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, field_validator, model_validator

from functions.core.contract import DEFAULT_QUANT_PROFILE, QUANT_PROFILES
from infra.function_specs import FUNCTIONS, FUNCTIONS_BY_ID
from infra.resources import RESOURCES, Cors

REPO_ROOT = Path(__file__).resolve().parent.parent
CDK_JSON = REPO_ROOT / "cdk.json"
STAGES_CONTEXT_KEY = "cirrus:stages"
STAGE_CONTEXT_KEY = "stage"

# The values CloudWatch Logs accepts for a retention period (days).
LOG_RETENTION_DAYS = (1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827,
                      2192, 2557, 2922, 3288, 3653)
# SageMaker instance families with an NVIDIA GPU that TGI / DJL-LMI images run on.
GPU_FAMILIES = ("g4dn", "g5", "g6", "g6e", "p3", "p4d", "p4de", "p5", "p5e")
_NAME = re.compile(r"^[a-z0-9][a-z0-9.-]{0,62}$")
_ORIGIN = re.compile(r"https?://[a-z0-9]([a-z0-9.-]*[a-z0-9])?(:\d{1,5})?")
_VERSION_PREFIX = re.compile(r"models/[A-Za-z0-9][A-Za-z0-9._-]{0,127}/[A-Za-z0-9][A-Za-z0-9._-]{0,127}/")


class StageSettingsError(ValueError):
    """A stage in cdk.json is missing or has a bad value; the message names stage, field and value."""


class _Strict(BaseModel):
    # Unknown keys are typos in cdk.json; fail instead of silently ignoring them.
    model_config = ConfigDict(extra="forbid", frozen=True)


# Lambda keeps at least this many of an account's concurrent executions unreserved: a reservation
# that would leave fewer is refused at deploy.
ACCOUNT_UNRESERVED_MIN = 100


class LambdaSettings(_Strict):
    # Keys a stage leaves out take the function's own spec (infra.function_specs), not these.
    memory_mb: int = Field(1024, ge=128, le=10240)
    timeout_s: int = Field(30, ge=1, le=900)
    # Always set: every function's concurrency is bounded (0 would disable it, so it is rejected).
    reserved_concurrency: int = Field(10, ge=1, le=10_000)


class _FunctionsBase(_Strict):
    # SQS event source batch size for queue consumers without their own (1-10 for standard queues
    # w/o a window): see FunctionSpec.sqs_batch_size.
    sqs_batch_size: int = Field(5, ge=1, le=10)
    # The most this stage may reserve across its functions. 900: an account's default limit of 1,000
    # concurrent executions minus the 100 Lambda keeps unreserved. Lower it where the account's limit
    # is lower or other workloads share it; a stage over it fails at synth, not at deploy.
    reserved_concurrency_budget: int = Field(1000 - ACCOUNT_UNRESERVED_MIN, ge=1)

    @model_validator(mode="before")
    @classmethod
    def _spec_defaults(cls, data: object) -> object:
        # cdk.json may set one key of a function (say memory_mb): the others keep that function's spec.
        if isinstance(data, dict):
            data = dict(data)
            for f in FUNCTIONS:
                if isinstance(data.get(f.id), dict):
                    data[f.id] = {**_spec_settings(f), **data[f.id]}
        return data

    @model_validator(mode="after")
    def _within_budget(self) -> "_FunctionsBase":
        reserved = {f.id: self.of(f.id).reserved_concurrency for f in FUNCTIONS}
        if sum(reserved.values()) > self.reserved_concurrency_budget:
            raise ValueError(f"functions reserve {sum(reserved.values())} concurrent executions "
                             f"({', '.join(f'{k} {v}' for k, v in reserved.items())}), more than "
                             f"reserved_concurrency_budget {self.reserved_concurrency_budget}")
        # An SQS event source starts several pollers at once; its maximum concurrency (at least 2) is
        # held to the function's reservation so the pollers never invoke it into throttling (each
        # throttled delivery would count towards the message's maxReceiveCount).
        for fid, queues in queue_consumers().items():
            if reserved[fid] < 2 * queues:
                raise ValueError(f"functions.{fid}.reserved_concurrency must be at least {2 * queues}: it "
                                 f"consumes {queues} queue(s), each event source runs at least 2 at once")
        return self

    def sqs_max_concurrency_for(self, consumer: str) -> int:
        """The maximum concurrency of each of ``consumer``'s SQS event sources: its reservation shared
        between the queues feeding it (2..1000, the range SQS event sources take)."""
        share = self.of(consumer).reserved_concurrency // queue_consumers()[consumer]
        return max(2, min(share, 1000))

    def sqs_batch_size_for(self, consumer: str) -> int:
        """The event source batch size of a queue consumer (function id), in AWS and in local/."""
        own = FUNCTIONS_BY_ID[consumer].sqs_batch_size
        return own if own is not None else self.sqs_batch_size

    def of(self, function_id: str) -> LambdaSettings:
        return getattr(self, function_id)


def _spec_settings(f) -> dict[str, int]:
    return {"memory_mb": f.memory_mb, "timeout_s": f.timeout_s, "reserved_concurrency": f.reserved_concurrency}


def queue_consumers() -> dict[str, int]:
    """function id -> how many queues feed it (infra.resources: each queue's consumer and DLQ consumer)."""
    out: dict[str, int] = {}
    for q in RESOURCES.queues:
        for fid in (q.consumer, q.dlq_consumer):
            if fid:
                out[fid] = out.get(fid, 0) + 1
    return out


# One field per FunctionSpec (cdk.json ``functions.<id>``), its defaults from the spec.
FunctionsSettings = create_model(
    "FunctionsSettings", __base__=_FunctionsBase,
    **{f.id: (LambdaSettings, LambdaSettings(**_spec_settings(f))) for f in FUNCTIONS})


class ApiSettings(_Strict):
    throttle_rate_limit: float = Field(50.0, gt=0, le=10_000)   # steady requests/s per stage
    throttle_burst_limit: int = Field(100, ge=1, le=5_000)
    waf: bool = False
    waf_rate_limit: int = Field(2000, ge=10, le=2_000_000_000)  # requests per 5 min per client IP
    docs: bool = False   # GET /openapi.json and the Swagger UI page at /docs, without a key
    # Browser pages on these origins may call the API (CORS: preflight, headers on every answer).
    # Exact "scheme://host[:port]" as a browser sends it, or "*". Empty (the default): no CORS, which a
    # server-to-server API (prod) wants; dev lists the local dev-server ports (cdk.json).
    cors_origins: tuple[str, ...] = ()
    cors_headers: tuple[str, ...] = ()   # request headers a page may send besides CORS_ALLOW_HEADERS
    # Per API key (the stage's default usage plan; `keys create --rate/--burst/--quota` overrides per
    # key): one key cannot take the whole stage budget.
    key_rate_limit: float = Field(10.0, gt=0, le=10_000)        # steady requests/s per key
    key_burst_limit: int = Field(20, ge=1, le=5_000)
    key_quota: int | None = Field(None, ge=1)                   # requests per key_quota_period; None: no quota
    key_quota_period: Literal["DAY", "WEEK", "MONTH"] = "DAY"

    @property
    def cors(self) -> Cors:
        return Cors(origins=self.cors_origins, extra_headers=self.cors_headers)

    @field_validator("cors_origins")
    @classmethod
    def _origins(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        bad = [o for o in v if o != "*" and not _ORIGIN.fullmatch(o)]
        if bad:
            raise ValueError(f"cors_origins must be '*' or exact origins like 'http://localhost:5173' "
                             f"(scheme://host[:port], no path or wildcard), got {bad}")
        if "*" in v and len(v) > 1:
            raise ValueError("cors_origins: '*' already admits every origin; list it alone")
        return v

    @field_validator("cors_headers")
    @classmethod
    def _headers(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        bad = [h for h in v if not re.fullmatch(r"[A-Za-z0-9-]{1,64}", h)]
        if bad:
            raise ValueError(f"cors_headers must be header names, got {bad}")
        return v

    @model_validator(mode="after")
    def _key_within_stage(self) -> "ApiSettings":
        if self.key_rate_limit > self.throttle_rate_limit or self.key_burst_limit > self.throttle_burst_limit:
            raise ValueError("api.key_rate_limit/key_burst_limit must not exceed the stage's "
                             "throttle_rate_limit/throttle_burst_limit")
        return self


class HeavyEndpointSettings(_Strict):
    enabled: bool = False
    instance_type: str = "ml.g5.xlarge"
    # "tgi": Hugging Face TGI DLC; "djl-lmi": AWS DJL Large Model Inference DLC. image_uri overrides.
    image: Literal["tgi", "djl-lmi"] = "tgi"
    image_uri: str | None = None
    model_id: str = "Qwen/Qwen2.5-1.5B-Instruct"   # hub id the container downloads at start
    # The hub commit (40 hex) the container downloads (HF_MODEL_REVISION): a branch such as main can
    # change weights, tokenizer or chat template at any time, and every instance start (scaling from
    # zero included) downloads again, so an unpinned stage could serve two models at once. Required
    # for a hub model unless ``allow_unpinned_model`` says the stage takes that risk.
    model_revision: str | None = None
    allow_unpinned_model: bool = False
    # Or: serve a copy in the artifacts bucket, ``models/<name>/<version>/`` (uncompressed, the files
    # the container expects; versions are immutable in the registry): the container needs no network.
    model_s3_prefix: str | None = None
    # With model_s3_prefix: the sha256 of the copy's cirrus-weights.json (`model_export publish-weights`
    # prints it). The deploy checks the copy against it before the SageMaker model is created.
    model_manifest_sha256: str | None = None
    # The model container's network: None means isolated exactly when it needs no network, i.e. when
    # the model comes from model_s3_prefix (SageMaker copies it in before the container starts).
    network_isolation: bool | None = None
    served_model: str = "qwen2.5-1.5b-instruct"      # the `model` clients ask for; routed to this endpoint
    num_gpus: int = Field(1, ge=1, le=8)
    min_capacity: int = Field(0, ge=0, le=100)
    max_capacity: int = Field(1, ge=1, le=100)
    # True: an inference component that scales to 0 copies when idle (no GPU bill, cold start on
    # the first request). False: a classic endpoint with min_capacity >= 1 instances always on.
    scale_to_zero: bool = True
    target_invocations_per_copy: int = Field(4, ge=1, le=10_000)  # per minute, target tracking
    scale_in_cooldown_s: int = Field(600, ge=0, le=86_400)
    startup_health_check_timeout_s: int = Field(900, ge=60, le=3600)
    # A second, SageMaker *async* endpoint for the same model that takes generation jobs (header
    # `Prefer: respond-async` or max_tokens over the sync budget). On by default wherever the heavy
    # endpoint is on: it scales to 0 instances when its backlog is empty, so idle it costs nothing.
    async_enabled: bool = True
    async_max_capacity: int = Field(1, ge=1, le=100)
    async_max_concurrent_invocations: int = Field(4, ge=1, le=1000)   # per instance (TGI batches them)
    async_target_backlog_per_instance: int = Field(5, ge=1, le=10_000)  # target tracking on the backlog

    @field_validator("instance_type")
    @classmethod
    def _gpu_instance(cls, v: str) -> str:
        m = re.fullmatch(r"ml\.([a-z0-9]+)\.[a-z0-9]+", v)
        if not m:
            raise ValueError(f"instance_type must look like 'ml.g5.xlarge', got {v!r}")
        if m.group(1) not in GPU_FAMILIES:
            raise ValueError(f"instance_type {v!r} has no GPU; use one of the families {', '.join(GPU_FAMILIES)}")
        return v

    @model_validator(mode="after")
    def _capacity(self) -> "HeavyEndpointSettings":
        if self.min_capacity > self.max_capacity:
            raise ValueError(f"min_capacity ({self.min_capacity}) exceeds max_capacity ({self.max_capacity})")
        if self.min_capacity == 0 and not self.scale_to_zero:
            raise ValueError("min_capacity 0 needs scale_to_zero: true (a classic endpoint keeps >= 1 instance)")
        if self.model_s3_prefix is not None:
            if not _VERSION_PREFIX.fullmatch(self.model_s3_prefix):
                raise ValueError("model_s3_prefix must be a registry version prefix 'models/<name>/<version>/' "
                                 f"in the artifacts bucket, got {self.model_s3_prefix!r}")
            if self.model_revision is not None:
                raise ValueError("model_revision pins a hub download; with model_s3_prefix the copy in S3 is "
                                 "served: set one of them")
            if self.model_manifest_sha256 is None:
                raise ValueError("model_s3_prefix needs model_manifest_sha256: the sha256 of the copy's "
                                 "cirrus-weights.json that `python -m model_export publish-weights` printed")
        elif self.enabled and self.model_revision is None and not self.allow_unpinned_model:
            raise ValueError(f"heavy.model_revision is not set: {self.model_id!r} would be served as whatever the "
                             "hub holds when each instance starts. Set model_revision to the commit sha (40 hex), "
                             "or serve a copy from model_s3_prefix, or set allow_unpinned_model: true")
        if self.enabled and self.network_isolation and self.model_s3_prefix is None:
            raise ValueError("network_isolation needs model_s3_prefix: an isolated container cannot download "
                             "a hub model")
        return self

    @field_validator("model_manifest_sha256")
    @classmethod
    def _manifest_sha(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"[0-9a-f]{64}", v):
            raise ValueError(f"model_manifest_sha256 must be 64 lowercase hex, got {v!r}")
        return v

    @field_validator("model_revision")
    @classmethod
    def _revision(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"[0-9a-f]{40}", v):
            raise ValueError(f"model_revision must be a full commit sha (40 lowercase hex), not a branch or tag, "
                             f"got {v!r}")
        return v

    @property
    def isolated(self) -> bool:
        """Whether the model container runs with network isolation (see ``network_isolation``)."""
        return self.model_s3_prefix is not None if self.network_isolation is None else self.network_isolation


class StageSettings(_Strict):
    name: str
    account: str | None = None   # None: the account of the credentials running `cdk deploy`
    region: str | None = None
    architecture: Literal["x86_64", "arm64"] = "x86_64"
    # python3.12 runs on Amazon Linux 2023 (glibc 2.34); python3.11 runs on Amazon Linux 2 (glibc
    # 2.26), which cannot load the manylinux_2_28 onnxruntime/numpy wheels the assets need.
    python_version: Literal["3.12", "3.13"] = "3.12"
    removal_policy: Literal["destroy", "retain"] = "destroy"
    log_retention_days: int = 30
    models: tuple[str, ...] = ("all-minilm-l6-v2", "cirrus-intent-minilm")
    default_embedding_model: str = "all-minilm-l6-v2"
    # Which quantization profile of the default bundles the stage deploys (docs/quantization.md):
    # "accurate" (strict gate) or "fast" (fastembed's speed, looser gate). Checked against the built
    # bundles' manifests at synth; `make deploy` builds them in this profile.
    quantization_profile: Literal[QUANT_PROFILES] = DEFAULT_QUANT_PROFILE  # type: ignore[valid-type]
    # Models the api function generates text with on Lambda (ONNX, the light path). Default none:
    # dev lists the real chat model smollm2-135m-instruct in cdk.json; prod opts in per stage.
    generation_models: tuple[str, ...] = ()
    # Upload .cache/bundles/<model>/ at deploy. False: the bucket starts empty (publish with
    # `python -m model_export publish`); tests synth without built bundles this way.
    upload_bundles: bool = True
    bundles_dir: str = ".cache/bundles"
    alarm_email: str | None = None
    functions: FunctionsSettings = FunctionsSettings()
    api: ApiSettings = ApiSettings()
    heavy: HeavyEndpointSettings = HeavyEndpointSettings()
    tags: dict[str, str] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _stage_name(cls, v: str) -> str:
        if not re.fullmatch(r"[a-z][a-z0-9-]{0,15}", v):
            raise ValueError(f"stage name must be lowercase letters/digits/dashes (<= 16), got {v!r}")
        return v

    @field_validator("account")
    @classmethod
    def _account(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"\d{12}", v):
            raise ValueError(f"account must be 12 digits, got {v!r}")
        return v

    @field_validator("region")
    @classmethod
    def _region(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"[a-z]{2}(-gov)?-[a-z]+-\d", v):
            raise ValueError(f"region must look like 'eu-west-1', got {v!r}")
        return v

    @field_validator("log_retention_days")
    @classmethod
    def _retention(cls, v: int) -> int:
        if v not in LOG_RETENTION_DAYS:
            raise ValueError(f"log_retention_days must be one of {LOG_RETENTION_DAYS}, got {v}")
        return v

    @field_validator("models", "generation_models")
    @classmethod
    def _models(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        bad = [m for m in v if not _NAME.fullmatch(m)]
        if bad:
            raise ValueError(f"model names must be lowercase [a-z0-9.-], got {bad}")
        if len(set(v)) != len(v):
            raise ValueError(f"models are listed twice: {sorted(m for m in set(v) if v.count(m) > 1)}")
        return v

    @model_validator(mode="after")
    def _cross_checks(self) -> "StageSettings":
        f = self.functions
        # API Gateway REST integrations give up at 29 s; a longer Lambda timeout only hides that.
        if f.api.timeout_s > 29:
            raise ValueError(f"functions.api.timeout_s must be <= 29 (API Gateway limit), got {f.api.timeout_s}")
        if f.authorizer.timeout_s > 29:
            raise ValueError(f"functions.authorizer.timeout_s must be <= 29, got {f.authorizer.timeout_s}")
        if self.models and self.default_embedding_model not in self.models:
            raise ValueError(f"default_embedding_model {self.default_embedding_model!r} is not in models {list(self.models)}")
        if self.models and set(self.generation_models) - set(self.models):
            raise ValueError(f"generation_models {sorted(set(self.generation_models) - set(self.models))} "
                             f"are not in models {list(self.models)}")
        if self.heavy.enabled and self.heavy.served_model in self.models:
            raise ValueError(f"heavy.served_model {self.heavy.served_model!r} clashes with a Lambda-served model")
        return self

    @property
    def stack_name(self) -> str:
        return f"Cirrus-{self.name}"


def _format(stage: str, exc: ValidationError) -> str:
    lines = []
    for e in exc.errors():
        where = ".".join(str(p) for p in e["loc"]) or "(stage)"
        got = e.get("input")
        shown = "" if isinstance(got, dict) else f" (got {got!r})"
        lines.append(f"  {where}: {e['msg']}{shown}")
    return f"invalid settings for stage {stage!r} in cdk.json context {STAGES_CONTEXT_KEY!r}:\n" + "\n".join(lines)


def parse_stage(stages: dict, name: str) -> StageSettings:
    """Validate one stage from the ``cirrus:stages`` context object; raise StageSettingsError."""
    if not isinstance(stages, dict) or not stages:
        raise StageSettingsError(f"cdk.json context has no {STAGES_CONTEXT_KEY!r} object with stages")
    if name not in stages:
        raise StageSettingsError(f"unknown stage {name!r}; cdk.json defines: {', '.join(sorted(stages))}")
    raw = stages[name]
    if not isinstance(raw, dict):
        raise StageSettingsError(f"stage {name!r} must be an object, got {type(raw).__name__}")
    try:
        return StageSettings(name=name, **raw)
    except ValidationError as exc:
        raise StageSettingsError(_format(name, exc)) from None
    except TypeError as exc:  # e.g. a "name" key inside the stage object
        raise StageSettingsError(f"stage {name!r}: {exc}") from None


def read_context(cdk_json: Path = CDK_JSON) -> dict:
    return json.loads(cdk_json.read_text()).get("context", {})


def load_stage(name: str | None = None, *, context: dict | None = None) -> StageSettings:
    """The settings of stage ``name`` (default: the context's ``stage``, else ``dev``) from cdk.json."""
    context = read_context() if context is None else context
    name = name or context.get(STAGE_CONTEXT_KEY) or "dev"
    return parse_stage(context.get(STAGES_CONTEXT_KEY, {}), name)


def all_stages(context: dict | None = None) -> dict[str, StageSettings]:
    context = read_context() if context is None else context
    stages = context.get(STAGES_CONTEXT_KEY, {})
    return {n: parse_stage(stages, n) for n in stages}
