"""The bundle contract: manifest.json schema and file verification, shared by exporter and runtime.

A bundle is a folder holding ``model.onnx``, ``tokenizer.json`` (+ what it needs), ``config.json``
and ``manifest.json``. The runtime needs nothing but the folder to serve it.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from functions.core.errors import BundleError

MANIFEST_NAME = "manifest.json"
SCHEMA_VERSION = 1

Task = Literal["feature-extraction", "text-classification", "text-generation"]
Pooling = Literal["mean", "cls", "max", "none"]
Arch = Literal["x86_64", "arm64"]


class FileEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")
    sha256: str
    bytes: int


class Source(BaseModel):
    model_config = ConfigDict(extra="allow")
    id: str                      # hub id or local path the export started from
    revision: str | None = None  # hub revision when known
    content_sha256: str | None = None  # hash over the source weights/config when local


class Quantization(BaseModel):
    model_config = ConfigDict(extra="allow")
    # weight-only: block-wise MatMulNBits (decoders); its settings are in ``weight_only``
    mode: Literal["dynamic-int8", "static-int8", "weight-only", "none"] = "none"
    preset: str | None = None          # e.g. "avx2", "arm64"
    per_channel: bool | None = None
    nodes_excluded: list[str] = Field(default_factory=list)
    optimization_level: int | None = None
    weight_only: dict | None = None    # bits, block_size, accuracy_level, head_bits, embedding_bits ...


class Gate(BaseModel):
    model_config = ConfigDict(extra="allow")
    passed: bool
    forced: bool = False
    metrics: dict[str, float] = Field(default_factory=dict)
    thresholds: dict[str, float] = Field(default_factory=dict)
    eval_set: str | None = None  # name + sha256 of the evaluation set


class Manifest(BaseModel):
    """Everything the runtime needs to serve a bundle, and the provenance to trust it."""

    model_config = ConfigDict(extra="allow")
    schema_version: int = SCHEMA_VERSION
    name: str
    version: str
    task: Task
    source: Source
    max_length: int
    pooling: Pooling = "none"          # feature-extraction: how token states become one vector
    normalize: bool = False            # feature-extraction: L2-normalise after pooling
    # feature-extraction: smaller sizes the model was trained to be truncated to (Matryoshka);
    # empty: only the native size is served (OpenAI ``dimensions`` other than that is refused).
    matryoshka_dimensions: list[int] = Field(default_factory=list)
    output_name: str                   # graph output the runtime reads (e.g. last_hidden_state, logits)
    labels: list[str] = Field(default_factory=list)  # text-classification: index -> label
    quantization: Quantization = Field(default_factory=Quantization)
    arch: Arch = "x86_64"
    files: dict[str, FileEntry]
    gate: Gate | None = None
    tools: dict[str, str] = Field(default_factory=dict)
    created_at: str
    # text-generation only (filled by the generation exporter)
    generation: dict | None = None

    @classmethod
    def read(cls, bundle_dir: Path) -> "Manifest":
        path = Path(bundle_dir) / MANIFEST_NAME
        try:
            return cls.model_validate_json(path.read_bytes())
        except FileNotFoundError as exc:
            raise BundleError(f"bundle has no {MANIFEST_NAME}: {bundle_dir}") from exc
        except ValueError as exc:
            raise BundleError(f"bundle manifest is invalid: {exc.__class__.__name__}") from exc

    def write(self, bundle_dir: Path) -> Path:
        path = Path(bundle_dir) / MANIFEST_NAME
        path.write_text(json.dumps(self.model_dump(mode="json"), indent=2, sort_keys=True) + "\n")
        return path


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def file_entry(path: Path) -> FileEntry:
    return FileEntry(sha256=sha256_file(path), bytes=path.stat().st_size)


def verify_bundle(bundle_dir: Path, manifest: Manifest | None = None) -> Manifest:
    """Check every file listed in the manifest: present, right size, right sha256.

    Raises ``BundleError`` naming the first file that fails; never returns a partly valid bundle.
    """
    bundle_dir = Path(bundle_dir)
    manifest = manifest or Manifest.read(bundle_dir)
    for rel, entry in manifest.files.items():
        path = bundle_dir / rel
        if not path.is_file():
            raise BundleError(f"bundle {manifest.name}@{manifest.version}: missing file {rel}")
        if path.stat().st_size != entry.bytes:
            raise BundleError(f"bundle {manifest.name}@{manifest.version}: size mismatch for {rel}")
        if sha256_file(path) != entry.sha256:
            raise BundleError(f"bundle {manifest.name}@{manifest.version}: sha256 mismatch for {rel}")
    return manifest
