"""HeavyEndpoint: an LLM container (HF TGI or DJL-LMI) on a GPU SageMaker endpoint, autoscaled, idle at zero."""
from __future__ import annotations

from pathlib import Path

from aws_cdk import CfnMapping, CustomResource, Duration, Stack
from aws_cdk import aws_applicationautoscaling as appscaling
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_sagemaker as sagemaker
from constructs import Construct

from infra.constructs import acknowledge, nag_env
from infra.constructs.artifacts import grant_prefix
from infra.settings import HeavyEndpointSettings

# Container images (AWS Deep Learning Containers). Repository + tag per image kind; the registry
# account per region is the table of the SageMaker Python SDK (image_uri_config/huggingface-llm.json,
# djl-lmi.json). Regions not listed: set heavy.image_uri in cdk.json.
IMAGES = {
    "tgi": "huggingface-pytorch-tgi-inference:2.4.0-tgi3.0.1-gpu-py311-cu124-ubuntu22.04-v2.0",
    "djl-lmi": "djl-inference:0.31.0-lmi13.0.0-cu124",
}
DLC_ACCOUNTS = {
    "us-east-1": "763104351884", "us-east-2": "763104351884", "us-west-1": "763104351884",
    "us-west-2": "763104351884", "ca-central-1": "763104351884", "sa-east-1": "763104351884",
    "eu-west-1": "763104351884", "eu-west-2": "763104351884", "eu-west-3": "763104351884",
    "eu-central-1": "763104351884", "eu-north-1": "763104351884", "ap-south-1": "763104351884",
    "ap-northeast-1": "763104351884", "ap-northeast-2": "763104351884", "ap-northeast-3": "763104351884",
    "ap-southeast-1": "763104351884", "ap-southeast-2": "763104351884",
    "af-south-1": "626614931356", "ap-east-1": "871362719292", "eu-south-1": "692866216735",
    "me-south-1": "217643126080", "ap-southeast-3": "907027046896", "me-central-1": "914824155844",
    "il-central-1": "780543022126", "eu-central-2": "380420809688", "eu-south-2": "503227376785",
    "ap-south-2": "772153158452", "ap-southeast-4": "457447274322", "ca-west-1": "204538143572",
}
# Nitro instances with local NVMe storage encrypt it in hardware, and CreateEndpointConfig FAILS
# when a KmsKeyId is given for them (AWS API reference). Only EBS-backed families take our key.
LOCAL_STORAGE_FAMILIES = ("g4dn", "g5", "g6", "g6e", "p4d", "p4de", "p5", "p5e")
# GPU memory per instance (MiB) that one model copy may reserve (inference components need a number).
COPY_MEMORY_MB = 12_288
VARIANT = "AllTraffic"


# The deploy-time check's code (self-contained; it is also what `model_export publish-weights` checks with).
WEIGHTS_CHECK_SOURCE = Path(__file__).resolve().parents[2] / "model_export" / "weights_check.py"
MODEL_DIR = "/opt/ml/model"   # where SageMaker puts an S3 model data source inside the container


def model_environment(settings: HeavyEndpointSettings) -> dict[str, str]:
    """The container's environment: which model it serves, pinned (infra.settings validates the pin).

    TGI (the Hugging Face LLM DLC) downloads ``HF_MODEL_ID`` at ``HF_MODEL_REVISION``; DJL-LMI takes
    the revision as ``OPTION_REVISION``. With ``model_s3_prefix`` both load the copied folder.
    """
    model = MODEL_DIR if settings.model_s3_prefix else settings.model_id
    revision = None if settings.model_s3_prefix else settings.model_revision
    if settings.image == "djl-lmi":
        env = {"HF_MODEL_ID": model, "OPTION_ROLLING_BATCH": "lmi-dist",
               "TENSOR_PARALLEL_DEGREE": str(settings.num_gpus), "OPTION_MAX_MODEL_LEN": "4096"}
        if revision:
            env["OPTION_REVISION"] = revision
        return env
    env = {"HF_MODEL_ID": model, "SM_NUM_GPUS": str(settings.num_gpus),
           "MESSAGES_API_ENABLED": "true", "MAX_INPUT_TOKENS": "3072", "MAX_TOTAL_TOKENS": "4096"}
    if revision:
        env["HF_MODEL_REVISION"] = revision
    return env


