"""Tables: the DynamoDB tables of ``RESOURCES.tables`` (customer-managed KMS, PITR, TTL, indexes)."""
from __future__ import annotations

from aws_cdk import RemovalPolicy
from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_kms as kms
from constructs import Construct

from infra.resources import RESOURCES, Key


def _attr(key: Key) -> dynamodb.Attribute:
    kind = {"S": dynamodb.AttributeType.STRING, "N": dynamodb.AttributeType.NUMBER}[key.type]
    return dynamodb.Attribute(name=key.name, type=kind)


class Tables(Construct):
    """One on-demand table per ``TableSpec``: the same keys/TTL/indexes the local system creates."""

    def __init__(self, scope: Construct, id: str, *, key: kms.IKey, retain: bool) -> None:
        super().__init__(scope, id)
        self.tables: dict[str, dynamodb.Table] = {}
        for spec in RESOURCES.tables:
            table = dynamodb.Table(
                self, spec.id,
                partition_key=_attr(spec.partition),
                sort_key=_attr(spec.sort) if spec.sort else None,
                billing_mode=dynamodb.BillingMode.PAY_PER_REQUEST,
                encryption=dynamodb.TableEncryption.CUSTOMER_MANAGED,
                encryption_key=key,
                point_in_time_recovery_specification=dynamodb.PointInTimeRecoverySpecification(
                    point_in_time_recovery_enabled=True),
                time_to_live_attribute=spec.ttl_attribute,
                deletion_protection=retain,
                removal_policy=RemovalPolicy.RETAIN if retain else RemovalPolicy.DESTROY,
            )
            for index in spec.indexes:
                table.add_global_secondary_index(
                    index_name=index.name, partition_key=_attr(index.partition),
                    sort_key=_attr(index.sort) if index.sort else None)
            self.tables[spec.id] = table

    def __getitem__(self, spec_id: str) -> dynamodb.Table:
        return self.tables[spec_id]
