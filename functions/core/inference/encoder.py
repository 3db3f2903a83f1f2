"""The torch-free inference runtime: one onnxruntime session + tokenizer per bundle, embed and classify.

Inputs are tokenized once, sorted by length and run in batches padded to the longest member, so
one long text does not make every short one pay for its padding. Pooling and normalisation are
exactly what the bundle's manifest names; nothing here guesses from the graph.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
from tokenizers import Encoding, Tokenizer

from functions.core.errors import BundleError, ContextLengthExceeded, PayloadTooLarge, ValidationFailed
from functions.core.inference.manifest import Manifest


def cpu_count() -> int:
    """CPUs this process may run on (Lambda gives 1-6 vCPUs by memory size; containers pin too)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def session_options(threads: int) -> ort.SessionOptions:
    """The runtime's onnxruntime options (bench/profile.py builds its sessions with these too)."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    # EXTENDED, not ALL: ALL adds only the NCHWc layout passes (convolutions), which change nothing
    # in a transformer (same outputs bit for bit, same latency measured) but cost ~25 ms of
    # session creation at every cold start.
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    opts.log_severity_level = 3
    return opts


def require_task(manifest: Manifest, task: str) -> None:
    """The one task check: 422 ``model_task_mismatch`` when the bundle serves another task."""
    if manifest.task != task:
        raise ValidationFailed(f"model {manifest.name!r} is a {manifest.task} model, not {task}",
                               param="model", code="model_task_mismatch")


@dataclass(frozen=True)
class Encoded:
    """Tokenized inputs, in request order: ids per input and how many tokens each one used."""

    encodings: list[Encoding]

    @property
    def token_counts(self) -> list[int]:
        return [len(e.ids) for e in self.encodings]


class OnnxModel:
    """A loaded, verified bundle: session, tokenizer and manifest. Thread-safe for concurrent calls."""

    def __init__(self, bundle_dir: Path, manifest: Manifest, *, intra_op_threads: int = 0,
                 batch_size: int = 32) -> None:
        self.bundle_dir = Path(bundle_dir)
        self.manifest = manifest
        self.batch_size = max(1, batch_size)
        self.threads = intra_op_threads or cpu_count()
        if manifest.task == "text-classification" and not manifest.labels:
            raise BundleError(f"bundle {manifest.name}@{manifest.version}: classifier without labels")
        self._tokenizer = self._load_tokenizer()
        try:
            self._session = ort.InferenceSession(str(self.bundle_dir / "model.onnx"),
                                                 sess_options=session_options(self.threads),
                                                 providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
            raise BundleError(f"bundle {manifest.name}@{manifest.version}: model.onnx does not load "
                              f"({exc.__class__.__name__})") from exc
        self._input_names = [i.name for i in self._session.get_inputs()]
        self._dimensions: int | None = None
        outputs = [o.name for o in self._session.get_outputs()]
        if manifest.output_name not in outputs:
            raise BundleError(f"bundle {manifest.name}@{manifest.version}: graph has no output "
                              f"{manifest.output_name!r}")
        missing = {"input_ids", "attention_mask"} - set(self._input_names)
        if missing:
            raise BundleError(f"bundle {manifest.name}@{manifest.version}: graph lacks inputs {sorted(missing)}")

    # --- loading -------------------------------------------------------------------------------
    def _load_tokenizer(self) -> Tokenizer:
        try:
            tok = Tokenizer.from_file(str(self.bundle_dir / "tokenizer.json"))
        except Exception as exc:
            raise BundleError(f"bundle {self.manifest.name}@{self.manifest.version}: "
                              f"tokenizer.json does not load") from exc
        # Exported tokenizer.json files often pad/truncate to a fixed 128: padding is done here
        # per batch, truncation follows the manifest's max_length. Configured once, never again,
        # so concurrent encode_batch calls are safe.
        self._pad_id = (tok.padding or {}).get("pad_id", 0)
        tok.no_padding()
        tok.enable_truncation(self.manifest.max_length)
        return tok

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def version(self) -> str:
        return self.manifest.version

    @property
    def dimensions(self) -> int:
        """The size of one embedding (the pooled output's last axis), read from the graph when it is
        static there, else measured once on a one-word input."""
        if self._dimensions is None:
            out = next(o for o in self._session.get_outputs() if o.name == self.manifest.output_name)
            last = out.shape[-1] if out.shape else None
            self._dimensions = last if isinstance(last, int) else int(self.embed(["a"])[0].shape[1])
        return self._dimensions

    # --- tokenization ----------------------------------------------------------------------------
    def tokenize(self, texts: Sequence[str], *, overflow: str = "truncate",
                 max_total_tokens: int | None = None) -> Encoded:
        """Tokenize with the manifest's max_length; ``overflow="reject"`` refuses longer inputs (400);
        ``max_total_tokens`` refuses a request whose inputs add up to more (413), before inference."""
        # One text (most API requests): encode() skips the batch call's hand-off to the tokenizer's
        # thread pool, half the tokenizer's time here (same ids, same truncation).
        encodings = ([self._tokenizer.encode(texts[0])] if len(texts) == 1
                     else self._tokenizer.encode_batch(list(texts)))
        if overflow == "reject":
            for i in _overflowing(encodings)[:1]:
                raise ContextLengthExceeded(
                    f"input[{i}] is longer than the model's limit of {self.manifest.max_length} tokens",
                    param="input")
        encoded = Encoded(encodings)
        if max_total_tokens is not None:
            total = sum(encoded.token_counts)
            if total > max_total_tokens:
                raise PayloadTooLarge(f"the inputs add up to {total} tokens, the limit is {max_total_tokens} "
                                      f"tokens per request; split them over several requests",
                                      param="input", code="too_many_tokens")
        return encoded

    def over_context(self, texts: Sequence[str]) -> list[int]:
        """Positions of the texts longer than the manifest's max_length (batch lines report each one)."""
        return _overflowing(self._tokenizer.encode_batch(list(texts)))

    # --- inference -------------------------------------------------------------------------------
    def _batches(self, encoded: Encoded):
        """Yield (indices, feeds) per batch: inputs sorted by length, padded to the batch's longest."""
        lengths = np.array(encoded.token_counts)
        order = np.argsort(lengths, kind="stable")
        for start in range(0, len(order), self.batch_size):
            idx = order[start:start + self.batch_size]
            width = int(lengths[idx].max())
            ids = np.full((len(idx), width), self._pad_id, dtype=np.int64)
            mask = np.zeros((len(idx), width), dtype=np.int64)
            for row, i in enumerate(idx):
                enc = encoded.encodings[i]
                ids[row, :len(enc.ids)] = enc.ids
                mask[row, :len(enc.ids)] = 1
            feeds = {"input_ids": ids, "attention_mask": mask}
            if "token_type_ids" in self._input_names:
                feeds["token_type_ids"] = np.zeros_like(ids)
            yield idx, feeds

    def _run(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        return self._session.run([self.manifest.output_name], feeds)[0]

    def embed(self, texts: Sequence[str], *, overflow: str = "truncate",
              max_total_tokens: int | None = None) -> tuple[np.ndarray, list[int]]:
        """Embeddings (float32, [n, dim], request order) and the token count of each input."""
        require_task(self.manifest, "feature-extraction")
        encoded = self.tokenize(texts, overflow=overflow, max_total_tokens=max_total_tokens)
        out: np.ndarray | None = None
        for idx, feeds in self._batches(encoded):
            vectors = self._pool(self._run(feeds), feeds["attention_mask"])
            if out is None:
                out = np.empty((len(texts), vectors.shape[1]), dtype=np.float32)
            out[idx] = vectors
        assert out is not None  # callers never pass an empty list (validated at the edge)
        return out, encoded.token_counts

    def _pool(self, hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
        m = self.manifest
        if hidden.ndim == 2:  # the graph already pools (e.g. sentence_embedding)
            if m.pooling != "none":
                raise BundleError(f"bundle {m.name}@{m.version}: output {m.output_name} is already pooled "
                                  f"but the manifest asks for {m.pooling} pooling")
            pooled = hidden.astype(np.float32)
        elif m.pooling == "mean":
            w = mask[..., None].astype(np.float32)
            pooled = (hidden * w).sum(axis=1) / np.clip(w.sum(axis=1), 1e-9, None)
        elif m.pooling == "cls":
            pooled = hidden[:, 0, :]
        elif m.pooling == "max":
            pooled = np.where(mask[..., None].astype(bool), hidden, -np.inf).max(axis=1)
        else:
            raise BundleError(f"bundle {m.name}@{m.version}: pooling 'none' needs a 2-D output, "
                              f"{m.output_name} is {hidden.ndim}-D")
        pooled = pooled.astype(np.float32, copy=False)
        if m.normalize:
            pooled = pooled / np.clip(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12, None)
        return pooled

    def classify(self, texts: Sequence[str], *, overflow: str = "truncate",
                 max_total_tokens: int | None = None) -> tuple[np.ndarray, list[int]]:
        """Class probabilities (softmax over the logits, [n, n_labels], columns = manifest.labels)."""
        require_task(self.manifest, "text-classification")
        encoded = self.tokenize(texts, overflow=overflow, max_total_tokens=max_total_tokens)
        n_labels = len(self.manifest.labels)
        out = np.empty((len(texts), n_labels), dtype=np.float32)
        for idx, feeds in self._batches(encoded):
            logits = self._run(feeds).astype(np.float32)
            if logits.ndim != 2 or logits.shape[1] != n_labels:
                raise BundleError(f"bundle {self.name}@{self.version}: logits shape {logits.shape} does not "
                                  f"match {n_labels} labels")
            z = logits - logits.max(axis=1, keepdims=True)
            e = np.exp(z)
            out[idx] = e / e.sum(axis=1, keepdims=True)
        return out, encoded.token_counts


def _overflowing(encodings: Sequence[Encoding]) -> list[int]:
    """The one context-length check: positions whose tokens did not fit the tokenizer's truncation."""
    return [i for i, enc in enumerate(encodings) if enc.overflowing]


def ranked_labels(row: np.ndarray, labels: Sequence[str], top_k: int | None = None) -> dict:
    """One input's class probabilities as ``label``, ``score`` (the top one) and ``scores`` (best first)."""
    order = np.argsort(-row, kind="stable")[: top_k or len(labels)]
    scores = [{"label": labels[j], "score": float(row[j])} for j in order]
    return {"label": scores[0]["label"], "score": scores[0]["score"], "scores": scores}
