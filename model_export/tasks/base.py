"""The task contract: how one kind of model is exported, described in the manifest and gated.

A task is one module in this package exposing ``TASK``; the registry (``__init__``) finds it by
name, so a new task (text-generation) slots in without touching the pipeline.
"""
from __future__ import annotations

import json
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import numpy as np

from model_export.config import Threshold

EVAL_BATCH = 32


class Task(ABC):
    name: str                       # manifest task, e.g. "feature-extraction"
    optimum_task: str               # task name optimum's exporter takes
    output_name: str                # graph output the runtime reads
    thresholds: dict[str, Threshold]
    quantize_exclude: tuple[str, ...] = ()  # node-name regexes kept fp32 by default
    quantize_method: str = "dynamic-int8"    # the CLI's default --method for this task

    def export(self, source: str, out_dir: Path, *, local: bool, opset: int | None = None) -> Path:
        """Export ``source`` to ``out_dir/model.onnx`` (+ tokenizer and config) with optimum."""
        from optimum.exporters.onnx import main_export

        main_export(source, out_dir, task=self.optimum_task, library_name="transformers",
                    opset=opset, do_validation=False,  # our own gate compares with PyTorch
                    local_files_only=local)
        return out_dir / "model.onnx"

    def default_max_length(self, source_dir: Path) -> int:
        config = _read_json(source_dir / "config.json")
        tok = _read_json(source_dir / "tokenizer_config.json")
        limits = [config.get("max_position_embeddings"), tok.get("model_max_length")]
        return int(min(v for v in limits if isinstance(v, int) and 0 < v < 100_000) or 512)

    @abstractmethod
    def manifest_fields(self, source_dir: Path, export_dir: Path) -> dict[str, Any]:
        """Task-specific manifest fields (pooling, normalize, labels, generation ...)."""

    @abstractmethod
    def evaluate(self, source_dir: Path, onnx_path: Path, tokenizer_path: Path, texts: list[str],
                 fields: dict[str, Any]) -> dict[str, float]:
        """Run the reference PyTorch model and the ONNX file on ``texts``; return gate metrics."""

    def eval_description(self, texts: list[str]) -> str:
        """What ``evaluate`` runs on, for the progress line."""
        return f"{len(texts)} texts"

    def eval_set_id(self, eval_set: Path, texts: list[str]) -> str:
        """Name + sha256 of the data the gate ran on (recorded in the manifest)."""
        from functions.core.inference.manifest import sha256_file

        return f"{eval_set.name}@sha256:{sha256_file(eval_set)[:16]}+{len(texts)} texts"

    def eval_texts(self, source_dir: Path) -> list[str]:
        """Extra task-specific evaluation texts (e.g. a classifier's held-out split)."""
        return []


class EncoderTask(Task):
    """Shared evaluation for encoder models: same tokens into PyTorch and ONNX, compare outputs."""

    # The feed-forward blocks (BERT-family names) stay fp32: the down-projection's input is the
    # widest-range activation (after GELU), the worst case for per-batch uint8, and the
    # up-projection is next. With both excluded MiniLM reaches mean cosine 0.997 / p1 0.991
    # (all-int8: 0.989 / 0.962); docs/quantization.md has the measurements. Recipes for a known
    # model may exclude less (defaults.py).
    quantize_exclude = (r"layer\.\d+/output/dense/MatMul$", r"layer\.\d+/intermediate/dense/MatMul$")

    @abstractmethod
    def load_reference(self, source_dir: Path):
        """The original PyTorch model, in eval mode."""

    @abstractmethod
    def reference_output(self, model, feed: dict[str, np.ndarray]) -> np.ndarray:
        """Raw output of the PyTorch model for one batch (same tensor as ``output_name``)."""

    @abstractmethod
    def postprocess(self, raw: np.ndarray, feed: dict[str, np.ndarray], fields: dict[str, Any]) -> np.ndarray:
        """What the runtime serves from the raw output (pooled vectors, probabilities)."""

    @abstractmethod
    def compare(self, ref: np.ndarray, got: np.ndarray) -> dict[str, float]:
        """Gate metrics from served outputs of both models."""

    def evaluate(self, source_dir, onnx_path, tokenizer_path, texts, fields):
        import onnxruntime as ort
        import torch

        tokenizer = load_tokenizer(tokenizer_path)
        model = self.load_reference(source_dir)
        options = ort.SessionOptions()
        session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
        graph_inputs = {i.name for i in session.get_inputs()}
        refs, gots = [], []
        with torch.inference_mode():
            for start in range(0, len(texts), EVAL_BATCH):
                feed = encode(tokenizer, texts[start:start + EVAL_BATCH], graph_inputs)
                refs.append(self.postprocess(self.reference_output(model, feed), feed, fields))
                raw = session.run([self.output_name], feed)[0]
                gots.append(self.postprocess(raw, feed, fields))
        return self.compare(np.concatenate(refs), np.concatenate(gots))


def load_tokenizer(path: Path):
    """The bundle's tokenizer.json as the runtime loads it (truncation + pad-to-longest baked in)."""
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(path))


def encode(tokenizer, texts: list[str], graph_inputs: set[str]) -> dict[str, np.ndarray]:
    encodings = tokenizer.encode_batch(texts)
    feed = {"input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
            "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64)}
    if "token_type_ids" in graph_inputs:
        feed["token_type_ids"] = np.array([e.type_ids for e in encodings], dtype=np.int64)
    return {k: v for k, v in feed.items() if k in graph_inputs}


def torch_feed(feed: dict[str, np.ndarray]) -> dict:
    import torch

    return {k: torch.from_numpy(v) for k, v in feed.items()}


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return {}
