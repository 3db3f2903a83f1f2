"""Logger, Tracer and Metrics report under the service the environment names (one per function in AWS)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

PROBE = ("import json; from functions.core.observability import logger, metrics, tracer; "
         "print(json.dumps([logger.service, tracer.service, metrics.service, metrics.namespace]))")


def _names(**env: str) -> list[str]:
    base = {k: v for k, v in os.environ.items() if k not in ("POWERTOOLS_SERVICE_NAME", "POWERTOOLS_METRICS_NAMESPACE")}
    out = subprocess.run([sys.executable, "-c", PROBE], env={**base, "POWERTOOLS_TRACE_DISABLED": "true", **env},
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def test_service_and_namespace_come_from_the_powertools_variables_the_stack_sets():
    assert _names(POWERTOOLS_SERVICE_NAME="cirrus-api", POWERTOOLS_METRICS_NAMESPACE="Cirrus") == \
        ["cirrus-api", "cirrus-api", "cirrus-api", "Cirrus"]


def test_without_them_everything_reports_as_cirrus():
    assert _names() == ["cirrus", "cirrus", "cirrus", "Cirrus"]
