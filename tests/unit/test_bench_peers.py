"""The benchmark's fixed inputs and pure parts: texts, held-out parity set, kernel path, cost model.

Nothing here times anything or imports a peer package (those are bench-only).
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from bench import cost, machine, workloads
from model_export.pipeline import load_eval_texts

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tokenizer():
    from tokenizers import Tokenizer

    from model_export.defaults import default_model_dir

    tok = Tokenizer.from_file(str(default_model_dir() / "tokenizer.json"))
    tok.no_padding()
    tok.no_truncation()
    return tok


def test_batch1_text_is_12_tokens(tokenizer):
    assert len(tokenizer.encode(workloads.BATCH1_TEXT).ids) == 12  # [CLS] ... [SEP]


def test_held_out_parity_set_is_varied_and_never_seen_by_the_gate(tokenizer):
    rows = [json.loads(line) for line in workloads.PARITY_SET.read_text(encoding="utf-8").splitlines() if line]
    texts = [r["text"] for r in rows]
    assert len(texts) >= 200 and len(set(texts)) == len(texts)
    assert not set(texts) & set(load_eval_texts())
    assert len({r["kind"] for r in rows}) >= 12
    lengths = [len(e.ids) for e in tokenizer.encode_batch(texts)]
    assert min(lengths) <= 4 and sum(n > 256 for n in lengths) >= 20  # single words to truncated texts
    assert any(re.search(r"[\u3040-\u30ff\u4e00-\u9fff]", t) for t in texts)  # CJK


@pytest.mark.parametrize("flags, arch, path", [
    ({"avx2", "avx512f", "avx512bw", "avx512_vnni"}, "x86_64", "AVX512-VNNI"),
    ({"avx2", "avx_vnni"}, "x86_64", "AVX-VNNI"),
    ({"avx2", "fma"}, "x86_64", "AVX2 (VPMADDUBSW"),
    ({"avx2", "avx512bw"}, "x86_64", "AVX512BW (VPMADDUBSW"),
    ({"asimddp", "i8mm"}, "aarch64", "arm64 i8mm"),
    ({"asimddp"}, "aarch64", "arm64 dot-product"),
])
def test_int8_kernel_path_follows_mlas_dispatch_order(flags, arch, path):
    assert machine.int8_kernel_path(flags, arch).startswith(path)


def test_cost_per_million_is_duration_times_memory_price_plus_requests():
    # 1 ms at 1769 MB on x86: 1e6 * 0.001 s * 1769/1024 GB * price + 1e6 requests * $0.20/M
    expect = 1e6 * 0.001 * 1769 / 1024 * cost.PRICES["lambda_gb_second"]["x86_64"] + 0.20
    assert cost.per_million(1769, 0.0004, 1, "x86_64") == pytest.approx(expect)  # billed per started ms
    assert cost.per_million(1769, 0.001, 1, "arm64") < cost.per_million(1769, 0.001, 1, "x86_64")


def test_cost_recommends_the_cheapest_measured_memory_per_architecture():
    measured = {"onnx-int8": {1: {"b1_s": 0.004, "b32_s": 0.100}, 2: {"b1_s": 0.0021, "b32_s": 0.070}}}
    out = cost.model(measured, {"onnx-int8": 300.0})
    assert {(r["arch"], r["memory_mb"]) for r in out["rows"]} == {
        ("x86_64", 1769), ("x86_64", 3538), ("arm64", 1769), ("arm64", 3538)}
    rec = out["recommendation"]
    # batch 1: 2 vCPUs take 3 ms instead of 4 at twice the memory: 1 vCPU is cheaper
    assert rec["x86_64"]["api"]["memory_mb"] == 1769 and rec["arm64"]["api"]["memory_mb"] == 1769
    # batch 32: 70 ms x 2 = 140 > 100: 1 vCPU again
    assert rec["x86_64"]["batch"]["memory_mb"] == 1769
    assert out["recommendation"]["arm64"]["api"]["usd_per_million"] < rec["x86_64"]["api"]["usd_per_million"]


def test_peer_packages_are_pinned_and_stay_out_of_the_runtime_requirements():
    peers = [ln.split("#")[0].strip() for ln in (ROOT / "bench" / "requirements-peers.txt").read_text().splitlines()]
    peers = [p for p in peers if p]
    assert peers and all(re.fullmatch(r"[A-Za-z0-9_.-]+==[0-9][^=]*", p) for p in peers)
    names = {p.split("==")[0].lower() for p in peers}
    assert {"fastembed", "sentence-transformers"} <= names
    for req in ("requirements.txt", "requirements-lambda.txt"):
        text = (ROOT / req).read_text().lower()
        assert not any(re.search(rf"^{re.escape(n)}\b", text, re.M) for n in names), req
