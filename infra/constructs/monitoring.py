"""Monitoring: alarms (API 5xx/p99/throttles, Lambda errors/throttles, DLQ depth, endpoint), one dashboard, SNS."""
from __future__ import annotations

from aws_cdk import Duration
from aws_cdk import aws_apigateway as apigw
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_cloudwatch_actions as actions
from aws_cdk import aws_kms as kms
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_sns as sns
from aws_cdk import aws_sns_subscriptions as subs
from aws_cdk import aws_sqs as sqs
from constructs import Construct

from infra.constructs.heavy_async import HeavyAsyncEndpoint
from infra.constructs.heavy_endpoint import HeavyEndpoint

API_P99_MS = 5_000
# A job still queued after this long: the endpoint is not starting or not keeping up.
ASYNC_OLDEST_REQUEST_S = 1_800


class Monitoring(Construct):
    """Every alarm notifies one KMS-encrypted topic; the dashboard shows the same metrics."""

    def __init__(self, scope: Construct, id: str, *, stage_name: str, key: kms.IKey, api: apigw.RestApi,
                 functions: dict[str, lambda_.Function], dlqs: dict[str, sqs.Queue],
                 heavy: HeavyEndpoint | None, alarm_email: str | None,
                 heavy_async: HeavyAsyncEndpoint | None = None) -> None:
        super().__init__(scope, id)
        self.topic = sns.Topic(self, "Alarms", display_name=f"Cirrus {stage_name} alarms",
                               master_key=key, enforce_ssl=True)
        if alarm_email:
            self.topic.add_subscription(subs.EmailSubscription(alarm_email))
        self.alarms: list[cloudwatch.Alarm] = []
        five = Duration.minutes(5)

        api_5xx = api.metric_server_error(period=five, statistic="Sum")
        api_p99 = api.metric_latency(period=five, statistic="p99")
        api_4xx = api.metric_client_error(period=five, statistic="Sum")
        self._alarm("Api5xx", api_5xx, threshold=5, desc="API returned 5xx responses")
        self._alarm("ApiLatencyP99", api_p99, threshold=API_P99_MS, desc=f"API p99 latency above {API_P99_MS} ms",
                    periods=3)
        rows: list[list[cloudwatch.IWidget]] = [[
            cloudwatch.GraphWidget(title="API requests / 4xx / 5xx", width=8,
                                   left=[api.metric_count(period=five, statistic="Sum"), api_4xx, api_5xx]),
            cloudwatch.GraphWidget(title="API latency p50 / p99 (ms)", width=8,
                                   left=[api.metric_latency(period=five, statistic="p50"), api_p99]),
        ]]
        fn_widgets: list[cloudwatch.IWidget] = []
        for name, fn in functions.items():
            errors = fn.metric_errors(period=five, statistic="Sum")
            throttles = fn.metric_throttles(period=five, statistic="Sum")
            self._alarm(f"{name}-errors", errors, threshold=1, desc=f"{name} function errors")
            self._alarm(f"{name}-throttles", throttles, threshold=1, desc=f"{name} function throttled")
            fn_widgets.append(cloudwatch.GraphWidget(
                title=f"{name}: errors, throttles, p99 duration", width=6, left=[errors, throttles],
                right=[fn.metric_duration(period=five, statistic="p99")]))
        rows.append(fn_widgets)
        dlq_metrics = []
        for name, dlq in dlqs.items():
            depth = dlq.metric_approximate_number_of_messages_visible(period=Duration.minutes(1), statistic="Maximum")
            self._alarm(f"{name}-dlq", depth, threshold=1, desc=f"messages in the {name} dead-letter queue")
            dlq_metrics.append(depth)
        rows.append([cloudwatch.GraphWidget(title="Dead-letter queues (messages)", width=8, left=dlq_metrics)])
        if heavy is not None:
            errs = heavy.invocation_metric("Invocation5XXErrors")
            latency = heavy.invocation_metric("ModelLatency", "p99")
            self._alarm("HeavyEndpoint5xx", errs, threshold=1, desc="heavy endpoint 5xx")
            self._alarm("HeavyEndpointLatencyP99", latency, threshold=60_000_000,  # microseconds
                        desc="heavy endpoint p99 model latency above 60 s", periods=3)
            rows.append([cloudwatch.GraphWidget(title="Heavy endpoint: 5xx, p99 model latency (us)", width=12,
                                                left=[errs], right=[latency])])
        if heavy_async is not None:
            failures = heavy_async.metric("InvocationFailures")
            oldest = heavy_async.metric("ApproximateAgeOfOldestRequest", "Maximum")
            self._alarm("HeavyAsyncFailures", failures, threshold=1, desc="async generation jobs failed")
            self._alarm("HeavyAsyncOldestRequest", oldest, threshold=ASYNC_OLDEST_REQUEST_S,
                        desc=f"an async generation job waited over {ASYNC_OLDEST_REQUEST_S} s", periods=2)
            rows.append([cloudwatch.GraphWidget(
                title="Heavy async endpoint: backlog, failures, oldest request (s)", width=12,
                left=[heavy_async.metric("ApproximateBacklogSize", "Maximum"), failures], right=[oldest])])
        self.dashboard = cloudwatch.Dashboard(self, "Dashboard", dashboard_name=f"cirrus-{stage_name}",
                                              widgets=rows)

    def _alarm(self, id: str, metric: cloudwatch.IMetric, *, threshold: float, desc: str, periods: int = 1) -> None:
        alarm = metric.create_alarm(
            self, id, threshold=threshold, evaluation_periods=periods, alarm_description=desc,
            comparison_operator=cloudwatch.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
            treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING)
        alarm.add_alarm_action(actions.SnsAction(self.topic))
        self.alarms.append(alarm)
