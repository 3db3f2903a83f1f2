"""Powertools Logger, Tracer and Metrics: one instance of each per container, shared by all modules."""
from __future__ import annotations

from aws_lambda_powertools import Logger, Metrics, Tracer

SERVICE = "cirrus"
NAMESPACE = "Cirrus"

# POWERTOOLS_* environment variables (log level, sampling, disabling tracing) still apply;
# the service and namespace are fixed so every function reports under the same names.
logger = Logger(service=SERVICE)
tracer = Tracer(service=SERVICE)
metrics = Metrics(namespace=NAMESPACE, service=SERVICE)
