"""text-classification: logits over labels; the labels travel in the manifest."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from model_export.config import Threshold
from model_export.tasks.base import EncoderTask, torch_feed

LABEL_MARGIN = 0.1  # reference top-1 minus top-2 probability that makes a decision "clear"
HELDOUT_FILE = "heldout.jsonl"  # optional file next to the model: {"text","label"} lines gated too


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


class TextClassification(EncoderTask):
    name = "text-classification"
    optimum_task = "text-classification"
    output_name = "logits"
    thresholds = {"label_agreement": Threshold(0.98),
                  "max_prob_diff": Threshold(0.15, higher=False)}

    def manifest_fields(self, source_dir: Path, export_dir: Path) -> dict[str, Any]:
        config = json.loads((source_dir / "config.json").read_text())
        id2label = config.get("id2label") or {}
        labels = [id2label.get(str(i), id2label.get(i, f"LABEL_{i}")) for i in range(len(id2label))]
        return {"labels": labels, "pooling": "none", "normalize": False}

    def eval_texts(self, source_dir: Path) -> list[str]:
        path = source_dir / HELDOUT_FILE
        if not path.is_file():
            return []
        return [json.loads(line)["text"] for line in path.read_text().splitlines() if line.strip()]

    def load_reference(self, source_dir: Path):
        from transformers import AutoModelForSequenceClassification

        return AutoModelForSequenceClassification.from_pretrained(source_dir).eval()

    def reference_output(self, model, feed):
        return model(**torch_feed(feed)).logits.numpy()

    def postprocess(self, raw, feed, fields):
        return softmax(raw.astype(np.float32))

    def compare(self, ref, got):
        # A text whose reference top-2 probabilities are within LABEL_MARGIN is a coin toss that
        # any rounding may flip (measured: every int8 flip here had a gap < 0.08 and moved no
        # probability by > 0.05); the gated agreement counts clear decisions, max_prob_diff
        # bounds the rest, label_agreement_all reports the strict figure.
        same = ref.argmax(-1) == got.argmax(-1)
        top2 = np.sort(ref, axis=-1)[:, -2:]
        clear = (top2[:, 1] - top2[:, 0]) >= LABEL_MARGIN
        return {"label_agreement": float(same[clear].mean()) if clear.any() else 1.0,
                "label_agreement_all": float(same.mean()), "clear_texts": float(clear.sum()),
                "max_prob_diff": float(np.abs(ref - got).max()),
                "mean_prob_diff": float(np.abs(ref - got).max(axis=-1).mean()),
                "n_texts": float(len(ref))}


TASK = TextClassification()
