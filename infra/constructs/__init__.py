"""One CDK construct per logical unit of Cirrus; infra.stack composes them and grants access."""

from aws_cdk import Acknowledgment, Validations
from constructs import IConstruct


def acknowledge(scope: IConstruct, *, id: str, reason: str) -> None:
    """Acknowledge one cdk-nag finding on ``scope`` (and its children) with the reason it is fine."""
    if not reason.strip():
        raise ValueError(f"acknowledging {id} needs a reason")
    Validations.of(scope).acknowledge(Acknowledgment(id=id, reason=reason))


def nag_env(scope: IConstruct) -> dict[str, str]:
    """Partition/region/account as cdk-nag spells them in finding ids: the literal value when the
    stack's environment is concrete (e.g. under the CLI), else the pseudo-parameter placeholder."""
    from aws_cdk import Stack, Token

    stack = Stack.of(scope)
    def show(value: str, placeholder: str) -> str:
        return placeholder if Token.is_unresolved(value) else value
    return {"partition": show(stack.partition, "<AWS::Partition>"), "region": show(stack.region, "<AWS::Region>"),
            "account": show(stack.account, "<AWS::AccountId>")}
