"""One engine in its own process, driven over stdin/stdout by the benchmark (``python -m bench.worker``).

A process per (engine, threads) keeps thread pools and allocators apart and makes peak memory
per engine a plain reading of the process's high-water mark. The coordinator sends one JSON
command per line and waits for the answer, so exactly one engine computes at any moment.
"""
from __future__ import annotations

import argparse
import base64
import json
import os
import sys
import time
from pathlib import Path


def memory_mb() -> dict[str, float]:
    """Resident set now and its high-water mark (VmHWM: the peak since the process started)."""
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = round(int(value.split()[0]) / 1024, 1)
    return {"rss_mb": fields.get("VmRSS", 0.0), "peak_rss_mb": fields.get("VmHWM", 0.0)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--engine", required=True)
    ap.add_argument("--threads", type=int, required=True)
    ap.add_argument("--bundles", type=Path, required=True)
    ap.add_argument("--bundle", action="append", default=[], metavar="ENGINE=DIR",
                    help="bundle folder of an ONNX engine other than the shipped one")
    args = ap.parse_args()

    # Answers go to the real stdout; anything a library prints goes to stderr (the worker's log).
    answers = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr

    from bench.engines import load

    started = time.perf_counter()
    dirs = {k: Path(v) for k, _, v in (b.partition("=") for b in args.bundle)}
    embed = load(args.engine, threads=args.threads, bundles_dir=args.bundles, dirs=dirs)
    loaded = {"load_s": round(time.perf_counter() - started, 3), **memory_mb()}
    workloads: dict[str, list[str]] = {}

    def reply(obj: dict) -> None:
        answers.write(json.dumps(obj) + "\n")

    reply({"ready": True, **loaded})
    for line in sys.stdin:
        cmd = json.loads(line)
        op = cmd["op"]
        if op == "workloads":
            workloads = cmd["workloads"]
            reply({"ok": True})
        elif op == "time":
            texts = workloads[cmd["workload"]]
            n = cmd["batch"]
            start = (cmd.get("offset", 0) * n) % len(texts)
            batch = (texts[start:] + texts[:start])[:n]  # rotate, so batch-1 runs visit every text
            t = time.perf_counter()
            embed(batch)
            reply({"s": time.perf_counter() - t})
        elif op == "embed":
            vectors = embed(cmd["texts"]).astype("float32")
            reply({"shape": list(vectors.shape), "b64": base64.b64encode(vectors.tobytes()).decode()})
        elif op == "memory":
            reply(memory_mb())
        elif op == "quit":
            reply({"bye": True, **memory_mb()})
            return
        else:
            reply({"error": f"unknown op {op!r}"})


if __name__ == "__main__":
    main()
