"""API: the REST API (bearer-key authorizer on every method, validation, throttling, logs, tracing, WAF)."""
from __future__ import annotations

import json

from aws_cdk import Duration, Stack
from aws_cdk import aws_apigateway as apigw
from aws_cdk import aws_kms as kms
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_wafv2 as wafv2
from constructs import Construct

from infra.constructs import acknowledge
from infra.constructs.functions import encrypted_log_group
# Routes and gateway responses are plain data, shared with the local gateway (local/gateway.py).
from infra.resources import BODYLESS_POSTS, DOCS_ROUTES, GATEWAY_RESPONSES, ROUTES, STREAMED_ROUTES
from infra.settings import StageSettings
from functions.core.contract import CORS_MAX_AGE_S, CORS_METHODS

AUTHORIZER_CACHE_TTL = Duration.seconds(60)   # a revoked key stops working within this time


class Api(Construct):
    """REST API in front of the api function (buffered routes) and the streaming function
    (``STREAMED_ROUTES``); the authorizer function guards every method."""

    def __init__(self, scope: Construct, id: str, *, stage: StageSettings, key: kms.IKey,
                 handler: lambda_.IFunction, stream_handler: lambda_.IFunction,
                 authorizer: lambda_.IFunction) -> None:
        super().__init__(scope, id)
        self.access_logs = encrypted_log_group(self, "AccessLogs", key=key, stage=stage)
        self.rest_api = apigw.RestApi(
            self, "RestApi",
            rest_api_name=f"cirrus-{stage.name}",
            description="Cirrus: OpenAI-compatible embeddings, classification, generation and jobs",
            endpoint_types=[apigw.EndpointType.REGIONAL],
            cloud_watch_role=True,
            # Per-key throttling and quotas: the TOKEN authorizer answers the key's usageIdentifierKey
            # (functions/core/auth.py), API Gateway holds it to its usage plan (ops/usage_plans.py).
            api_key_source_type=apigw.ApiKeySourceType.AUTHORIZER,
            deploy_options=apigw.StageOptions(
                stage_name=stage.name,
                throttling_rate_limit=stage.api.throttle_rate_limit,
                throttling_burst_limit=stage.api.throttle_burst_limit,
                tracing_enabled=True,
                metrics_enabled=True,
                logging_level=apigw.MethodLoggingLevel.ERROR,
                data_trace_enabled=False,   # would log request bodies (user text) and headers (keys)
                access_log_destination=apigw.LogGroupLogDestination(self.access_logs),
                access_log_format=apigw.AccessLogFormat.json_with_standard_fields(
                    caller=False, http_method=True, ip=True, protocol=True, request_time=True,
                    resource_path=True, response_length=True, status=True, user=False),
            ),
        )
        self.authorizer = apigw.TokenAuthorizer(
            self, "BearerAuthorizer", handler=authorizer,
            identity_source=apigw.IdentitySource.header("Authorization"),
            results_cache_ttl=AUTHORIZER_CACHE_TTL,
        )
        validator = self.rest_api.add_request_validator(
            "Validator", validate_request_body=True, validate_request_parameters=True)
        json_object = self.rest_api.add_model(
            "JsonObject", content_type="application/json", model_name="JsonObject",
            schema=apigw.JsonSchema(schema=apigw.JsonSchemaVersion.DRAFT4, type=apigw.JsonSchemaType.OBJECT))
        integration = apigw.LambdaIntegration(handler, proxy=True)
        # STREAM transfer mode: API Gateway calls InvokeWithResponseStream and passes the bytes on as the
        # function writes them; the 29 s integration limit becomes the function's own timeout (<= 15 min;
        # API Gateway also closes a stream idle for 5 min on a regional endpoint).
        streaming = apigw.LambdaIntegration(
            stream_handler, proxy=True, response_transfer_mode=apigw.ResponseTransferMode.STREAM,
            timeout=Duration.seconds(stage.functions.generation.timeout_s))
        for verb, path in ROUTES:
            resource = self.rest_api.root.resource_for_path(path)
            resource.add_method(
                verb, streaming if (verb, path) in STREAMED_ROUTES else integration,
                authorizer=self.authorizer,
                authorization_type=apigw.AuthorizationType.CUSTOM,
                api_key_required=True,
                request_validator=validator,
                request_models=({"application/json": json_object}
                                if verb == "POST" and path not in BODYLESS_POSTS else None),
            )
        cors = stage.api.cors
        if cors.enabled:
            self._preflight(cors, {path for _, path in ROUTES})
        for verb, path in DOCS_ROUTES if stage.api.docs else ():
            method = self.rest_api.root.resource_for_path(path).add_method(
                verb, integration, authorization_type=apigw.AuthorizationType.NONE)
            acknowledge(method, id="AwsSolutions-APIG4",
                        reason="the API description and its Swagger UI page are public in stages that "
                               "enable api.docs; every API method keeps the bearer-key authorizer")
            acknowledge(method, id="AwsSolutions-COG4", reason="public documentation page, no caller identity")
        api_cfg = stage.api
        # The stage's default plan: every key created without its own limits joins it.
        self.usage_plan = self.rest_api.add_usage_plan(
            "DefaultUsagePlan", name=f"cirrus-{stage.name}-default",
            description="per-key limits of keys created without their own (keys create --rate/--burst/--quota)",
            throttle=apigw.ThrottleSettings(rate_limit=api_cfg.key_rate_limit, burst_limit=api_cfg.key_burst_limit),
            quota=apigw.QuotaSettings(limit=api_cfg.key_quota, period=apigw.Period[api_cfg.key_quota_period])
            if api_cfg.key_quota else None,
            api_stages=[apigw.UsagePlanPerApiStage(api=self.rest_api, stage=self.rest_api.deployment_stage)])
        for name, response in GATEWAY_RESPONSES.items():
            self.rest_api.add_gateway_response(
                f"Gw{name}", type=apigw.ResponseType.of(name),
                status_code=None if response.status is None else str(response.status),
                templates={"application/json": json.dumps(response.body())},
                # Gateway response header values are mapping expressions: literals in single quotes.
                response_headers={"Content-Type": "'application/json'",
                                  **{k: f"'{v}'" for k, v in response.headers.items()},
                                  # A page on an allowed origin can read why it was refused.
                                  **{k: "method.request.header.Origin" if v is None else f"'{v}'"
                                     for k, v in cors.error_headers().items()}})
        acknowledge(self.rest_api, id="AwsSolutions-COG4",
            reason="Clients are services holding API keys; a Lambda TOKEN authorizer checks salted key hashes.")
        acknowledge(self.rest_api, id="AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/AmazonAPIGatewayPushToCloudWatchLogs]",
            reason="The account-level role API Gateway needs to write execution logs; AWS maintains it.")
        if stage.api.waf:
            self.web_acl = self._waf(stage)
        else:
            self.web_acl = None
            acknowledge(self.rest_api.deployment_stage, id="AwsSolutions-APIG3",
                reason=f"WAF is switched off for stage {stage.name} in cdk.json (api.waf); prod turns it on.")

    def _preflight(self, cors, paths: set[str]) -> None:
        """OPTIONS on each route's resource, answered by API Gateway itself (a mock integration, no key):
        browsers send no Authorization header with a preflight."""
        for path in sorted(paths):
            resource = self.rest_api.root.resource_for_path(path)
            method = resource.add_cors_preflight(
                allow_origins=list(cors.origins), allow_headers=list(cors.allow_headers),
                allow_methods=list(CORS_METHODS), max_age=Duration.seconds(CORS_MAX_AGE_S), status_code=204)
            acknowledge(method, id="AwsSolutions-APIG4",
                        reason="CORS preflight (OPTIONS): browsers send it without credentials; API Gateway "
                               "answers it itself from a mock integration and no function runs")
            acknowledge(method, id="AwsSolutions-COG4", reason="CORS preflight, answered without a caller identity")

    @property
    def url(self) -> str:
        return self.rest_api.url

    def _waf(self, stage: StageSettings) -> wafv2.CfnWebACL:
        def managed(name: str, priority: int, overrides: tuple[str, ...] = ()) -> wafv2.CfnWebACL.RuleProperty:
            return wafv2.CfnWebACL.RuleProperty(
                name=name, priority=priority,
                override_action=wafv2.CfnWebACL.OverrideActionProperty(none={}),
                statement=wafv2.CfnWebACL.StatementProperty(
                    managed_rule_group_statement=wafv2.CfnWebACL.ManagedRuleGroupStatementProperty(
                        vendor_name="AWS", name=name,
                        rule_action_overrides=[wafv2.CfnWebACL.RuleActionOverrideProperty(
                            name=o, action_to_use=wafv2.CfnWebACL.RuleActionProperty(count={}))
                            for o in overrides] or None)),
                visibility_config=wafv2.CfnWebACL.VisibilityConfigProperty(
                    cloud_watch_metrics_enabled=True, metric_name=name, sampled_requests_enabled=True))

        acl = wafv2.CfnWebACL(
            self, "WebAcl",
            scope="REGIONAL",
            default_action=wafv2.CfnWebACL.DefaultActionProperty(allow={}),
            visibility_config=wafv2.CfnWebACL.VisibilityConfigProperty(
                cloud_watch_metrics_enabled=True, metric_name=f"cirrus-{stage.name}", sampled_requests_enabled=True),
            rules=[
                wafv2.CfnWebACL.RuleProperty(
                    name="rate-per-ip", priority=0,
                    action=wafv2.CfnWebACL.RuleActionProperty(block={}),
                    statement=wafv2.CfnWebACL.StatementProperty(
                        rate_based_statement=wafv2.CfnWebACL.RateBasedStatementProperty(
                            limit=stage.api.waf_rate_limit, aggregate_key_type="IP")),
                    visibility_config=wafv2.CfnWebACL.VisibilityConfigProperty(
                        cloud_watch_metrics_enabled=True, metric_name="rate-per-ip", sampled_requests_enabled=True)),
                # Embedding/batch requests carry large bodies by design: count, don't block, the 8 KB body rule.
                managed("AWSManagedRulesCommonRuleSet", 1, ("SizeRestrictions_BODY",)),
                managed("AWSManagedRulesKnownBadInputsRuleSet", 2),
            ],
        )
        wafv2.CfnWebACLAssociation(self, "WebAclAssociation", web_acl_arn=acl.attr_arn,
                                   resource_arn=self.rest_api.deployment_stage.stage_arn)
        return acl
