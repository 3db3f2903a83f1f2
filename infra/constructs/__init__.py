"""One CDK construct per logical unit of Cirrus; infra.stack composes them and grants access."""

from aws_cdk import Acknowledgment, Validations
from constructs import IConstruct


def acknowledge(scope: IConstruct, *, id: str, reason: str) -> None:
    """Acknowledge one cdk-nag finding on ``scope`` (and its children) with the reason it is fine."""
    if not reason.strip():
        raise ValueError(f"acknowledging {id} needs a reason")
    Validations.of(scope).acknowledge(Acknowledgment(id=id, reason=reason))