def takes_kms_key(instance_type: str) -> bool:
    return instance_type.split(".")[1] not in LOCAL_STORAGE_FAMILIES


def autoscaling_role(scope: Construct) -> iam.IRole:
    """The service-linked role Application Auto Scaling creates itself: no custom policy to widen."""
    stack = Stack.of(scope)
    return iam.Role.from_role_arn(
        scope, "AutoScalingRole",
        f"arn:{stack.partition}:iam::{stack.account}:role/aws-service-role/"
        "sagemaker.application-autoscaling.amazonaws.com/AWSServiceRoleForApplicationAutoScaling_SageMakerEndpoint",
        mutable=False)


def scalable_target(scope: Construct, id: str, *, resource_id: str, dimension: str, min_capacity: int,
                    max_capacity: int, after: Construct) -> appscaling.ScalableTarget:
    """A SageMaker scalable target under the service-linked role, registered once ``after`` exists."""
    target = appscaling.ScalableTarget(
        scope, id,
        service_namespace=appscaling.ServiceNamespace.SAGEMAKER,
        resource_id=resource_id, scalable_dimension=dimension,
        min_capacity=min_capacity, max_capacity=max_capacity,
        role=autoscaling_role(scope))
    target.node.add_dependency(after)
    return target


def scale_out_from_zero(target: appscaling.ScalableTarget, metric: cloudwatch.IMetric) -> None:
    """One step up when ``metric`` reaches 1: target tracking cannot leave 0 (at zero capacity
    nothing is served, so there is no per-instance or per-copy value to track)."""
    target.scale_on_metric(
        "ScaleOutFromZero", metric=metric,
        scaling_steps=[appscaling.ScalingInterval(upper=1, change=0),
                       appscaling.ScalingInterval(lower=1, change=1)],
        adjustment_type=appscaling.AdjustmentType.CHANGE_IN_CAPACITY,
        evaluation_periods=1, cooldown=Duration.seconds(60))


