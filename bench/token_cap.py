"""Embedding time per request size, to set CIRRUS_MAX_REQUEST_TOKENS: the api function must finish
the largest allowed request inside its timeout (29 s), on the vCPUs its stage memory buys.

    python -m bench.token_cap [--threads 1] [--tokens 16384,65536,131072] [--rounds 2]

Lambda gives ~1 vCPU per 1,769 MB: the dev api function (2,048 MB) gets about 1.2 vCPU, so the
default is one onnxruntime thread. Texts are full-length (256-token) inputs, the worst case per token.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

from bench.machine import describe, one_line
from functions.core.inference.encoder import OnnxModel
from functions.core.inference.manifest import Manifest

BUNDLE = Path(".cache/bundles/all-minilm-l6-v2")


def texts_for(tokens: int, per_text: int = 256) -> list[str]:
    # ~1 token per short English word; the tokenizer truncates at 256, so each text costs <= 256.
    words = ("the parcel arrived late and the box was damaged so I would like a refund please "
             "or a replacement sent by express delivery to my home address ").split()
    text = " ".join(words[i % len(words)] for i in range(per_text * 2))
    return [text] * max(1, tokens // per_text)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.token_cap", description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--tokens", default="16384,65536,131072")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out", default="bench/results/token_cap.json")
    args = ap.parse_args(argv)
    machine = describe()
    print(one_line(machine), "load", os.getloadavg())
    manifest = Manifest.model_validate_json((BUNDLE / "manifest.json").read_text())
    model = OnnxModel(BUNDLE, manifest, intra_op_threads=args.threads)
    sizes = [int(s) for s in args.tokens.split(",")]
    model.embed(texts_for(2048))  # warm-up
    seen: dict[int, list[float]] = {s: [] for s in sizes}
    counted: dict[int, int] = {}
    for _ in range(args.rounds):  # interleaved: every size in every round
        for size in sizes:
            texts = texts_for(size)
            started = time.perf_counter()
            _, counts = model.embed(texts)
            seen[size].append(time.perf_counter() - started)
            counted[size] = sum(counts)
    rows = []
    for size in sizes:
        med = statistics.median(seen[size])
        rows.append({"tokens": counted[size], "inputs": len(texts_for(size)), "median_s": round(med, 2),
                     "tokens_per_s": round(counted[size] / med)})
        print(rows[-1])
    out = {"machine": {k: v for k, v in machine.items() if k != "_cpu"}, "threads": args.threads,
           "load_avg_at_end": os.getloadavg(), "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
