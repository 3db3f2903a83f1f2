"""Typed export configuration: quantization presets and gate thresholds, validated where they enter."""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Literal

from model_export.errors import ExportError

Arch = Literal["x86_64", "arm64"]
ARCHES: tuple[str, ...] = ("x86_64", "arm64")
WEIGHT_TYPES: tuple[str, ...] = ("s8", "u8")


Method = Literal["dynamic-int8", "weight-only"]
METHODS: tuple[str, ...] = ("dynamic-int8", "weight-only")


@dataclass(frozen=True)
class WeightOnlyConfig:
    """Block-wise weight-only quantization (onnxruntime ``MatMulNBits``) for decoders.

    Weights are stored in ``bits`` with one scale (+ zero point unless ``symmetric``) per
    ``block_size`` inputs; activations stay fp32, so the per-batch activation ranges that
    hurt dynamic int8 on decoders do not arise. ``accuracy_level=4`` lets the kernels compute
    with int8 activations (faster on AVX2/VNNI), ``None``/0 in fp32. ``head_bits`` quantizes the
    (untied) LM head, 0 leaves it fp32; ``embedding_bits`` 4 (GatherBlockQuantized), 8 (int8
    rows) or 0 (fp32) for the token embedding. docs/quantization.md has the measurements.
    """

    bits: int = 4
    block_size: int = 32
    symmetric: bool = False
    accuracy_level: int | None = 4
    head_bits: int = 4
    embedding_bits: int = 4
    embedding_block_size: int = 32
    exclude: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for name, value, allowed in (("bits", self.bits, (4, 8)), ("head_bits", self.head_bits, (0, 4, 8)),
                                     ("embedding_bits", self.embedding_bits, (0, 4, 8))):
            if value not in allowed:
                raise ExportError(f"weight-only {name}={value} is not one of {allowed}")
        for name, value in (("block_size", self.block_size), ("embedding_block_size", self.embedding_block_size)):
            if value < 16 or value & (value - 1):
                raise ExportError(f"weight-only {name}={value} must be a power of two >= 16")
        if self.accuracy_level not in (None, 0, 1, 2, 3, 4):
            raise ExportError(f"accuracy_level={self.accuracy_level} is not one of 0-4")

    def describe(self) -> str:
        acc = f"accuracy_level={self.accuracy_level}" if self.accuracy_level else "fp32 compute"
        return (f"int{self.bits} block {self.block_size} {'sym' if self.symmetric else 'asym'}, {acc}, "
                f"head {'int%d' % self.head_bits if self.head_bits else 'fp32'}, "
                f"embedding {'int%d' % self.embedding_bits if self.embedding_bits else 'fp32'}")


@dataclass(frozen=True)
class QuantizeConfig:
    """How the shipped file is quantized. ``enabled=False`` ships fp32.

    ``exclude`` holds regexes (``re.search``) of ONNX node names left in fp32 (see docs/quantization.md for why
    the defaults per task exclude what they do); ``operators`` limits the op types quantized.
    For ``dynamic-int8``: ``weights`` is the weight type (activations are always u8, quantized per
    call); ``reduce_range`` stores s8 weights in 7 bits (|w| <= 64), which makes every x86 and arm64
    kernel path compute the same exact integer sums (docs/quantization.md: no VPMADDUBSW
    saturation on AVX2 without VNNI); ``fuse`` applies onnxruntime's transformer fusions first.
    """

    enabled: bool = True
    arch: Arch = "x86_64"
    method: Method = "dynamic-int8"
    weight_only: WeightOnlyConfig | None = None  # method="weight-only" (default WeightOnlyConfig())
    per_channel: bool = True
    fp32_activation_matmul: bool = True
    exclude: tuple[str, ...] = ()
    operators: tuple[str, ...] | None = None
    weights: Literal["s8", "u8"] = "s8"
    reduce_range: bool = True
    fuse: bool = False

    def __post_init__(self) -> None:
        if self.arch not in ARCHES:
            raise ExportError(f"unknown arch {self.arch!r} (choose from {', '.join(ARCHES)})")
        if self.weights not in WEIGHT_TYPES:
            raise ExportError(f"unknown weight type {self.weights!r} (choose from {', '.join(WEIGHT_TYPES)})")
        if self.method == "dynamic-int8" and self.weights == "s8" and not self.reduce_range and self.arch == "x86_64":
            # Full-range s8 weights can saturate VPMADDUBSW's int16 pair sums on AVX2 CPUs
            # without VNNI, which Lambda x86 may be: the gate would not hold there.
            raise ExportError("full-range s8 weights are not safe on x86_64 without VNNI; "
                              "keep reduce_range (7-bit) or use u8 weights")
        if self.method not in METHODS:
            raise ExportError(f"unknown quantization method {self.method!r} (choose from {', '.join(METHODS)})")
        if isinstance(self.weight_only, dict):  # read back from work.json
            object.__setattr__(self, "weight_only", WeightOnlyConfig(**{**self.weight_only, "exclude": tuple(
                self.weight_only.get("exclude", ()))}))
        if self.method == "weight-only" and self.weight_only is None:
            object.__setattr__(self, "weight_only", WeightOnlyConfig())

    @property
    def mode(self) -> str:
        """The manifest's quantization mode."""
        return self.method if self.enabled else "none"

    @property
    def preset(self) -> str | None:
        """Activation x weight integer types of dynamic int8, as the manifest records them (``u8s8-7bit``)."""
        if not self.enabled or self.method != "dynamic-int8":
            return None
        return f"u8{self.weights}" + ("-7bit" if self.reduce_range else "") + ("-fused" if self.fuse else "")

    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True, default=str).encode()).hexdigest()


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
        config = asdict(self)
        quant = config["quantize"]
        if quant["method"] == "dynamic-int8" and quant["weight_only"] is None:
            # Fields added with weight-only quantization, at their defaults, leave the bytes of a
            # dynamic-int8 bundle unchanged: so they leave its cache key unchanged too.
            del quant["method"], quant["weight_only"]
        blob = json.dumps({"config": config, "extra": extra or {}}, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()
