"""Quantization frontier of the default embedding model: parity vs speed per recipe (``python -m bench.frontier``).

Every variant is built from the same fp32 export (the bench's cached one), scored with the
gate's metric (mean-pooled, L2-normalised cosine to PyTorch fp32 on the same token ids) on the
gate's eval set and on the held-out parity set (bench/data/parity_texts.jsonl), and timed
model-only (pre-tokenized feeds, the runtime's session options) in interleaved rounds at
batch 1 (12 tokens), batch 32 x ~40 and batch 32 x ~250 tokens. Results: bench/results/frontier.json
and .md; docs/quantization.md quotes them.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
FFN_DOWN = r"layer\.\d+/output/dense/MatMul$"


def variants() -> dict[str, dict]:
    """name -> recipe (model_export.quantize.QuantizeConfig fields). Order = table order."""
    return {
        "fp32 (unfused)": {"enabled": False},
        "fused fp32": {"enabled": False, "fuse": True},
        "shipped before: u8/u8, attn scores + FFN down + FFN up L3-5 fp32": {
            "weights": "u8", "reduce_range": False,
            "exclude": (FFN_DOWN, r"layer\.[345]/intermediate/dense/MatMul$")},
        "unfused s8 7-bit, same exclusions": {
            "weights": "s8", "exclude": (FFN_DOWN, r"layer\.[345]/intermediate/dense/MatMul$")},
        "unfused s8 7-bit, all weight MatMuls int8": {"weights": "s8", "reduce_range": True},
        "fused s8 (fastembed recipe)": {"weights": "s8", "fuse": True, "reduce_range": False, "arch": "arm64"},
        "fused s8 7-bit": {"weights": "s8", "fuse": True, "reduce_range": True},
        "fused s8 7-bit, embeddings fp32": {"weights": "s8", "fuse": True, "reduce_range": True,
                                            "operators": ("MatMul", "Attention")},
        "fused s8, FFN down fp32": {"weights": "s8", "fuse": True, "reduce_range": False, "arch": "arm64",
                                    "exclude": (FFN_DOWN,)},
        "fused s8 7-bit, FFN down fp32": {"weights": "s8", "fuse": True, "reduce_range": True,
                                          "exclude": (FFN_DOWN,)},
        "fused s8 7-bit, same exclusions as unfused": {
            "weights": "s8", "fuse": True, "reduce_range": True,
            "exclude": (FFN_DOWN, r"layer\.[345]/intermediate/dense/MatMul$")},
        "fused s8 7-bit, all FFN fp32": {"weights": "s8", "fuse": True, "reduce_range": True,
                                         "exclude": (FFN_DOWN, r"layer\.\d+/intermediate/dense/MatMul$")},
        "fused s8 7-bit, FFN down L0-2 fp32": {"weights": "s8", "fuse": True, "reduce_range": True,
                                               "exclude": (r"layer\.[012]/output/dense/MatMul$",)},
        "fused s8 7-bit, FFN down L3-5 fp32": {"weights": "s8", "fuse": True, "reduce_range": True,
                                               "exclude": (r"layer\.[345]/output/dense/MatMul$",)},
        "fused s8 7-bit, Attention fp32": {"weights": "s8", "fuse": True, "reduce_range": True,
                                           "operators": ("MatMul", "EmbedLayerNormalization", "Gather")},
    }


def _texts(path: Path) -> list[str]:
    return [json.loads(line)["text"] for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _feeds(tokenizer, texts: list[str], batch: int = 32):
    from model_export.tasks.base import encode

    for i in range(0, len(texts), batch):
        yield encode(tokenizer, texts[i:i + batch], {"input_ids", "attention_mask", "token_type_ids"})


def _pool(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    w = mask[..., None].astype(np.float32)
    v = (hidden * w).sum(1) / np.clip(w.sum(1), 1e-9, None)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def reference(tokenizer, texts: list[str]) -> np.ndarray:
    import torch
    from transformers import AutoModel

    from bench.engines import source_dir

    model = AutoModel.from_pretrained(source_dir()).eval()
    out = []
    with torch.inference_mode():
        for feed in _feeds(tokenizer, texts):
            hidden = model(**{k: torch.from_numpy(v) for k, v in feed.items()}).last_hidden_state.numpy()
            out.append(_pool(hidden, feed["attention_mask"]))
    return np.concatenate(out)


def embed(session, tokenizer, texts: list[str]) -> np.ndarray:
    return np.concatenate([_pool(session.run(["last_hidden_state"], f)[0], f["attention_mask"])
                           for f in _feeds(tokenizer, texts)])


def cosines(ref: np.ndarray, got: np.ndarray) -> dict:
    cos = (ref * got).sum(1) / (np.linalg.norm(ref, axis=1) * np.linalg.norm(got, axis=1))
    return {"mean": round(float(cos.mean()), 4), "p1": round(float(np.percentile(cos, 1)), 4),
            "min": round(float(cos.min()), 4)}


def main(argv: list[str] | None = None) -> int:
    import onnxruntime as ort
    from tokenizers import Tokenizer

    from bench import engines, workloads
    from functions.core.inference.encoder import session_options
    from model_export.config import QuantizeConfig
    from model_export.pipeline import EVAL_SET
    from model_export.quantize import fuse, quantize

    ap = argparse.ArgumentParser(prog="python -m bench.frontier", description=__doc__.splitlines()[0])
    ap.add_argument("--bundles", type=Path, default=ROOT / ".cache" / "bundles")
    ap.add_argument("--cache", type=Path, default=ROOT / ".cache" / "bench")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--only", default="", help="comma-separated substrings of variant names")
    args = ap.parse_args(argv)

    fp32_dir = engines.fp32_bundle(args.bundles, args.cache)
    tok = Tokenizer.from_file(str(fp32_dir / "tokenizer.json"))
    sets = {"gate": _texts(EVAL_SET), "held-out": _texts(workloads.PARITY_SET)}
    ref_file = args.cache / "frontier-reference.npz"
    if ref_file.is_file():
        refs = dict(np.load(ref_file))
    else:
        refs = {k: reference(tok, v) for k, v in sets.items()}
        np.savez(ref_file, **refs)

    wanted = [s for s in args.only.split(",") if s]
    chosen = {k: v for k, v in variants().items() if not wanted or any(w in k for w in wanted)}
    work = args.cache / "frontier"
    work.mkdir(parents=True, exist_ok=True)
    rows, sessions = {}, {}
    for name, recipe in chosen.items():
        cfg = QuantizeConfig(**{k: v for k, v in recipe.items() if not (k == 'fuse' and not recipe.get('enabled', True))})
        path = work / f"{hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]}.onnx"
        t = time.perf_counter()
        if not path.is_file():
            if cfg.enabled:
                quantize(fp32_dir / "model.onnx", path, cfg, model_config=fp32_dir / "config.json")
            elif recipe.get("fuse"):
                fuse(fp32_dir / "model.onnx", path, fp32_dir / "config.json")
            else:
                shutil.copyfile(fp32_dir / "model.onnx", path)
        build_s = time.perf_counter() - t
        sess = ort.InferenceSession(str(path), session_options(args.threads), providers=["CPUExecutionProvider"])
        sessions[name] = sess
        rows[name] = {"recipe": recipe, "mb": round(path.stat().st_size / 1e6, 1), "file": str(path),
                      **{s: cosines(refs[s], embed(sess, tok, sets[s])) for s in sets}}
        print(f"{name}: {rows[name]['mb']} MB gate {rows[name]['gate']} held-out {rows[name]['held-out']} "
              f"(built in {build_s:.0f} s)", flush=True)

    texts = workloads.build(fp32_dir / "tokenizer.json")
    cells = {"b1 12 tok": [workloads.BATCH1_TEXT], "b32 ~40": texts["medium"], "b32 ~250": texts["long"]}
    feeds = {c: next(_feeds(tok, t)) for c, t in cells.items()}
    names = list(sessions)
    for cell, feed in feeds.items():
        samples = {n: [] for n in names}
        reps = 20 if cell.startswith("b1") else 1
        for rnd in range(args.rounds + 2):
            shift = rnd % len(names)
            for n in names[shift:] + names[:shift]:
                time.sleep(0.005)
                t = time.perf_counter()
                for _ in range(reps):
                    sessions[n].run(["last_hidden_state"], feed)
                if rnd >= 2:
                    samples[n].append((time.perf_counter() - t) / reps)
        for n in names:
            p50 = float(np.median(samples[n]))
            rows[n][cell] = round(p50 * 1000, 2) if cell.startswith("b1") else round(32 / p50, 1)
        print(cell, {n: rows[n][cell] for n in names}, flush=True)

    load = [round(x, 2) for x in os.getloadavg()]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "frontier.json").write_text(json.dumps({"threads": args.threads, "rounds": args.rounds,
                                                         "load_avg_at_end": load, "variants": rows}, indent=2) + "\n")
    lines = [f"{args.threads} threads, {args.rounds} interleaved rounds, model only; load average at end {load}", "",
             "| variant | MB | gate mean / p1 | held-out mean / p1 | b1 ms | b32x40 texts/s | b32x250 texts/s |",
             "|---|---:|---|---|---:|---:|---:|"]
    for n, r in rows.items():
        lines.append(f"| {n} | {r['mb']} | {r['gate']['mean']:.4f} / {r['gate']['p1']:.4f} | "
                     f"{r['held-out']['mean']:.4f} / {r['held-out']['p1']:.4f} | {r['b1 12 tok']} | "
                     f"{r['b32 ~40']} | {r['b32 ~250']} |")
    (args.out / "frontier.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