class HeavyEndpoint(Construct):
    """GPU endpoint for generation with a least-privilege execution role.

    ``scale_to_zero`` (default): an endpoint with managed instance scaling (min 0 instances) and one
    inference component whose copy count scales 0..max; a request while at zero fails fast with
    ``NoCapacityInvocationFailures``, which an alarm turns into "add one copy" (cold start: minutes).
    Otherwise: a classic variant with ``min_capacity`` >= 1 instances and target tracking.
    """

    def __init__(self, scope: Construct, id: str, *, stage_name: str, settings: HeavyEndpointSettings,
                 key: kms.IKey, artifacts: s3.IBucket, check_logs: logs.ILogGroup | None = None) -> None:
        super().__init__(scope, id)
        stack = Stack.of(self)
        self.settings = settings
        self.endpoint_name = f"cirrus-{stage_name}-heavy"
        self.inference_component_name = f"{self.endpoint_name}-llm" if settings.scale_to_zero else None
        self.kms_encrypted = takes_kms_key(settings.instance_type)

        self.role = iam.Role(self, "ExecutionRole", assumed_by=iam.ServicePrincipal("sagemaker.amazonaws.com"),
                             description="Cirrus heavy endpoint: pull the image, write logs/metrics, read the model")
        image, registry, repo_name = self._image(settings)
        self.role.add_to_policy(iam.PolicyStatement(
            actions=["ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer", "ecr:BatchCheckLayerAvailability"],
            resources=[f"arn:{stack.partition}:ecr:{stack.region}:{registry}:repository/{repo_name}"]))
        self.role.add_to_policy(iam.PolicyStatement(actions=["ecr:GetAuthorizationToken"], resources=["*"]))
        log_arn = f"arn:{stack.partition}:logs:{stack.region}:{stack.account}:log-group:/aws/sagemaker/Endpoints/{self.endpoint_name}"
        self.role.add_to_policy(iam.PolicyStatement(
            actions=["logs:CreateLogGroup", "logs:DescribeLogStreams"], resources=[f"{log_arn}:*"]))
        self.role.add_to_policy(iam.PolicyStatement(
            actions=["logs:CreateLogStream", "logs:PutLogEvents"], resources=[f"{log_arn}:log-stream:*"]))
        self.role.add_to_policy(iam.PolicyStatement(
            actions=["cloudwatch:PutMetricData"], resources=["*"],
            conditions={"StringLike": {"cloudwatch:namespace": ["/aws/sagemaker/*", "AWS/SageMaker*"]}}))
        key.grant_encrypt_decrypt(self.role)
        env = model_environment(settings)
        model_data = None
        if settings.model_s3_prefix:
            # SageMaker copies the prefix to /opt/ml/model before the container starts (with the role's
            # read on exactly that prefix), so an isolated container still finds its model.
            grant_prefix(artifacts, self.role, settings.model_s3_prefix, "read")
            bucket_lid = stack.resolve(stack.get_logical_id(artifacts.node.default_child))
            acknowledge(self.role, id=f"AwsSolutions-IAM5[Resource::<{bucket_lid}.Arn>/{settings.model_s3_prefix}*]",
                        reason="SageMaker copies every file of this one model version (its file names are the "
                               "model's); listing carries an s3:prefix condition on the same prefix.")
            model_data = sagemaker.CfnModel.ModelDataSourceProperty(
                s3_data_source=sagemaker.CfnModel.S3DataSourceProperty(
                    s3_uri=f"s3://{artifacts.bucket_name}/{settings.model_s3_prefix}",
                    s3_data_type="S3Prefix", compression_type="None"))
        self.model = sagemaker.CfnModel(
            self, "Model", execution_role_arn=self.role.role_arn,
            # No network for the model container where it needs none: it cannot fetch other weights,
            # reach the hub, or send anything out (SageMaker itself still moves the async job objects).
            enable_network_isolation=settings.isolated,
            primary_container=sagemaker.CfnModel.ContainerDefinitionProperty(
                image=image, environment=env, model_data_source=model_data))
        self.model.node.add_dependency(self.role)
        if settings.model_s3_prefix:
            if check_logs is None:
                raise ValueError("a model served from model_s3_prefix needs check_logs for its deploy-time check")
            self.model.node.add_dependency(self._weights_check(settings, artifacts, check_logs))

        variant = sagemaker.CfnEndpointConfig.ProductionVariantProperty(
            variant_name=VARIANT,
            instance_type=settings.instance_type,
            initial_instance_count=max(settings.min_capacity, 1),
            container_startup_health_check_timeout_in_seconds=settings.startup_health_check_timeout_s,
            model_data_download_timeout_in_seconds=settings.startup_health_check_timeout_s,
            model_name=None if settings.scale_to_zero else self.model.attr_model_name,
            managed_instance_scaling=sagemaker.CfnEndpointConfig.ManagedInstanceScalingProperty(
                status="ENABLED", min_instance_count=settings.min_capacity,
                max_instance_count=settings.max_capacity) if settings.scale_to_zero else None,
            routing_config=sagemaker.CfnEndpointConfig.RoutingConfigProperty(
                routing_strategy="LEAST_OUTSTANDING_REQUESTS") if settings.scale_to_zero else None,
        )
        self.endpoint_config = sagemaker.CfnEndpointConfig(
            self, "EndpointConfig",
            production_variants=[variant],
            kms_key_id=key.key_arn if self.kms_encrypted else None,
            execution_role_arn=self.role.role_arn if settings.scale_to_zero else None,
        )
        if not self.kms_encrypted:
            acknowledge(self.endpoint_config, id="AwsSolutions-SM2",
                reason=f"{settings.instance_type} has NVMe instance storage, encrypted in hardware; "
                       "SageMaker rejects a KmsKeyId for such instances.")
        self.endpoint = sagemaker.CfnEndpoint(
            self, "Endpoint", endpoint_name=self.endpoint_name,
            endpoint_config_name=self.endpoint_config.attr_endpoint_config_name)
        self.endpoint_arn = f"arn:{stack.partition}:sagemaker:{stack.region}:{stack.account}:endpoint/{self.endpoint_name}"
        acknowledge(self.role, id="AwsSolutions-IAM5[Resource::*]",
            reason="ecr:GetAuthorizationToken and cloudwatch:PutMetricData (namespace-conditioned) have no resource ARNs.")
        e = nag_env(self)
        logs_arn = f"arn:{e['partition']}:logs:{e['region']}:{e['account']}:log-group:/aws/sagemaker/Endpoints/{self.endpoint_name}"
        acknowledge(self.role, id=f"AwsSolutions-IAM5[Resource::{logs_arn}:*]",
            reason="SageMaker names the endpoint's log streams itself; scoped to this endpoint's group.")
        acknowledge(self.role, id=f"AwsSolutions-IAM5[Resource::{logs_arn}:log-stream:*]",
            reason="SageMaker names the endpoint's log streams itself; scoped to this endpoint's group.")
        for action in ("Action::kms:GenerateDataKey*", "Action::kms:ReEncrypt*"):
            acknowledge(self.role, id=f"AwsSolutions-IAM5[{action}]",
                reason="CDK's grant_encrypt_decrypt on the one Cirrus key; the wildcard covers the data-key variants.")

        if settings.scale_to_zero:
            self._inference_component(settings)
        else:
            self._variant_autoscaling(settings)

    def _weights_check(self, settings: HeavyEndpointSettings, artifacts: s3.IBucket,
                       log_group: logs.ILogGroup) -> CustomResource:
        """A deploy-time check (model_export/weights_check.py) that the copy under model_s3_prefix is the
        one the stage pins: its manifest's sha256, no file missing or extra, each object's stored SHA-256.
        CloudFormation runs it before it creates the model and fails the deploy when the copy differs;
        it runs again whenever the prefix or the pin changes."""
        role = iam.Role(self, "WeightsCheckRole", assumed_by=iam.ServicePrincipal("lambda.amazonaws.com"),
                        description="Cirrus deploy-time check of the GPU model copy")
        log_group.grant_write(role)
        grant_prefix(artifacts, role, settings.model_s3_prefix, "read")
        fn = lambda_.Function(
            self, "WeightsCheck", description="Cirrus: check the GPU model copy against its recorded sha256s",
            runtime=lambda_.Runtime.PYTHON_3_13, handler="index.handler",
            code=lambda_.Code.from_inline(WEIGHTS_CHECK_SOURCE.read_text()),
            timeout=Duration.minutes(5), memory_size=256, role=role, log_group=log_group)
        check = CustomResource(self, "WeightsChecked", service_token=fn.function_arn,
                               resource_type="Custom::CirrusWeightsCheck",
                               properties={"Bucket": artifacts.bucket_name, "Prefix": settings.model_s3_prefix,
                                           "ManifestSha256": settings.model_manifest_sha256})
        check.node.add_dependency(role)
        stack = Stack.of(self)
        bucket_lid = stack.resolve(stack.get_logical_id(artifacts.node.default_child))
        deploy_only = "Runs only while CloudFormation deploys the stack (a custom resource), never per request"
        acknowledge(role, id=f"AwsSolutions-IAM5[Resource::<{bucket_lid}.Arn>/{settings.model_s3_prefix}*]",
                    reason="Reads the files of this one model version to check them; listing is "
                           "s3:prefix-conditioned.")
        for rule, reason in {
            "AwsSolutions-L1": f"{deploy_only}; pinned to the runtime its inline code is written for.",
            "Serverless-LambdaLatestVersion": f"{deploy_only}; pinned to the runtime its inline code is written for.",
            "Serverless-LambdaDLQ": f"{deploy_only}; CloudFormation invokes it and reports a failure itself.",
            "Serverless-LambdaTracing": f"{deploy_only}; nothing to trace at request time.",
        }.items():
            acknowledge(fn, id=rule, reason=reason)
        return check

    def _image(self, settings: HeavyEndpointSettings) -> tuple[str, str, str]:
        """(image URI, registry account, repository name); the account is a per-region mapping."""
        if settings.image_uri:
            host, _, path = settings.image_uri.partition("/")
            return settings.image_uri, host.split(".", 1)[0], path.split(":", 1)[0]
        stack = Stack.of(self)
        mapping = CfnMapping(self, "DlcAccounts", mapping={r: {"account": a} for r, a in DLC_ACCOUNTS.items()})
        account = mapping.find_in_map(stack.region, "account")
        image = IMAGES[settings.image]
        return f"{account}.dkr.ecr.{stack.region}.{stack.url_suffix}/{image}", account, image.split(":", 1)[0]

    def _inference_component(self, settings: HeavyEndpointSettings) -> None:
        self.inference_component = sagemaker.CfnInferenceComponent(
            self, "InferenceComponent",
            inference_component_name=self.inference_component_name,
            endpoint_name=self.endpoint.attr_endpoint_name,
            variant_name=VARIANT,
            specification=sagemaker.CfnInferenceComponent.InferenceComponentSpecificationProperty(
                model_name=self.model.attr_model_name,
                compute_resource_requirements=sagemaker.CfnInferenceComponent.InferenceComponentComputeResourceRequirementsProperty(
                    number_of_accelerator_devices_required=settings.num_gpus,
                    min_memory_required_in_mb=COPY_MEMORY_MB),
                startup_parameters=sagemaker.CfnInferenceComponent.InferenceComponentStartupParametersProperty(
                    container_startup_health_check_timeout_in_seconds=settings.startup_health_check_timeout_s,
                    model_data_download_timeout_in_seconds=settings.startup_health_check_timeout_s)),
            runtime_config=sagemaker.CfnInferenceComponent.InferenceComponentRuntimeConfigProperty(
                copy_count=max(settings.min_capacity, 1)),
        )
        target = scalable_target(
            self, "CopyScaling",
            resource_id=f"inference-component/{self.inference_component_name}",
            dimension="sagemaker:inference-component:DesiredCopyCount",
            min_capacity=settings.min_capacity, max_capacity=settings.max_capacity,
            after=self.inference_component)
        _track_invocations(target, "InvocationsPerCopy", settings,
                           appscaling.PredefinedMetric.SAGEMAKER_INFERENCE_COMPONENT_INVOCATIONS_PER_COPY)
        # Requests that found no copy to serve them trigger the first one.
        scale_out_from_zero(target, cloudwatch.Metric(
            namespace="AWS/SageMaker", metric_name="NoCapacityInvocationFailures",
            dimensions_map={"InferenceComponentName": self.inference_component_name},
            statistic="Maximum", period=Duration.minutes(1)))

    def _variant_autoscaling(self, settings: HeavyEndpointSettings) -> None:
        target = scalable_target(
            self, "InstanceScaling",
            resource_id=f"endpoint/{self.endpoint_name}/variant/{VARIANT}",
            dimension="sagemaker:variant:DesiredInstanceCount",
            min_capacity=settings.min_capacity, max_capacity=settings.max_capacity,
            after=self.endpoint)
        _track_invocations(target, "InvocationsPerInstance", settings,
                           appscaling.PredefinedMetric.SAGEMAKER_VARIANT_INVOCATIONS_PER_INSTANCE)

    def grant_invoke(self, grantee: iam.IGrantable) -> None:
        """InvokeEndpoint and InvokeEndpointWithResponseStream (``stream: true``) on this endpoint only
        (inference components are invoked through it).

        Async jobs go to the separate async endpoint (HeavyAsyncEndpoint.grant_invoke_async).
        """
        iam.Grant.add_to_principal(grantee=grantee, actions=["sagemaker:InvokeEndpoint",
                                                             "sagemaker:InvokeEndpointWithResponseStream"],
                                   resource_arns=[self.endpoint_arn])

    def invocation_metric(self, name: str, statistic: str = "Sum") -> cloudwatch.Metric:
        dims = ({"InferenceComponentName": self.inference_component_name} if self.inference_component_name
                else {"EndpointName": self.endpoint_name, "VariantName": VARIANT})
        return cloudwatch.Metric(namespace="AWS/SageMaker", metric_name=name, dimensions_map=dims,
                                 statistic=statistic, period=Duration.minutes(5))


def _track_invocations(target: appscaling.ScalableTarget, id: str, settings: HeavyEndpointSettings,
                       metric: appscaling.PredefinedMetric) -> None:
    """Target tracking on invocations per copy/instance: the stage's target and scale-in cooldown,
    one minute to scale out (a burst should not wait)."""
    target.scale_to_track_metric(id, target_value=settings.target_invocations_per_copy, predefined_metric=metric,
                                 scale_in_cooldown=Duration.seconds(settings.scale_in_cooldown_s),
                                 scale_out_cooldown=Duration.seconds(60))
