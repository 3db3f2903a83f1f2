"""The bundle contract: manifest.json schema and file verification, shared by exporter and runtime.

A bundle is a folder holding ``model.onnx``, ``tokenizer.json`` (+ what it needs), ``config.json``
and ``manifest.json``. The runtime needs nothing but the folder to serve it.

The folder is closed: every file in it but ``manifest.json`` is listed in ``manifest.files`` with its
size and sha256, and the files the runtime opens by name (``RUNTIME_FILES``) must be among them.
onnxruntime also opens files the graph names itself (external weights beside ``model.onnx``), so a
file that is in the folder but not in the manifest is refused rather than ignored. The manifest is
pinned in turn by its own sha256 in the registry pointer (``functions.core.contract.Pointer``).
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path, PurePosixPath
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from functions.core.errors import BundleError

MANIFEST_NAME = "manifest.json"
SCHEMA_VERSION = 1
MODEL_FILE = "model.onnx"          # the ONNX graph (encoder.OnnxModel, generator.OnnxGenerator)
TOKENIZER_FILE = "tokenizer.json"  # the tokenizers file (self-contained: vocab + merges + added tokens)
CONFIG_FILE = "config.json"        # the exported model's config (provenance; the bundle contract lists it)
# Opened by fixed name when a bundle is served: a bundle whose manifest does not list one of them
# is refused, so no byte the runtime reads escapes the sha256 check.
RUNTIME_FILES = (MODEL_FILE, TOKENIZER_FILE, CONFIG_FILE)

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


def safe_relpath(rel: str) -> str | None:
    """``rel`` as a plain relative path inside the bundle, or None when it could point outside."""
    p = PurePosixPath(rel)
    if not rel or p.is_absolute() or ".." in p.parts or "\\" in rel or str(p) != rel:
        return None
    return rel


def verify_bundle(bundle_dir: Path, manifest: Manifest | None = None) -> Manifest:
    """Check the bundle is exactly what its manifest lists: every ``RUNTIME_FILES`` entry listed, every
    listed file present with the right size and sha256, and no file in the folder left unlisted.

    Raises ``BundleError`` naming the first file that fails; never returns a partly valid bundle.
    """
    bundle_dir = Path(bundle_dir)
    manifest = manifest or Manifest.read(bundle_dir)
    label = f"bundle {manifest.name}@{manifest.version}"
    unlisted = [rel for rel in RUNTIME_FILES if rel not in manifest.files]
    if unlisted:
        raise BundleError(f"{label}: the manifest does not list {', '.join(unlisted)} (every file the "
                          "runtime opens needs its sha256 in manifest.files)")
    for rel, entry in manifest.files.items():
        if safe_relpath(rel) is None or rel == MANIFEST_NAME:
            raise BundleError(f"{label}: unsafe file path in manifest")
        path = bundle_dir / rel
        if not path.is_file():
            raise BundleError(f"{label}: missing file {rel}")
        if path.stat().st_size != entry.bytes:
            raise BundleError(f"{label}: size mismatch for {rel}")
        if sha256_file(path) != entry.sha256:
            raise BundleError(f"{label}: sha256 mismatch for {rel}")
    for path in sorted(bundle_dir.rglob("*")):
        rel = path.relative_to(bundle_dir).as_posix()
        if rel != MANIFEST_NAME and rel not in manifest.files and not path.is_dir():
            raise BundleError(f"{label}: file {rel} is in the bundle but not in its manifest")
    return manifest
