"""HeavyAsyncEndpoint: SageMaker async inference for generation jobs, same model as HeavyEndpoint, 0..max instances."""
from __future__ import annotations

from aws_cdk import Duration, Stack
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_sagemaker as sagemaker
from constructs import Construct

from infra.constructs import acknowledge
from infra.constructs.heavy_endpoint import VARIANT, HeavyEndpoint, scalable_target, scale_out_from_zero
from functions.core.contract import JOBS_GENERATION_FAILURE_PREFIX, JOBS_GENERATION_OUTPUT_PREFIX, JOBS_GENERATION_PREFIX

# The contract with functions/core/generation/service.py: the API writes
# jobs/generation/<job id>/request.json and job.json; SageMaker writes <inference id>.out under
# OUTPUT_PREFIX and <inference id>-error.out under FAILURE_PREFIX (it returns both locations).
JOBS_PREFIX = JOBS_GENERATION_PREFIX
OUTPUT_PREFIX = JOBS_GENERATION_OUTPUT_PREFIX
FAILURE_PREFIX = JOBS_GENERATION_FAILURE_PREFIX
REQUEST_OBJECTS = f"{JOBS_PREFIX}genjob-*/request.json"


class HeavyAsyncEndpoint(Construct):
    """An async endpoint config + endpoint serving HeavyEndpoint's model, scaled 0..``async_max_capacity``.

    Requests queue inside SageMaker, so an endpoint at 0 instances loses nothing: target tracking on
    ``ApproximateBacklogSizePerInstance`` sizes it and scales it in to 0 when the backlog is empty;
    a step policy on ``HasBacklogWithoutCapacity`` adds the first instance (target tracking cannot
    leave 0, there is no per-instance value to track). The model's execution role reads only the
    job requests and writes only the two output prefixes.
    """

    def __init__(self, scope: Construct, id: str, *, heavy: HeavyEndpoint, data: s3.IBucket, key: kms.IKey) -> None:
        super().__init__(scope, id)
        stack = Stack.of(self)
        settings = heavy.settings
        self.settings = settings
        self.endpoint_name = f"{heavy.endpoint_name}-async"
        self.output_path = f"s3://{data.bucket_name}/{OUTPUT_PREFIX}"
        self.failure_path = f"s3://{data.bucket_name}/{FAILURE_PREFIX}"
        self.kms_encrypted = heavy.kms_encrypted

        # S3 for the execution role (it already uses the key: HeavyEndpoint grants encrypt/decrypt).
        self.execution_policy = iam.Policy(self, "ExecutionJobAccess", roles=[heavy.role], statements=[
            iam.PolicyStatement(actions=["s3:GetObject"], resources=[data.arn_for_objects(REQUEST_OBJECTS)]),
            iam.PolicyStatement(actions=["s3:PutObject", "s3:AbortMultipartUpload"],
                                resources=[data.arn_for_objects(f"{OUTPUT_PREFIX}*"),
                                           data.arn_for_objects(f"{FAILURE_PREFIX}*")]),
        ])
        bucket_lid = stack.resolve(stack.get_logical_id(data.node.default_child))
        for pattern, why in ((REQUEST_OBJECTS, "reads the job requests the API wrote, one object name per job"),
                             (f"{OUTPUT_PREFIX}*", "writes results it names after the inference id"),
                             (f"{FAILURE_PREFIX}*", "writes failures it names after the inference id")):
            acknowledge(self.execution_policy, id=f"AwsSolutions-IAM5[Resource::<{bucket_lid}.Arn>/{pattern}]",
                        reason=f"SageMaker async inference {why}; scoped to the generation-jobs prefix.")

        variant = sagemaker.CfnEndpointConfig.ProductionVariantProperty(
            variant_name=VARIANT,
            model_name=heavy.model.attr_model_name,
            instance_type=settings.instance_type,
            # CreateEndpoint needs >= 1 instance; autoscaling takes it to 0 once the backlog is empty.
            initial_instance_count=1,
            container_startup_health_check_timeout_in_seconds=settings.startup_health_check_timeout_s,
            model_data_download_timeout_in_seconds=settings.startup_health_check_timeout_s,
        )
        self.endpoint_config = sagemaker.CfnEndpointConfig(
            self, "EndpointConfig",
            production_variants=[variant],
            # The volume key: only on EBS-backed types (see heavy_endpoint.LOCAL_STORAGE_FAMILIES).
            kms_key_id=key.key_arn if self.kms_encrypted else None,
            async_inference_config=sagemaker.CfnEndpointConfig.AsyncInferenceConfigProperty(
                # Output objects are always encrypted with the Cirrus key, whatever the instance type.
                output_config=sagemaker.CfnEndpointConfig.AsyncInferenceOutputConfigProperty(
                    s3_output_path=self.output_path, s3_failure_path=self.failure_path, kms_key_id=key.key_arn),
                client_config=sagemaker.CfnEndpointConfig.AsyncInferenceClientConfigProperty(
                    max_concurrent_invocations_per_instance=settings.async_max_concurrent_invocations)),
        )
        if not self.kms_encrypted:
            acknowledge(self.endpoint_config, id="AwsSolutions-SM2",
                reason=f"{settings.instance_type} has NVMe instance storage, encrypted in hardware; "
                       "SageMaker rejects a KmsKeyId for such instances (async outputs still use the key).")
        self.endpoint = sagemaker.CfnEndpoint(
            self, "Endpoint", endpoint_name=self.endpoint_name,
            endpoint_config_name=self.endpoint_config.attr_endpoint_config_name)
        # The first invocation must find the S3 permissions in place.
        self.endpoint.node.add_dependency(self.execution_policy)
        self.endpoint_arn = f"arn:{stack.partition}:sagemaker:{stack.region}:{stack.account}:endpoint/{self.endpoint_name}"
        self._autoscaling(settings)

    def _autoscaling(self, settings) -> None:
        target = scalable_target(
            self, "InstanceScaling",
            resource_id=f"endpoint/{self.endpoint_name}/variant/{VARIANT}",
            dimension="sagemaker:variant:DesiredInstanceCount",
            min_capacity=0, max_capacity=settings.async_max_capacity,
            after=self.endpoint)
        target.scale_to_track_metric(
            "BacklogPerInstance",
            target_value=settings.async_target_backlog_per_instance,
            custom_metric=self.metric("ApproximateBacklogSizePerInstance", "Average", minutes=1),
            scale_in_cooldown=Duration.seconds(settings.scale_in_cooldown_s),
            scale_out_cooldown=Duration.seconds(60))
        scale_out_from_zero(target, self.metric("HasBacklogWithoutCapacity", "Average", minutes=1))

    def grant_invoke_async(self, grantee: iam.IGrantable) -> None:
        """sagemaker:InvokeEndpointAsync on this endpoint only."""
        iam.Grant.add_to_principal(grantee=grantee, actions=["sagemaker:InvokeEndpointAsync"],
                                   resource_arns=[self.endpoint_arn])

    def metric(self, name: str, statistic: str = "Sum", *, minutes: int = 5) -> cloudwatch.Metric:
        """An async-endpoint metric (AWS/SageMaker, dimension EndpointName)."""
        return cloudwatch.Metric(namespace="AWS/SageMaker", metric_name=name,
                                 dimensions_map={"EndpointName": self.endpoint_name},
                                 statistic=statistic, period=Duration.minutes(minutes))
