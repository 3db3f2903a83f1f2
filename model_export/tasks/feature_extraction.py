"""feature-extraction: sentence embeddings from last_hidden_state with the model's own pooling."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from model_export.config import Threshold
from model_export.tasks.base import EncoderTask, torch_feed

NN_MARGIN = 0.02  # cosine gap between a text's two nearest neighbours that makes the first "clear"
_ST_POOLING = {"pooling_mode_mean_tokens": "mean", "pooling_mode_cls_token": "cls",
               "pooling_mode_max_tokens": "max"}


def pool(hidden: np.ndarray, mask: np.ndarray, pooling: str, normalize: bool) -> np.ndarray:
    """The pooling the runtime applies; kept identical so the gate measures what is served."""
    if pooling == "cls":
        vec = hidden[:, 0]
    elif pooling == "max":
        vec = np.where(mask[..., None] > 0, hidden, -np.inf).max(axis=1)
    else:
        m = mask[..., None].astype(np.float32)
        vec = (hidden * m).sum(axis=1) / np.clip(m.sum(axis=1), 1e-9, None)
    if normalize:
        vec = vec / np.clip(np.linalg.norm(vec, axis=1, keepdims=True), 1e-12, None)
    return vec.astype(np.float32)


class FeatureExtraction(EncoderTask):
    name = "feature-extraction"
    optimum_task = "feature-extraction"
    output_name = "last_hidden_state"
    # Issue 13's gate: every recipe shipped for MiniLM meets it on the gate's set and the
    # held-out bench set (docs/quantization.md).
    thresholds = {"mean_cosine": Threshold(0.995), "p1_cosine": Threshold(0.98),
                  "nn_agreement": Threshold(0.98)}

    def default_max_length(self, source_dir: Path) -> int:
        st = _json(source_dir / "sentence_bert_config.json")
        if isinstance(st.get("max_seq_length"), int):
            return st["max_seq_length"]
        return super().default_max_length(source_dir)

    def manifest_fields(self, source_dir: Path, export_dir: Path) -> dict[str, Any]:
        """Pooling and normalisation as the sentence-transformers config says (mean, no norm otherwise)."""
        modules = _json(source_dir / "modules.json") or []
        pooling, normalize = "mean", False
        for module in modules:
            kind = module.get("type", "")
            if kind.endswith("Pooling"):
                cfg = _json(source_dir / module.get("path", "") / "config.json")
                pooling = next((v for k, v in _ST_POOLING.items() if cfg.get(k)), "mean")
            elif kind.endswith("Normalize"):
                normalize = True
        return {"pooling": pooling, "normalize": normalize}

    def load_reference(self, source_dir: Path):
        from transformers import AutoModel

        return AutoModel.from_pretrained(source_dir).eval()

    def reference_output(self, model, feed):
        return model(**torch_feed(feed)).last_hidden_state.numpy()

    def postprocess(self, raw, feed, fields):
        return pool(raw, feed["attention_mask"], fields["pooling"], fields["normalize"])

    def compare(self, ref, got):
        ref_n = ref / np.clip(np.linalg.norm(ref, axis=1, keepdims=True), 1e-12, None)
        got_n = got / np.clip(np.linalg.norm(got, axis=1, keepdims=True), 1e-12, None)
        cos = (ref_n * got_n).sum(axis=1)
        # Nearest neighbour of each text among the others, by each model: does retrieval change?
        # Texts whose reference top-2 are nearly tied (margin < NN_MARGIN) flip on any noise,
        # fp32 reorderings included, so the gated figure counts only clear neighbours; the
        # strict figure over all texts is reported too.
        sim_ref, sim_got = ref_n @ ref_n.T, got_n @ got_n.T
        np.fill_diagonal(sim_ref, -np.inf)
        np.fill_diagonal(sim_got, -np.inf)
        same = sim_ref.argmax(axis=1) == sim_got.argmax(axis=1)
        top2 = np.sort(sim_ref, axis=1)[:, -2:]
        clear = (top2[:, 1] - top2[:, 0]) >= NN_MARGIN
        return {"mean_cosine": float(cos.mean()), "min_cosine": float(cos.min()),
                "p1_cosine": float(np.percentile(cos, 1)),
                "nn_agreement": float(same[clear].mean()) if clear.any() else 1.0,
                "nn_agreement_all": float(same.mean()), "nn_clear_texts": float(clear.sum()),
                "n_texts": float(len(cos))}


def _json(path: Path):
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return {}


TASK = FeatureExtraction()
