"""Small readers for synthesized CloudFormation templates, and the test-only stage, shared by the infra tests."""
from __future__ import annotations

# A stage only tests use: heavy endpoint on an EBS-backed GPU (takes the KMS key) as a classic,
# always-on variant serving its model from the artifacts bucket (network-isolated), so both endpoint
# modes, both encryption paths and both model sources (prod: a pinned hub revision) are synthesized once.
CITEST_MODEL_PREFIX = "models/qwen2.5-1.5b-instruct/2026-01-01/"
CITEST_MANIFEST_SHA256 = "5" * 64
CITEST_STAGE = {
    "architecture": "arm64",
    "upload_bundles": False,
    "api": {"waf": False},
    "heavy": {"enabled": True, "instance_type": "ml.p3.2xlarge", "image": "djl-lmi",
              "scale_to_zero": False, "min_capacity": 1, "max_capacity": 3,
              "model_s3_prefix": CITEST_MODEL_PREFIX, "model_manifest_sha256": CITEST_MANIFEST_SHA256},
}
STAGES = ("dev", "prod", "citest")


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
