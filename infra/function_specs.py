"""One spec per Lambda function: handler, asset, environment, defaults, SQS batch size. Plain data.

The CDK construct (infra/constructs/functions.py), the stack's environment, the asset builder
(infra/assets.py), the stage settings (infra/settings.py) and the local system (local/) all read
this table: adding a function is one entry here plus its ``functions/handlers/<id>.py``.
"""
from __future__ import annotations

from dataclasses import dataclass

# Settings fields (functions/core/settings.py) every function that reads models gets.
_MODELS = ("stage", "artifacts_bucket", "models", "default_embedding_model")
_HTTP = ("cors_origins", "cors_headers")   # the functions that answer API Gateway (their CORS headers)
_GENERATION = ("generation_models", "data_bucket", "heavy_endpoint_name", "heavy_models", "heavy_inference_component",
               "heavy_async_endpoint_name")
# A function with ``streams`` answers through functions/stream_runtime.py (a Runtime API client that
# can stream), started by this exec wrapper in place of the managed Python runtime's bootstrap.
STREAM_EXEC_WRAPPER = "/var/task/functions/bin/stream-runtime"


@dataclass(frozen=True)
class FunctionSpec:
    id: str                      # also its handler module: functions/handlers/<id>.py
    description: str
    asset: str                   # "inference" (onnxruntime, numpy, tokenizers) or "light" (neither)
    env: tuple[str, ...]         # Settings fields it receives as CIRRUS_* variables (names only)
    memory_mb: int               # stage defaults (cdk.json functions.<id> overrides)
    timeout_s: int
    # Reserved concurrency: the most copies of it that may run at once, and what it keeps out of the
    # account's pool for itself. Every function has one, so one hot path (a flood of batch chunks,
    # a client retrying in a loop) cannot starve the others or the rest of the account.
    reserved_concurrency: int = 10
    ephemeral_mb: int = 512
    # Event source batch size when it consumes a queue; None: the stage's functions.sqs_batch_size.
    # One message per splitter and worker invocation: in a batch, a message that runs into the
    # function timeout fails the whole invocation, so its batch-mates come back unrun, each delivery
    # counting towards maxReceiveCount, until they are dead-lettered — a chunk's lines become
    # chunk_failed, a file's job fails unsplit. Only the dead-letter backstop, which is quick per
    # message, takes the stage's batch size.
    sqs_batch_size: int | None = None
    # Answers with a response stream (API Gateway STREAM transfer mode, STREAM_EXEC_WRAPPER).
    streams: bool = False

    @property
    def handler(self) -> str:
        return f"functions.handlers.{self.id}.handler"


FUNCTIONS: tuple[FunctionSpec, ...] = (
    FunctionSpec("api", "Cirrus HTTP API (OpenAI-compatible routes)", "inference",
                 (*_MODELS, "jobs_table", *_GENERATION, *_HTTP), memory_mb=2048, timeout_s=29, ephemeral_mb=2048,
                 reserved_concurrency=40),
    # The chat/completions routes (infra.resources.STREAMED_ROUTES), streamed or not: up to 15 min.
    FunctionSpec("generation", "Cirrus chat/completions, streamed (stream: true) or not", "inference",
                 (*_MODELS, *_GENERATION, *_HTTP), memory_mb=2048, timeout_s=300, ephemeral_mb=2048, streams=True,
                 reserved_concurrency=20),
    # Its answers are cached per key for a minute (infra.constructs.api), so it runs far less often
    # than the API functions it guards.
    FunctionSpec("authorizer", "Cirrus bearer API-key authorizer", "light", ("stage", "api_keys_table"),
                 memory_mb=256, timeout_s=10, reserved_concurrency=20),
    # The splitter and the dead-letter handler only list and describe models (manifests): the small asset.
    FunctionSpec("batch_splitter", "Cirrus batch: split a JSONL job", "light",
                 (*_MODELS, "data_bucket", "jobs_table", "work_queue_url", "max_receive_count"),
                 memory_mb=512, timeout_s=120, sqs_batch_size=1, reserved_concurrency=5),
    FunctionSpec("batch_worker", "Cirrus batch: run one chunk", "inference",
                 (*_MODELS, "data_bucket", "jobs_table", "max_receive_count"),
                 memory_mb=3008, timeout_s=300, ephemeral_mb=2048, sqs_batch_size=1, reserved_concurrency=10),
    FunctionSpec("batch_dlq", "Cirrus batch: mark jobs of dead letters", "light",
                 (*_MODELS, "data_bucket", "jobs_table", "max_receive_count"),
                 memory_mb=1024, timeout_s=120, reserved_concurrency=4),
)
FUNCTIONS_BY_ID = {f.id: f for f in FUNCTIONS}
