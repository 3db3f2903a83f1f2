"""Benchmark: API handler warm latency (p50/p99) vs the raw onnxruntime session, and cold start.

Run from the repo root: ``python -m bench.handler_latency [--bundles .cache/bundles] [--n 300]``.
Cold start is measured in a fresh interpreter: process start → handler imported → first
response (model loaded from a local bundle dir, sha256-verified, as a container would from /tmp).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EVENT = ROOT / "tests" / "events" / "embeddings_post.json"

COLD_SCRIPT = r"""
import time; t0 = time.perf_counter()
import json, sys
from functions.handlers.api import handler
t_import = time.perf_counter()
class Ctx:
    function_name = "bench"; memory_limit_in_mb = 2048; aws_request_id = "cold"
    invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:bench"
event = json.load(open(sys.argv[1]))
resp = handler(event, Ctx())
t_done = time.perf_counter()
assert resp["statusCode"] == 200, resp
print(json.dumps({"import_s": t_import - t0, "first_response_s": t_done - t0}))
"""


class Ctx:
    function_name = "bench"
    memory_limit_in_mb = 2048
    aws_request_id = "warm"
    invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:bench"


def pct(samples: list[float], q: float) -> float:
    s = sorted(samples)
    return s[min(len(s) - 1, int(round(q / 100 * (len(s) - 1))))]


def summary(samples: list[float]) -> dict[str, float]:
    ms = [x * 1000 for x in samples]
    return {"p50_ms": round(statistics.median(ms), 3), "p99_ms": round(pct(ms, 99), 3),
            "mean_ms": round(statistics.fmean(ms), 3), "n": len(ms)}


def interleaved(fns: dict[str, object], n: int) -> dict[str, dict[str, float]]:
    """Time each function ``n`` times, round-robin in a rotating order (host noise hits all alike)."""
    names = list(fns)
    samples: dict[str, list[float]] = {k: [] for k in names}
    for i in range(n):
        shift = i % len(names)
        for k in names[shift:] + names[:shift]:
            t = time.perf_counter()
            fns[k]()
            samples[k].append(time.perf_counter() - t)
    return {k: summary(v) for k, v in samples.items()}


def _with_lambda_logging(fn):
    """Run ``fn`` with the stack's log level (INFO) and metrics on, stdout going to /dev/null."""
    from functions.core.observability import logger

    saved_fd, level = os.dup(1), logger.log_level
    devnull = os.open(os.devnull, os.O_WRONLY)
    sys.stdout.flush()
    os.dup2(devnull, 1)
    os.environ["POWERTOOLS_METRICS_DISABLED"] = "false"
    logger.setLevel("INFO")
    try:
        return fn()
    finally:
        sys.stdout.flush()
        os.dup2(saved_fd, 1)
        os.close(devnull)
        os.close(saved_fd)
        os.environ["POWERTOOLS_METRICS_DISABLED"] = "true"
        logger.setLevel(level)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundles", default=str(ROOT / ".cache" / "bundles"))
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--cold-runs", type=int, default=3)
    ap.add_argument("--batch", type=int, default=32, help="inputs in the batched request")
    ap.add_argument("--out", help="write the results JSON here too")
    args = ap.parse_args()

    env = {**os.environ, "CIRRUS_MODEL_DIR": args.bundles, "POWERTOOLS_LOG_LEVEL": "WARNING",
           "POWERTOOLS_METRICS_DISABLED": "true", "POWERTOOLS_TRACE_DISABLED": "true"}
    os.environ.update(env)

    # --- cold start, fresh processes --------------------------------------------------------------
    cold = []
    for _ in range(args.cold_runs):
        t = time.perf_counter()
        proc = subprocess.run([sys.executable, "-c", COLD_SCRIPT, str(EVENT)], cwd=ROOT, env=env,
                              capture_output=True, text=True, check=True)
        wall = time.perf_counter() - t
        last = [ln for ln in proc.stdout.splitlines() if ln.startswith('{"import_s"')][-1]
        cold.append({**json.loads(last), "process_wall_s": wall})

    # --- warm, in this process ------------------------------------------------------------------
    import numpy as np

    from functions.core.inference.model_store import get_model
    from functions.handlers.api import handler

    event = json.loads(EVENT.read_text())
    text = json.loads(event["body"])["input"]
    batch_texts = [f"{text} (variant {i}, with a few more words to vary the length {'x ' * (i % 7)})"
                   for i in range(args.batch)]
    batch_event = {**event, "body": json.dumps({"model": "all-minilm-l6-v2", "input": batch_texts})}
    for _ in range(20):
        handler(event, Ctx())
        handler(batch_event, Ctx())
    model = get_model("all-minilm-l6-v2")
    session = model._session
    enc = model.tokenize([text]).encodings[0]
    ids = np.array([enc.ids], dtype=np.int64)
    feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
    _, batch_feeds = next(iter(model._batches(model.tokenize(batch_texts))))

    single = {
        "raw_session": lambda: session.run([model.manifest.output_name], feeds),
        "runtime_embed": lambda: model.embed([text]),
        "handler": lambda: handler(event, Ctx()),
    }
    results = {
        "threads": model.threads,
        "model_version": model.version,
        "single": interleaved(single, args.n),
        # As Lambda runs it: INFO logs and EMF metrics written (to /dev/null here, a pipe in Lambda).
        "single_lambda_logging": _with_lambda_logging(lambda: interleaved(single, args.n)),
        f"batch{args.batch}": interleaved({
            "raw_session": lambda: session.run([model.manifest.output_name], batch_feeds),
            "runtime_embed": lambda: model.embed(batch_texts),
            "handler": lambda: handler(batch_event, Ctx()),
        }, max(20, args.n // 10)),
        "cold_start": {
            "runs": cold,
            "first_response_s_median": round(statistics.median(c["first_response_s"] for c in cold), 3),
            "import_s_median": round(statistics.median(c["import_s"] for c in cold), 3),
            "process_wall_s_median": round(statistics.median(c["process_wall_s"] for c in cold), 3),
        },
    }
    text_out = json.dumps(results, indent=2)
    print(text_out)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text_out + "\n")


if __name__ == "__main__":
    main()
