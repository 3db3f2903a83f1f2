"""One real CDK synth per test session (dev + prod from cdk.json, plus a classic-endpoint test stage)."""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

os.environ.setdefault("JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION", "20")

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


@dataclass
class Synth:
    outdir: Path
    seconds: float
    templates: dict[str, dict]          # stage name -> CloudFormation template
    metadata: dict[str, dict]           # stage name -> construct path -> metadata entries

    def resources(self, stage: str, rtype: str) -> dict[str, dict]:
        return {k: v for k, v in self.templates[stage]["Resources"].items() if v["Type"] == rtype}


@pytest.fixture(scope="session")
def synth(tmp_path_factory: pytest.TempPathFactory, bundles_dir: Path) -> Synth:
    """Synthesize the real app once: real constructs, real cdk-nag packs, the real default bundles
    (dev/prod upload them); Lambda code is the explicit placeholder asset (tests/CI only)."""
    from infra.app import PLACEHOLDER_ASSETS, build_app
    from infra.settings import STAGES_CONTEXT_KEY, read_context

    stages = dict(read_context()[STAGES_CONTEXT_KEY], citest=CITEST_STAGE)
    outdir = tmp_path_factory.mktemp("cdk.out")
    start = time.perf_counter()
    app = build_app(stages=list(STAGES), outdir=str(outdir),
                    context={STAGES_CONTEXT_KEY: stages, PLACEHOLDER_ASSETS: "true"})
    app.synth()   # raises ValidationFailed on any unacknowledged cdk-nag finding
    seconds = time.perf_counter() - start
    templates = {s: json.loads((outdir / f"Cirrus-{s}.template.json").read_text()) for s in STAGES}
    manifest = json.loads((outdir / "manifest.json").read_text())
    metadata = {s: json.loads((outdir / manifest["artifacts"][f"Cirrus-{s}"]["additionalMetadataFile"]).read_text())
                for s in STAGES}
    return Synth(outdir, seconds, templates, metadata)
