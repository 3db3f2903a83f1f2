"""One real CDK synth per test session (dev + prod from cdk.json, plus a classic-endpoint test stage)."""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

os.environ.setdefault("JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION", "20")

# The synthesized stages, the test-only stage among them (tests/infra/template_support.py).
from template_support import CITEST_STAGE, STAGES  # noqa: E402


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
