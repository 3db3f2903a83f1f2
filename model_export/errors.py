"""Exporter errors: each one is a single line for the CLI and a non-zero exit code."""
from __future__ import annotations


class ExportError(Exception):
    """A user-facing failure of an export stage (bad input, missing files, unreachable store)."""

    exit_code = 1


class GateFailed(ExportError):
    """The accuracy gate rejected the model that would ship."""

    exit_code = 3

    def __init__(self, message: str, metrics: dict[str, float] | None = None) -> None:
        super().__init__(message)
        self.metrics = metrics or {}


class PublishError(ExportError):
    """Publishing, rollback or listing against S3 failed."""

    exit_code = 4
