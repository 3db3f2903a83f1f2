"""DynamoDB access for the functions: the container's one client plus the few operations Cirrus uses.

Items are plain low-level attribute maps; callers own their (de)serialisation so the adapter
stays small and obvious.
"""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from functions.core.aws.base import client


def get_item(table: str, key: dict[str, Any], *, consistent: bool = False, ddb: Any = None) -> dict | None:
    resp = (ddb or client("dynamodb")).get_item(TableName=table, Key=key, ConsistentRead=consistent)
    return resp.get("Item")


def put_item(table: str, item: dict[str, Any], *, condition: str | None = None, ddb: Any = None) -> None:
    kwargs: dict[str, Any] = {"TableName": table, "Item": item}
    if condition:
        kwargs["ConditionExpression"] = condition
    (ddb or client("dynamodb")).put_item(**kwargs)


def update_item(table: str, key: dict[str, Any], *, update: str, values: dict[str, Any],
                condition: str | None = None, names: dict[str, str] | None = None,
                ddb: Any = None) -> dict:
    kwargs: dict[str, Any] = {"TableName": table, "Key": key, "UpdateExpression": update,
                              "ExpressionAttributeValues": values, "ReturnValues": "ALL_NEW"}
    if condition:
        kwargs["ConditionExpression"] = condition
    if names:
        kwargs["ExpressionAttributeNames"] = names
    return (ddb or client("dynamodb")).update_item(**kwargs).get("Attributes", {})


def scan(table: str, *, projection: str | None = None, names: dict[str, str] | None = None,
         ddb: Any = None) -> Iterator[dict]:
    kwargs: dict[str, Any] = {"TableName": table}
    if projection:
        kwargs["ProjectionExpression"] = projection
    if names:
        kwargs["ExpressionAttributeNames"] = names
    for page in (ddb or client("dynamodb")).get_paginator("scan").paginate(**kwargs):
        yield from page.get("Items", [])
