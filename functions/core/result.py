"""What a use case returns: the response body and the model version that produced it (no HTTP)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class Result:
    body: dict[str, Any]
    model_version: str | None = None  # the bundle version that answered; None when no model ran
