"""Artifacts (model bundles) and Data (batch jobs) buckets, their access-log bucket, and bundle upload."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from aws_cdk import DefaultStackSynthesizer, Duration, RemovalPolicy, Stack
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_logs as logs
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_s3_deployment as s3deploy
from constructs import Construct

from infra.constructs import acknowledge, nag_env

from functions.core.inference.manifest import MANIFEST_NAME, Manifest, sha256_file
from infra.resources import RESOURCES
from functions.core.contract import (JOBS_GENERATION_PREFIX, JOBS_INPUT_PREFIX, JOBS_OUTPUT_PREFIX, JOBS_WORK_PREFIX,
                                     MODELS_PREFIX, POINTER_NAME, Pointer, bundle_prefix)


@dataclass(frozen=True)
class Bundle:
    """A built bundle folder to upload at deploy, with what its registry pointer says."""

    name: str
    version: str
    path: Path
    manifest_sha256: str
    created_at: str

    @classmethod
    def read(cls, path: Path) -> "Bundle":
        m = Manifest.read(path)
        return cls(m.name, m.version, path, sha256_file(path / MANIFEST_NAME), m.created_at)


def grant_prefix(bucket: s3.IBucket, grantee: iam.IGrantable, prefix: str, mode: str) -> None:
    """Access to the objects under ``prefix`` only, listing included.

    CDK's ``grant_read`` also gives ``s3:List*`` on the whole bucket (a prefix scopes object ARNs,
    never a listing), so reads are written out here: ``s3:GetObject`` on ``<prefix>*`` and
    ``s3:ListBucket`` with an ``s3:prefix`` condition, plus decrypt on the bucket's key. Writes are
    CDK's ``grant_put`` / ``grant_delete`` on the same prefix (no listing in them). ``mode``:
    ``read``, ``put``, ``read_write`` or ``delete`` (every version of an object under the prefix:
    ``s3:DeleteObject*`` and ``s3:ListBucketVersions`` with the same ``s3:prefix`` condition).
    """
    if mode not in ("read", "put", "read_write", "delete"):
        raise ValueError(f"unknown grant mode {mode!r}")
    if mode == "delete":
        bucket.grant_delete(grantee, f"{prefix}*")
        iam.Grant.add_to_principal(grantee=grantee, actions=["s3:ListBucketVersions"],
                                   resource_arns=[bucket.bucket_arn],
                                   conditions={"StringLike": {"s3:prefix": [f"{prefix}*"]}})
        return
    if mode in ("read", "read_write"):
        iam.Grant.add_to_principal(grantee=grantee, actions=["s3:GetObject"],
                                   resource_arns=[bucket.arn_for_objects(f"{prefix}*")])
        iam.Grant.add_to_principal(grantee=grantee, actions=["s3:ListBucket"], resource_arns=[bucket.bucket_arn],
                                   conditions={"StringLike": {"s3:prefix": [f"{prefix}*"]}})
        if bucket.encryption_key is not None:
            bucket.encryption_key.grant_decrypt(grantee)
    if mode in ("put", "read_write"):
        bucket.grant_put(grantee, f"{prefix}*")
    if mode == "read_write":
        bucket.grant_delete(grantee, f"{prefix}*")


class Artifacts(Construct):
    """The buckets in ``RESOURCES.buckets`` (SSE-KMS + bucket key, versioned, SSL-only, private,
    access-logged, lifecycle rules) plus the log bucket their access logs go to.
    """

    def __init__(self, scope: Construct, id: str, *, key: kms.IKey, retain: bool,
                 log_retention_days: int) -> None:
        super().__init__(scope, id)
        removal = RemovalPolicy.RETAIN if retain else RemovalPolicy.DESTROY
        # S3 server access logging cannot write to an SSE-KMS bucket: the log bucket uses SSE-S3.
        self.log_bucket = s3.Bucket(
            self, "AccessLogs",
            encryption=s3.BucketEncryption.S3_MANAGED,
            enforce_ssl=True,
            versioned=True,
            block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
            object_ownership=s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
            lifecycle_rules=[s3.LifecycleRule(
                id="expire-access-logs", expiration=Duration.days(max(log_retention_days, 30)),
                noncurrent_version_expiration=Duration.days(7),
                abort_incomplete_multipart_upload_after=Duration.days(1))],
            removal_policy=removal,
            auto_delete_objects=not retain,
        )
        acknowledge(self.log_bucket, id="AwsSolutions-S1",
            reason="This is the access-log target bucket; logging it into itself would loop.")

        lifecycle = {
            # Old model versions stay restorable for 90 days after a newer object replaces them.
            "Artifacts": [s3.LifecycleRule(id="old-model-versions", noncurrent_version_expiration=Duration.days(90),
                                           abort_incomplete_multipart_upload_after=Duration.days(1))],
            "Data": [
                s3.LifecycleRule(id="job-work", prefix=JOBS_WORK_PREFIX, expiration=Duration.days(7)),
                s3.LifecycleRule(id="job-inputs", prefix=JOBS_INPUT_PREFIX, expiration=Duration.days(30)),
                s3.LifecycleRule(id="job-outputs", prefix=JOBS_OUTPUT_PREFIX, expiration=Duration.days(30)),
                s3.LifecycleRule(id="generation-jobs", prefix=JOBS_GENERATION_PREFIX,
                                 expiration=Duration.days(30)),
                s3.LifecycleRule(id="noncurrent", noncurrent_version_expiration=Duration.days(7),
                                 abort_incomplete_multipart_upload_after=Duration.days(1)),
            ],
        }
        self.buckets: dict[str, s3.Bucket] = {}
        for spec in RESOURCES.buckets:
            self.buckets[spec.id] = s3.Bucket(
                self, spec.id,
                encryption=s3.BucketEncryption.KMS,
                encryption_key=key,
                bucket_key_enabled=True,
                enforce_ssl=True,
                versioned=True,
                block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
                object_ownership=s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
                server_access_logs_bucket=self.log_bucket,
                server_access_logs_prefix=f"{spec.id.lower()}/",
                lifecycle_rules=lifecycle.get(spec.id),
                removal_policy=removal,
                auto_delete_objects=not retain,
            )

    @property
    def artifacts(self) -> s3.Bucket:
        return self.buckets["Artifacts"]

    @property
    def data(self) -> s3.Bucket:
        return self.buckets["Data"]


class BundleUpload(Construct):
    """Upload bundle folders to ``models/<name>/<version>/`` and then move ``models/<name>/current.json``.

    The pointer deployment depends on the files deployment, so a reader never sees a pointer to a
    version whose files have not all landed (the runtime checks every sha256 as well).

    The pointer is written blind (a deploy does not read the registry): it runs on the first deploy and
    whenever a bundle's version/manifest changes, and then replaces ``current.json`` with ``history: []``,
    making this bundle current over any version published with ``model_export publish`` meanwhile and
    dropping the rollback history. Unchanged bundles leave the pointer alone. Files are never pruned, so
    ``model_export rollback NAME --to VERSION`` can restore any version. docs/deploy.md says when to set
    ``upload_bundles: false`` instead.
    """

    def __init__(self, scope: Construct, id: str, *, bucket: s3.IBucket, key: kms.IKey,
                 bundles: list[Bundle], log_group: logs.ILogGroup) -> None:
        super().__init__(scope, id)

        def deploy(deploy_id: str, source: s3deploy.ISource, prefix: str) -> s3deploy.BucketDeployment:
            # Identical settings for every deployment, so they share CDK's one handler function.
            return s3deploy.BucketDeployment(
                self, deploy_id,
                sources=[source],
                destination_bucket=bucket,
                destination_key_prefix=prefix,
                prune=False,
                retain_on_delete=True,
                server_side_encryption=s3deploy.ServerSideEncryption.AWS_KMS,
                server_side_encryption_aws_kms_key_id=key.key_id,
                memory_limit=1024,
                log_group=log_group,   # KMS-encrypted, stage retention (else CDK makes a plain one)
            )

        for b in bundles:
            files = deploy(f"{b.name}-files", s3deploy.Source.asset(str(b.path)),
                           bundle_prefix(b.name, b.version))
            pointer = Pointer(name=b.name, version=b.version, manifest_sha256=b.manifest_sha256,
                              updated_at=b.created_at)
            current = deploy(f"{b.name}-pointer",
                             s3deploy.Source.data(POINTER_NAME, pointer.json_bytes(indent=None).decode()),
                             f"{MODELS_PREFIX}{b.name}/")
            current.node.add_dependency(files)
        self._acknowledge_deploy_handler(bucket)

    def _acknowledge_deploy_handler(self, bucket: s3.IBucket) -> None:
        """The findings on CDK's BucketDeployment handler (deploy-time only, never serves requests)."""
        stack = Stack.of(self)
        dest = stack.resolve(stack.get_logical_id(bucket.node.default_child))
        deploy_only = "CDK's BucketDeployment handler runs only while CloudFormation deploys the bundles"
        findings = {
            "AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/AWSLambdaBasicExecutionRole]":
                f"{deploy_only}; AWS-managed logging policy.",
            "AwsSolutions-L1": f"{deploy_only}; CDK pins its runtime.",
            "Serverless-LambdaLatestVersion": f"{deploy_only}; CDK pins its runtime.",
            "Serverless-LambdaDLQ": f"{deploy_only}; CloudFormation invokes it and reports failures itself.",
            "Serverless-LambdaTracing": f"{deploy_only}; nothing to trace at request time.",
            f"AwsSolutions-IAM5[Resource::<{dest}.Arn>/*]": f"{deploy_only}; it writes bundles into this bucket.",
            "AwsSolutions-IAM5[Resource::arn:{partition}:s3:::cdk-{q}-assets-{account}-{region}/*]".format(
                q=DefaultStackSynthesizer.DEFAULT_QUALIFIER, **nag_env(self)):
                f"{deploy_only}; it reads the staged bundle zips from the CDK assets bucket.",
        }
        for action in ("s3:GetBucket*", "s3:GetObject*", "s3:List*", "s3:Abort*", "s3:DeleteObject*",
                       "kms:GenerateDataKey*", "kms:ReEncrypt*"):
            findings[f"AwsSolutions-IAM5[Action::{action}]"] = f"{deploy_only}; CDK's grant on the bucket and key."
        for child in stack.node.children:
            if child.node.id.startswith("Custom::CDKBucketDeployment"):
                for rule, reason in findings.items():
                    acknowledge(child, id=rule, reason=reason)
