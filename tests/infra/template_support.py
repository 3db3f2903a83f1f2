"""Small readers for synthesized CloudFormation templates, shared by the infra tests."""
from __future__ import annotations


def as_list(v) -> list:
    """IAM fields take one value or a list: always a list."""
    return v if isinstance(v, list) else [v]


def ref_id(value) -> str | None:
    """The logical id a ``Ref`` or ``Fn::GetAtt`` points at (None for anything else)."""
    if isinstance(value, dict):
        if "Ref" in value:
            return value["Ref"]
        if "Fn::GetAtt" in value:
            return value["Fn::GetAtt"][0]
    return None
