"""Measure decoder quantization candidates side by side: gate metrics, size and speed (docs/quantization.md).

    python -m model_export export model.gguf --task text-generation --out WORK
    python -m model_export.compare WORK [--rounds 5] [--only NAME ...]

Each candidate is quantized from WORK's fp32 file, gated against the reference run (once, on
the same data as ``validate``), and timed with the exporter's own greedy KV-cache loop: time to
first token for a ~50- and a ~500-token prompt and decode tokens/s, the candidates interleaved
in every round so machine load hits all alike. Prints a markdown table, writes WORK/compare.json.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import pickle
import statistics
import time
from pathlib import Path

from model_export.config import QuantizeConfig, WeightOnlyConfig
from model_export.pipeline import FP32_FILE, _read_work

DECODE_TOKENS = 64
# Sensitive layers for dynamic int8 on a decoder: the LM head (logits over 49k tokens) and the
# MLP down-projections (their input is the widest-range activation, after SiLU x up).
DYNAMIC_SENSITIVE = (r"lm_head", r"mlp/down_proj/MatMul$")

CANDIDATES: dict[str, QuantizeConfig | None] = {
    "fp32": None,
    "dyn-int8": QuantizeConfig(),
    "dyn-int8 (head, down fp32)": QuantizeConfig(exclude=DYNAMIC_SENSITIVE),
    "w4 b32 acc4": QuantizeConfig(method="weight-only", weight_only=WeightOnlyConfig()),
    "w4 b32 fp32-compute": QuantizeConfig(method="weight-only", weight_only=WeightOnlyConfig(accuracy_level=None)),
    "w4 b128 acc4": QuantizeConfig(method="weight-only", weight_only=WeightOnlyConfig(block_size=128)),
    "w4 b32 sym acc4": QuantizeConfig(method="weight-only", weight_only=WeightOnlyConfig(symmetric=True)),
    "w4 b32 acc4, head+emb int8": QuantizeConfig(method="weight-only", weight_only=WeightOnlyConfig(
        head_bits=8, embedding_bits=8)),
    "w4 b32 acc4, emb fp32": QuantizeConfig(method="weight-only", weight_only=WeightOnlyConfig(embedding_bits=0)),
    "w8 b32 acc4": QuantizeConfig(method="weight-only", weight_only=WeightOnlyConfig(
        bits=8, head_bits=8, embedding_bits=8)),
    "w8 b128 fp32-compute": QuantizeConfig(method="weight-only", weight_only=WeightOnlyConfig(
        bits=8, block_size=128, accuracy_level=None, head_bits=8, embedding_bits=8)),
}


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name).strip("-")


def build_candidate(work: Path, name: str, qconfig: QuantizeConfig | None) -> Path:
    from model_export.quantize import quantize, weight_only_quantize

    if qconfig is None:
        return work / FP32_FILE
    out = work / "candidates" / f"{_slug(name)}.onnx"
    if not out.is_file():
        if qconfig.method == "weight-only":
            weight_only_quantize(work / FP32_FILE, out, qconfig.weight_only)
        else:
            quantize(work / FP32_FILE, out, qconfig)
    return out


def prompt_of(tokenizer, block: dict, n_tokens: int, text: str) -> list[int]:
    """A chat prompt of about ``n_tokens``: the held-out prose cut to fit, asked to be summarised."""
    from model_export.tasks.text_generation import chat_ids

    words = text.split()
    lo, hi = 1, len(words)
    while lo < hi:  # longest prefix whose prompt stays within n_tokens
        mid = (lo + hi + 1) // 2
        if len(chat_ids(tokenizer, block, "Summarise: " + " ".join(words[:mid]))) <= n_tokens:
            lo = mid
        else:
            hi = mid - 1
    return chat_ids(tokenizer, block, "Summarise: " + " ".join(words[:lo]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m model_export.compare", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("work", type=Path, help="work folder from `model_export export` (text-generation)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads")
    parser.add_argument("--only", action="append", default=None, metavar="NAME", help="only these candidates")
    parser.add_argument("--skip-gate", action="store_true", help="speed only (reuse compare.json's gate)")
    args = parser.parse_args(argv)

    from tokenizers import Tokenizer

    from model_export.decoder import Decoder
    from model_export.pipeline import tool_versions
    from model_export.tasks import text_generation as tg

    work = _read_work(args.work)
    block = work["fields"]["generation"]
    tok_path = args.work / "tokenizer.json"
    tok = Tokenizer.from_file(str(tok_path))
    tok.no_padding()
    tok.no_truncation()
    names = args.only or list(CANDIDATES)
    out_file = args.work / "compare.json"
    results = json.loads(out_file.read_text()) if out_file.is_file() else {}
    results.setdefault("candidates", {})
    data = tg.load_eval()
    paths = {}
    for name in names:
        t = time.perf_counter()
        paths[name] = build_candidate(args.work, name, CANDIDATES[name])
        entry = results["candidates"].setdefault(name, {})
        entry["bytes"] = paths[name].stat().st_size
        entry["config"] = CANDIDATES[name].__repr__() if CANDIDATES[name] else "fp32"
        print(f"[{name}] file {entry['bytes'] / 1e6:.1f} MB ({time.perf_counter() - t:.0f} s)", flush=True)
    results = _merge(out_file, {"candidates": {n: {k: results["candidates"][n][k] for k in ("bytes", "config")}
                                               for n in names}})
    if not args.skip_gate:
        t = time.perf_counter()
        ref_file = args.work / "reference.pkl"  # the reference run is the slow part: computed once per work folder
        if ref_file.is_file():
            ref = pickle.loads(ref_file.read_bytes())
        else:
            ref = tg.reference_run(Path(work["source_dir"]), tok_path, block, data)
            ref_file.write_bytes(pickle.dumps(ref))
        print(f"[reference] {sum(ref.right)}/{len(ref.right)} right, ppl {math.exp(ref.nll):.3f}, "
              f"template match {ref.template_matches} ({time.perf_counter() - t:.0f} s)", flush=True)
        results["reference"] = {"right": ref.right, "perplexity": math.exp(ref.nll)}
        for name in names:
            t = time.perf_counter()
            gate = tg.candidate_metrics(paths[name], tok_path, block, ref, data, threads=args.threads)
            print(f"[{name}] " + ", ".join(f"{k}={v:.4f}" for k, v in gate.items())
                  + f" ({time.perf_counter() - t:.0f} s)", flush=True)
            results = _merge(out_file, {"candidates": {name: {"gate": gate}}, "reference": results["reference"]})
    if args.rounds <= 0:
        return 0
    text = " ".join(data["heldout"])
    prompts = {"p50": prompt_of(tok, block, 50, text), "p500": prompt_of(tok, block, 500, text)}
    decoders = {name: Decoder(paths[name], threads=args.threads) for name in names}
    timings = {name: {"ttft50": [], "ttft500": [], "decode": []} for name in names}
    loads = [os.getloadavg()[0]]
    for _ in range(args.rounds):
        for name in names:  # interleaved: each round runs every candidate once
            d = decoders[name]
            g = d.greedy(prompts["p50"], DECODE_TOKENS)  # no EOS: a fixed number of steps
            timings[name]["ttft50"].append(g.first_token_s)
            timings[name]["decode"].append(g.decode_tokens_per_s)
            timings[name]["ttft500"].append(d.greedy(prompts["p500"], 1).first_token_s)
        loads.append(os.getloadavg()[0])
    for name in names:
        tm = timings[name]
        results["candidates"][name]["speed"] = {
            "ttft50_ms": 1000 * statistics.median(tm["ttft50"]), "ttft500_ms": 1000 * statistics.median(tm["ttft500"]),
            "decode_tok_s": statistics.median(tm["decode"]), "rounds": args.rounds}
    results["machine"] = {"load_avg_1m": loads, "threads": args.threads, "tools": tool_versions(
        ("onnxruntime", "onnx", "onnx-ir", "transformers", "torch")),
        "prompt_tokens": {k: len(v) for k, v in prompts.items()}, "cpu_flags": _cpu_flags()}
    results = _merge(out_file, {"candidates": {n: {"speed": results["candidates"][n]["speed"],
                                                   "bytes": results["candidates"][n]["bytes"],
                                                   "config": results["candidates"][n]["config"]} for n in names},
                                "machine": results["machine"]})
    print(table(results))
    return 0


def _merge(path: Path, update: dict) -> dict:
    """Read-modify-write ``path`` so several runs (different --only sets) add to one file."""
    current = json.loads(path.read_text()) if path.is_file() else {}
    for key, value in update.items():
        if key == "candidates":
            for name, fields in value.items():
                current.setdefault("candidates", {}).setdefault(name, {}).update(fields)
        else:
            current[key] = value
    path.write_text(json.dumps(current, indent=2))
    return current


def _cpu_flags() -> list[str]:
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        return []
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_tile", "f16c", "fma")
    return [f for f in flags.split(":", 1)[1].split() if f in wanted]


def table(results: dict) -> str:
    base = results["candidates"].get("fp32", {}).get("speed", {})
    rows = ["| candidate | MB | ppl ratio | next-token agr. | QA kept | greedy = ref | decode tok/s | × fp32 "
            "| TTFT 50 ms | TTFT 500 ms |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, c in results["candidates"].items():
        g, s = c.get("gate", {}), c.get("speed", {})
        ratio = s.get("decode_tok_s", 0) / base["decode_tok_s"] if base.get("decode_tok_s") and s else 0
        rows.append(f"| {name} | {c['bytes'] / 1e6:.1f} | {g.get('ppl_ratio', 0):.4f} | "
                    f"{g.get('next_token_agreement', 0):.4f} | {int(g.get('qa_right', 0))}/"
                    f"{int(g.get('qa_reference_right', 0))} | {g.get('greedy_exact', 0):.2f} | "
                    f"{s.get('decode_tok_s', 0):.1f} | {ratio:.2f} | {s.get('ttft50_ms', 0):.0f} | "
                    f"{s.get('ttft500_ms', 0):.0f} |")
    return "\n".join(rows)


if __name__ == "__main__":
    raise SystemExit(main())
