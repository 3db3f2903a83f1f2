"""The texts every engine is timed on: short (~8 tokens), medium (~40) and long (~250), 32 of each.

Built deterministically from the English sentences of the export gate's eval set, so a run is
reproducible without any download; lengths are counted with the shipped tokenizer ([CLS]/[SEP]
included) and reported with the results.
"""
from __future__ import annotations

import json
from pathlib import Path

from tokenizers import Tokenizer

from model_export.pipeline import EVAL_SET, load_eval_texts

TARGETS = {"short": 8, "medium": 40, "long": 250}
PER_WORKLOAD = 32
# The peer table's batch-1 text: 12 tokens with [CLS]/[SEP] (checked in tests/unit/test_bench_peers.py).
BATCH1_TEXT = "How do I reset the password of my account?"
# Held-out parity texts (written for the bench, never read by the export gate): a second opinion
# on accuracy, so a recipe tuned on the gate's set cannot pass by fitting it.
PARITY_SET = Path(__file__).parent / "data" / "parity_texts.jsonl"


def _english(path: Path = EVAL_SET) -> list[str]:
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [r["text"] for r in rows if r.get("kind") == "english"]


def _text_of(tokenizer: Tokenizer, sentences: list[str], start: int, target: int) -> str:
    """Sentences from ``start`` on, joined until ``target`` tokens are reached, then trimmed to it."""
    words: list[str] = []
    i = start
    while len(tokenizer.encode(" ".join(words)).ids) < target:
        words += sentences[i % len(sentences)].split()
        i += 1
    while len(words) > 1 and len(tokenizer.encode(" ".join(words)).ids) > target:
        words.pop()
    return " ".join(words)


def build(tokenizer_path: Path) -> dict[str, list[str]]:
    """workload name -> 32 texts of about its target length (the tokenizer truncates at 256 anyway)."""
    tok = Tokenizer.from_file(str(tokenizer_path))
    tok.no_truncation()  # measure real lengths; the long texts must not exceed the model's 256
    tok.no_padding()
    sentences = _english()
    return {name: [_text_of(tok, sentences, 7 * i, target) for i in range(PER_WORKLOAD)]
            for name, target in TARGETS.items()}


def token_stats(tokenizer_path: Path, workloads: dict[str, list[str]]) -> dict[str, dict[str, float]]:
    tok = Tokenizer.from_file(str(tokenizer_path))
    tok.no_padding()
    out = {}
    for name, texts in workloads.items():
        counts = [len(e.ids) for e in tok.encode_batch(texts)]
        out[name] = {"target": TARGETS.get(name, counts[0]), "mean_tokens": round(sum(counts) / len(counts), 1),
                     "min_tokens": min(counts), "max_tokens": max(counts), "texts": len(texts)}
    return out


def held_out_texts(path: Path = PARITY_SET) -> list[str]:
    return [json.loads(line)["text"] for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def parity_texts(workloads: dict[str, list[str]]) -> list[str]:
    """The gate's eval set (all kinds: code, emoji, CJK...) plus every workload text (the long ones too)."""
    return load_eval_texts() + [t for texts in workloads.values() for t in texts]
