"""Names and limits of the local stack, derived from infra.resources and the cdk.json stage settings."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from functions.core.contract import VISIBILITY_FACTOR
from infra.resources import QueueSpec
from infra.settings import LambdaSettings, StageSettings, load_stage

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_STATE_DIR = Path(__file__).resolve().parent / ".state"
DEFAULT_BUNDLES_DIR = REPO_ROOT / ".cache" / "bundles"

# moto's fixed account; a region of our choosing. Nothing here ever reaches a real AWS account.
ACCOUNT_ID = "123456789012"
REGION = "us-east-1"



@dataclass(frozen=True)
class LocalConfig:
    """What ``python -m local up`` starts: addresses, the stage name and the local queue timings."""

    host: str = "127.0.0.1"
    port: int = 3000
    aws_port: int = 0                       # 0: any free port
    stage: str = "local"
    base_stage: str = "dev"                 # cdk.json stage whose timeouts/limits the local stack copies
    state_dir: Path = DEFAULT_STATE_DIR
    bundles_dir: Path = DEFAULT_BUNDLES_DIR
    # SQS visibility timeout of the local queues. The stack uses 6x the consuming function's
    # timeout; locally the default is the same, and tests shorten it to see retries and the DLQ.
    visibility_timeout_s: int | None = None
    poll_wait_s: int = 1                    # long-poll wait: also bounds how fast Ctrl-C stops pollers
    authorizer_cache_ttl_s: int = 0         # API Gateway caches policies (default 300 s); 0 = off
    dev_key_rate: float | None = None       # the dev key's own usage plan (None: the stage's default plan)
    dev_key_burst: int | None = None
    heavy: bool = True                      # start the heavy-path stand-in when it is available
    models: tuple[str, ...] | None = None   # default bundles to build/serve (None: all of them)
    batch_max_file_bytes: int | None = None  # batch input size limit (None: the functions' default)
    extra_env: dict[str, str] = field(default_factory=dict)

    def resource_name(self, logical_id: str) -> str:
        # Bucket names must be lowercase and globally unique in AWS; locally only lowercase matters.
        return f"cirrus-{self.stage}-{logical_id.lower()}"

    def queue_name(self, spec: QueueSpec, dlq: bool = False) -> str:
        return self.resource_name(spec.id) + ("-dlq" if dlq else "")

    def stage_settings(self) -> StageSettings:
        """The deployed stage this local stack imitates (timeouts, memory, SQS batch size)."""
        return load_stage(self.base_stage)

    def function_settings(self, function_id: str) -> LambdaSettings:
        """Memory/timeout of a function (infra/function_specs.py) in the imitated stage."""
        return self.stage_settings().functions.of(function_id)

    def visibility_timeout(self, spec: QueueSpec, dlq: bool = False) -> int:
        if self.visibility_timeout_s is not None:
            return self.visibility_timeout_s
        consumer = getattr(spec, "dlq_consumer", None) if dlq else spec.consumer
        return VISIBILITY_FACTOR * (self.function_settings(consumer).timeout_s if consumer else 30)

    @property
    def log_file(self) -> Path:
        return self.state_dir / "cirrus-local.log"

    @property
    def state_file(self) -> Path:
        return self.state_dir / "state.json"
