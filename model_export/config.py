"""Typed export configuration: quantization presets and gate thresholds, validated where they enter."""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Literal

from model_export.errors import ExportError

Arch = Literal["x86_64", "arm64"]
ARCHES: tuple[str, ...] = ("x86_64", "arm64")


@dataclass(frozen=True)
class QuantizeConfig:
    """How the shipped file is quantized. ``enabled=False`` ships fp32.

    ``exclude`` holds regexes (``re.search``) of ONNX node names left in fp32 (see docs/quantization.md for why
    the defaults per task exclude what they do); ``operators`` limits the op types quantized.
    """

    enabled: bool = True
    arch: Arch = "x86_64"
    per_channel: bool = True
    fp32_activation_matmul: bool = True
    exclude: tuple[str, ...] = ()
    operators: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.arch not in ARCHES:
            raise ExportError(f"unknown arch {self.arch!r} (choose from {', '.join(ARCHES)})")

    @property
    def preset(self) -> str | None:
        if not self.enabled:
            return None
        # Lambda x86 guarantees AVX2 but not VNNI: the avx2 preset (u8/u8) avoids the VPMADDUBSW
        # saturation that u8/s8 hits without VNNI. arm64 uses u8/s8 (fast on Graviton).
        return "avx2" if self.arch == "x86_64" else "arm64"


@dataclass(frozen=True)
class Threshold:
    """One gate rule: ``metric >= value`` (``higher=True``) or ``metric <= value``."""

    value: float
    higher: bool = True

    def ok(self, measured: float) -> bool:
        return measured >= self.value if self.higher else measured <= self.value


def parse_threshold_overrides(pairs: list[str] | None, defaults: dict[str, Threshold]) -> dict[str, Threshold]:
    """Apply ``metric=value`` overrides (CLI ``--threshold``) to a task's default thresholds."""
    out = dict(defaults)
    for pair in pairs or []:
        name, sep, raw = pair.partition("=")
        if not sep or name not in defaults:
            raise ExportError(f"bad --threshold {pair!r}: expected one of "
                              f"{', '.join(sorted(defaults))} as NAME=VALUE")
        try:
            value = float(raw)
        except ValueError:
            raise ExportError(f"bad --threshold {pair!r}: {raw!r} is not a number") from None
        out[name] = Threshold(value, defaults[name].higher)
    return out


@dataclass(frozen=True)
class ExportConfig:
    """Everything that decides the bytes of a bundle (the cache key of a default bundle)."""

    source: str
    task: str
    name: str
    max_length: int | None = None  # None: the task reads it from the model
    quantize: QuantizeConfig = field(default_factory=QuantizeConfig)
    opset: int | None = None
    source_id: str | None = None  # provenance shown in the manifest when ``source`` is a build folder

    def fingerprint(self, extra: dict | None = None) -> str:
        blob = json.dumps({"config": asdict(self), "extra": extra or {}}, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()
