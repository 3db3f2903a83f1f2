"""The Cirrus stack: composes the constructs, gives each function its spec's environment, grants what it uses."""
from __future__ import annotations

from pathlib import Path

from aws_cdk import CfnOutput, Stack, Tags
from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_s3 as s3
from constructs import Construct

from infra.constructs import acknowledge
from infra.constructs.api import Api
from infra.constructs.artifacts import Artifacts, Bundle, BundleUpload, grant_prefix
from infra.constructs.batch import Batch
from infra.constructs.encryption import Encryption
from infra.constructs.functions import Functions, encrypted_log_group, runtime_env
from infra.constructs.heavy_async import HeavyAsyncEndpoint
from infra.constructs.heavy_endpoint import HeavyEndpoint
from infra.constructs.monitoring import Monitoring
from infra.constructs.tables import Tables
from infra.function_specs import FUNCTIONS
from infra.resources import RESOURCES
from infra.settings import StageSettings
from functions.core.contract import (JOBS_GENERATION_PREFIX, JOBS_INPUT_PREFIX, JOBS_OUTPUT_PREFIX, JOBS_WORK_PREFIX,
                                     MODELS_PREFIX, OPENAI_BATCHES_PREFIX, OPENAI_FILES_PREFIX)

class CirrusStack(Stack):
    def __init__(self, scope: Construct, id: str, *, stage: StageSettings, assets: dict[str, Path],
                 bundles: list[Bundle], **kwargs) -> None:
        super().__init__(scope, id, description=f"Cirrus serverless transformer inference ({stage.name})", **kwargs)
        self._acked: dict[str, set[str]] = {}
        retain = stage.removal_policy == "retain"
        Tags.of(self).add("project", "cirrus")
        Tags.of(self).add("stage", stage.name)
        for k, v in stage.tags.items():
            Tags.of(self).add(k, v)

        encryption = Encryption(self, "Encryption", stage_name=stage.name, retain=retain)
        key = encryption.key
        storage = Artifacts(self, "Storage", key=key, retain=retain, log_retention_days=stage.log_retention_days)
        tables = Tables(self, "Tables", key=key, retain=retain)
        batch = Batch(self, "Batch", stage=stage, key=key)
        heavy = (HeavyEndpoint(self, "Heavy", stage_name=stage.name, settings=stage.heavy, key=key,
                               artifacts=storage.artifacts,
                               check_logs=encrypted_log_group(self, "HeavyWeightsCheckLogs", key=key, stage=stage)
                               if stage.heavy.model_s3_prefix else None)
                 if stage.heavy.enabled else None)
        heavy_async = (HeavyAsyncEndpoint(self, "HeavyAsync", heavy=heavy, data=storage.data, key=key)
                       if heavy is not None and stage.heavy.async_enabled else None)

        # Resource names reach the runtime through the Settings field each spec names.
        receives = {q.max_receive_count for q in RESOURCES.queues}
        if len(receives) != 1:
            raise ValueError("the batch functions read one max_receive_count; queues disagree")
        values: dict[str, object] = {"stage": stage.name, "models": list(stage.models),
                                     "default_embedding_model": stage.default_embedding_model,
                                     "generation_models": list(stage.generation_models),
                                     "cors_origins": list(stage.api.cors_origins),
                                     "cors_headers": list(stage.api.cors_headers),
                                     "max_receive_count": receives.pop()}
        values |= {b.env: storage.buckets[b.id].bucket_name for b in RESOURCES.buckets}
        values |= {t.env: tables[t.id].table_name for t in RESOURCES.tables}
        values |= {q.env: batch.queues[q.id].queue_url for q in RESOURCES.queues if q.env}
        if heavy is not None:
            values |= {"heavy_endpoint_name": heavy.endpoint_name, "heavy_models": [stage.heavy.served_model],
                       "heavy_inference_component": heavy.inference_component_name}
        if heavy_async is not None:
            values["heavy_async_endpoint_name"] = heavy_async.endpoint_name
        env = {fn.id: runtime_env(**{f: values.get(f) for f in fn.env}) for fn in FUNCTIONS}
        fns = Functions(self, "Functions", stage=stage, assets=assets, key=key, env=env)

        # --- grants: each function gets the prefixes and tables it touches, nothing more ---
        artifacts, data = storage.artifacts, storage.data
        models = MODELS_PREFIX
        jobs_in, jobs_work, jobs_out = JOBS_INPUT_PREFIX, JOBS_WORK_PREFIX, JOBS_OUTPUT_PREFIX
        api, generation, authorizer, splitter, worker, dlq = (
            fns[n] for n in ("api", "generation", "authorizer", "batch_splitter", "batch_worker", "batch_dlq"))
        self._grant_s3(api, artifacts, models, "read")
        self._grant_s3(api, data, jobs_in, "put")         # presigned upload URLs for new jobs
        self._grant_s3(api, data, jobs_out, "read")       # presigned result URLs
        # The OpenAI Files/Batches API: uploads, metadata, converted output files, batch records;
        # an upload over the batch limit is deleted with its versions.
        self._grant_s3(api, data, OPENAI_FILES_PREFIX, "read_write")
        self._grant_s3(api, data, OPENAI_FILES_PREFIX, "delete")
        self._grant_s3(api, data, OPENAI_BATCHES_PREFIX, "read_write")
        self._grant_table(api, tables["Jobs"], "read_write")
        # Chat/completions run in the generation function (infra.resources.STREAMED_ROUTES).
        self._grant_s3(generation, artifacts, models, "read")
        if heavy is not None:
            heavy.grant_invoke(generation)
        if heavy_async is not None:
            # Generation jobs: request.json + job.json written by the generation function, read by the
            # api function's status route (List makes a missing result a 404, i.e. "in progress",
            # instead of AccessDenied).
            heavy_async.grant_invoke_async(generation)
            self._grant_s3(generation, data, JOBS_GENERATION_PREFIX, "put")
            self._grant_s3(api, data, JOBS_GENERATION_PREFIX, "read")
        self._grant_table(authorizer, tables["ApiKeys"], "read")
        self._grant_s3(splitter, artifacts, models, "read")  # unknown models end the job with a clear error
        self._grant_s3(splitter, data, jobs_in, "delete")    # rejected inputs (too large, late) and their versions
        batch.queues["Work"].grant_send_messages(splitter)
        # Splitter (empty/invalid files finalise at once), worker (chunks + last-chunk finalise) and
        # the DLQ handler (marks a job, finalises what is left) share the job's S3 + table footprint.
        for fn in (splitter, worker, dlq):
            self._grant_s3(fn, data, jobs_in, "read")       # chunks read byte ranges of the input
            self._grant_s3(fn, data, jobs_work, "read_write")
            self._grant_s3(fn, data, jobs_out, "read_write")
            self._grant_table(fn, tables["Jobs"], "read_write")
        self._grant_s3(worker, artifacts, models, "read")
        self._grant_s3(dlq, artifacts, models, "read")
        batch.connect(data_bucket=data, consumers=fns.functions)
        encryption.allow_s3_notifications()

        self.api = Api(self, "Api", stage=stage, key=key, handler=api, stream_handler=generation,
                       authorizer=authorizer)
        if bundles:
            BundleUpload(self, "Bundles", bucket=artifacts, key=key, bundles=bundles,
                         log_group=encrypted_log_group(self, "BundleDeployLogs", key=key, stage=stage))
        monitoring = Monitoring(self, "Monitoring", stage_name=stage.name, key=key, api=self.api.rest_api,
                                functions=fns.functions, dlqs=batch.dlqs, heavy=heavy, heavy_async=heavy_async,
                                alarm_email=stage.alarm_email)
        # Alarms publish to the encrypted topic as the CloudWatch service itself.
        encryption.allow_alarm_notifications()

        CfnOutput(self, "ApiUrl", value=self.api.url)
        CfnOutput(self, "ArtifactsBucket", value=artifacts.bucket_name)
        CfnOutput(self, "DataBucket", value=data.bucket_name)
        CfnOutput(self, "ApiKeysTable", value=tables["ApiKeys"].table_name)
        CfnOutput(self, "UsagePlanId", value=self.api.usage_plan.usage_plan_id,
                  description="default per-key usage plan: keys create --usage-plan <this>")
        CfnOutput(self, "AlarmTopic", value=monitoring.topic.topic_arn)
        if heavy is not None:
            CfnOutput(self, "HeavyEndpointName", value=heavy.endpoint_name)
        if heavy_async is not None:
            CfnOutput(self, "HeavyAsyncEndpointName", value=heavy_async.endpoint_name)

    # --- grants with their cdk-nag acknowledgements, derived from the grant itself ---------------
    def _lid(self, cfn_parent) -> str:
        return self.resolve(self.get_logical_id(cfn_parent.node.default_child))

    def _grant_s3(self, fn: lambda_.Function, bucket: s3.Bucket, prefix: str, mode: str) -> None:
        grant_prefix(bucket, fn, prefix, mode)
        findings = {f"Resource::<{self._lid(bucket)}.Arn>/{prefix}*":
                    f"Object access limited to the {prefix} prefix of this bucket; listing, where granted, "
                    f"carries an s3:prefix condition on the same prefix."}
        for action in _S3_GRANT_WILDCARDS[mode]:
            findings[f"Action::{action}"] = _WILDCARD_REASONS[action]
        self._acknowledge(fn, findings)

    def _grant_table(self, fn: lambda_.Function, table: dynamodb.Table, mode: str) -> None:
        {"read": table.grant_read_data, "read_write": table.grant_read_write_data}[mode](fn)
        findings = {}
        if table.node.default_child.global_secondary_indexes:
            findings[f"Resource::<{self._lid(table)}.Arn>/index/*"] = "Queries on this table's own indexes."
        if mode == "read_write":
            for action in ("kms:GenerateDataKey*", "kms:ReEncrypt*"):
                findings[f"Action::{action}"] = _WILDCARD_REASONS[action]
        self._acknowledge(fn, findings)

    def _acknowledge(self, fn: lambda_.Function, findings: dict[str, str]) -> None:
        done = self._acked.setdefault(fn.node.path, set())
        for finding, reason in findings.items():
            if finding not in done:
                done.add(finding)
                acknowledge(fn.role, id=f"AwsSolutions-IAM5[{finding}]", reason=reason)


# Wildcard actions each grant mode leaves (infra.constructs.artifacts.grant_prefix): reads are the
# exact s3:GetObject + s3:ListBucket (prefix-conditioned), so only CDK's put/delete grants add any.
_S3_GRANT_WILDCARDS = {
    "read": (),
    "put": ("s3:Abort*", "kms:GenerateDataKey*", "kms:ReEncrypt*"),
    "delete": ("s3:DeleteObject*",),
    "read_write": ("s3:DeleteObject*", "s3:Abort*", "kms:GenerateDataKey*", "kms:ReEncrypt*"),
}
_WILDCARD_REASONS = {
    "s3:DeleteObject*": "CDK grant_delete: cleanup of intermediate chunk objects and of rejected inputs "
                        "(with their versions), scoped prefix.",
    "s3:Abort*": "CDK grant_put: abort this function's own multipart uploads, scoped prefix.",
    "kms:GenerateDataKey*": "Data keys of the one Cirrus KMS key, for SSE-KMS writes (only that key).",
    "kms:ReEncrypt*": "CDK encrypt grant on the one Cirrus KMS key (only that key).",
}
