"""Functions: the api, authorizer and batch Lambdas from the zip assets built by `python -m infra.assets`."""
from __future__ import annotations

from pathlib import Path

from aws_cdk import Duration, RemovalPolicy, Size
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from constructs import Construct

from infra.constructs import acknowledge

from functions.core.settings import Settings
from infra.function_specs import FUNCTIONS, STREAM_EXEC_WRAPPER
from infra.settings import StageSettings

RETENTION = {1: "ONE_DAY", 3: "THREE_DAYS", 5: "FIVE_DAYS", 7: "ONE_WEEK", 14: "TWO_WEEKS",
             30: "ONE_MONTH", 60: "TWO_MONTHS", 90: "THREE_MONTHS", 120: "FOUR_MONTHS",
             150: "FIVE_MONTHS", 180: "SIX_MONTHS", 365: "ONE_YEAR", 400: "THIRTEEN_MONTHS",
             545: "EIGHTEEN_MONTHS", 731: "TWO_YEARS", 1096: "THREE_YEARS", 1827: "FIVE_YEARS",
             2192: "SIX_YEARS", 2557: "SEVEN_YEARS", 2922: "EIGHT_YEARS", 3288: "NINE_YEARS",
             3653: "TEN_YEARS"}


def retention(days: int) -> logs.RetentionDays:
    return logs.RetentionDays[RETENTION[days]]


def encrypted_log_group(scope: Construct, id: str, *, key: kms.IKey, stage: StageSettings) -> logs.LogGroup:
    """The one way Cirrus makes a log group: KMS-encrypted, the stage's retention and removal."""
    return logs.LogGroup(scope, id, encryption_key=key, retention=retention(stage.log_retention_days),
                         removal_policy=RemovalPolicy.RETAIN if stage.removal_policy == "retain"
                         else RemovalPolicy.DESTROY)


def runtime_env(**fields: object) -> dict[str, str]:
    """CIRRUS_* variables for ``functions.core.settings.Settings`` fields; unknown names fail synth."""
    unknown = sorted(set(fields) - set(Settings.model_fields))
    if unknown:
        raise ValueError(f"not fields of functions.core.settings.Settings: {unknown}")
    # Round-trip through Settings so a value the function would reject fails here, not at cold start.
    return Settings(**{k: v for k, v in fields.items() if v is not None}).env(only=fields)


class Functions(Construct):
    """One Lambda per ``infra.function_specs.FUNCTIONS`` entry, each with its own role, encrypted log group and X-Ray.

    ``env`` maps function id to its CIRRUS_* environment (names only, never secrets). Roles start
    empty except for writing their own log group; the stack adds scoped ``grant_*`` calls.
    """

    def __init__(self, scope: Construct, id: str, *, stage: StageSettings, assets: dict[str, Path],
                 key: kms.IKey, env: dict[str, dict[str, str]]) -> None:
        super().__init__(scope, id)
        runtime = {"3.12": lambda_.Runtime.PYTHON_3_12, "3.13": lambda_.Runtime.PYTHON_3_13}[stage.python_version]
        arch = {"x86_64": lambda_.Architecture.X86_64, "arm64": lambda_.Architecture.ARM_64}[stage.architecture]
        code = {name: lambda_.Code.from_asset(str(path)) for name, path in assets.items()}
        self.functions: dict[str, lambda_.Function] = {}
        for spec in FUNCTIONS:
            cfg = stage.functions.of(spec.id)
            log_group = encrypted_log_group(self, f"{spec.id}-logs", key=key, stage=stage)
            role = iam.Role(self, f"{spec.id}-role", assumed_by=iam.ServicePrincipal("lambda.amazonaws.com"),
                            description=f"Cirrus {stage.name} {spec.id} function")
            # Instead of AWSLambdaBasicExecutionRole (logs:* on every group): only this group.
            log_group.grant_write(role)
            fn = lambda_.Function(
                self, spec.id,
                description=spec.description,
                runtime=runtime,
                architecture=arch,
                handler=spec.handler,
                code=code[spec.asset],
                memory_size=cfg.memory_mb,
                timeout=Duration.seconds(cfg.timeout_s),
                reserved_concurrent_executions=cfg.reserved_concurrency,   # always set (infra.settings)
                ephemeral_storage_size=Size.mebibytes(spec.ephemeral_mb),
                tracing=lambda_.Tracing.ACTIVE,
                # The variables hold resource names only, yet they are encrypted at rest with the
                # stage's own key like every other store (not Lambda's AWS-managed key).
                environment_encryption=key,
                role=role,
                log_group=log_group,
                environment={
                    "POWERTOOLS_SERVICE_NAME": f"cirrus-{spec.id.replace('_', '-')}",
                    "POWERTOOLS_METRICS_NAMESPACE": "Cirrus",
                    "POWERTOOLS_LOG_LEVEL": "INFO",
                    **({"AWS_LAMBDA_EXEC_WRAPPER": STREAM_EXEC_WRAPPER} if spec.streams else {}),
                    **env.get(spec.id, {}),
                },
            )
            acknowledge(role, id="AwsSolutions-IAM5[Resource::*]",
                reason="X-Ray PutTraceSegments/PutTelemetryRecords support no resource-level permissions.")
            acknowledge(fn, id="AwsSolutions-L1",
                reason=f"Runtime python{stage.python_version} is pinned: the asset's compiled wheels "
                       "(onnxruntime, numpy, pydantic-core) are built for exactly this version.")
            acknowledge(fn, id="Serverless-LambdaLatestVersion",
                reason=f"Runtime python{stage.python_version} is pinned to the asset's compiled wheels.")
            acknowledge(fn, id="Serverless-LambdaDLQ",
                        reason="Never invoked asynchronously: API Gateway calls it synchronously or an SQS event "
                               "source feeds it, and SQS failures land in the queue's own DLQ.")
            self.functions[spec.id] = fn

    def __getitem__(self, function_id: str) -> lambda_.Function:
        return self.functions[function_id]
