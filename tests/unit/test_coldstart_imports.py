"""Cold-start import discipline: what a fresh API container imports before its first AWS call."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

PROBE = r"""
import json, sys
from functions.handlers.api import handler
from functions.core.observability import tracer
print(json.dumps({"modules": sorted(m for m in sys.modules if m.split(".")[0] in ("boto3", "aws_xray_sdk")
                                    or m in ("botocore.config", "aws_xray_sdk.core")),
                  "disabled": bool(tracer.disabled), "provider": type(tracer.provider).__module__,
                  "patch_modules": tracer._config["patch_modules"]}))
"""


def _probe(**env: str) -> dict:
    clean = {k: v for k, v in os.environ.items()
             if not k.startswith(("POWERTOOLS_", "LAMBDA_TASK_ROOT", "AWS_SAM_LOCAL", "CIRRUS_"))}
    proc = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**clean, "PYTHONPATH": str(ROOT), "POWERTOOLS_METRICS_DISABLED": "true", **env})
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_api_import_with_tracing_off_loads_neither_boto3_nor_the_xray_recorder():
    found = _probe(POWERTOOLS_TRACE_DISABLED="true")
    assert found["disabled"] is True
    # aws_xray_sdk itself (its tiny sdk_config) is touched by Powertools to switch the SDK off.
    assert not [m for m in found["modules"] if m not in ("aws_xray_sdk", "aws_xray_sdk.sdk_config")], found["modules"]
    assert not found["provider"].startswith("aws_xray_sdk")


def test_api_import_in_lambda_with_tracing_on_uses_xray_and_patches_botocore_only():
    found = _probe(LAMBDA_TASK_ROOT=str(ROOT), AWS_XRAY_CONTEXT_MISSING="IGNORE_ERROR")
    assert found["disabled"] is False
    assert found["provider"].startswith("aws_xray_sdk")
    assert list(found["patch_modules"]) == ["botocore"]
    assert "aws_xray_sdk.core" in found["modules"]
