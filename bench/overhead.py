"""Overhead around the model, before vs after a change: the API handler vs the raw session, the batch worker vs the model.

``python -m bench.overhead --tree before=DIR --tree after=DIR [--rounds 2]`` runs each measurement in a
fresh process of each tree (a checkout or ``git archive`` of a commit, with ``.venv`` and
``.cache/bundles``), the trees alternating round by round so load from other processes hits both:

- ``handler``: one 12-token text, ``handler(event)`` vs ``session.run`` on the same ids, interleaved in
  one process; p50 of wall time and of process CPU time. At 1 intra-op thread (Lambda's 1,769 MB, one
  vCPU) CPU time is what the call costs and is not inflated by waiting for a core on a shared host; at
  2 threads it also counts onnxruntime's pool thread spinning between calls. Two logging setups:
  ``quiet`` (WARNING, metrics off: what bench/handler_latency.py has always measured) and ``lambda``
  (the stack's INFO logs and EMF metrics, written to /dev/null).
- ``worker``: a 4,000-line job in chunks of 2,000 through the real splitter and worker handlers on moto
  (bench/batch_throughput.py), 1 thread, cProfile on the worker thread: the chunk's own work
  (``run_chunk``: read, parse, infer, encode lines) vs the model call inside it, and the job's lines/s.

Writes bench/results/overhead.json.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "results" / "overhead.json"

HANDLER = r"""
import json, os, statistics, sys, time, warnings
mode, threads, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
warnings.filterwarnings("ignore")
os.environ.update({"CIRRUS_MODEL_DIR": ".cache/bundles", "POWERTOOLS_TRACE_DISABLED": "true",
                   "CIRRUS_INTRA_OP_THREADS": threads,
                   "POWERTOOLS_LOG_LEVEL": "WARNING" if mode == "quiet" else "INFO",
                   "POWERTOOLS_METRICS_DISABLED": "true" if mode == "quiet" else "false"})
out_fd = os.dup(1)
os.dup2(os.open(os.devnull, os.O_WRONLY), 1)  # logs and EMF go nowhere, as into Lambda's pipe
import numpy as np
from bench.handler_latency import EVENT, Ctx
from functions.core.inference.model_store import get_model
from functions.handlers.api import handler
event = json.loads(EVENT.read_text())
text = json.loads(event["body"])["input"]
for _ in range(30):
    handler(event, Ctx())
model = get_model("all-minilm-l6-v2")
ids = np.array([model.tokenize([text]).encodings[0].ids], dtype=np.int64)
feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
fns = {"raw_session": lambda: model._session.run([model.manifest.output_name], feeds),
       "handler": lambda: handler(event, Ctx())}
wall, cpu = {k: [] for k in fns}, {k: [] for k in fns}
for i in range(n):
    for k in (list(fns) if i % 2 else list(fns)[::-1]):
        t, c = time.perf_counter(), time.process_time()
        fns[k]()
        cpu[k].append(time.process_time() - c)
        wall[k].append(time.perf_counter() - t)
med = lambda xs: round(statistics.median(xs) * 1000, 3)
row = {"threads": model.threads, "wall_p50_ms": {k: med(v) for k, v in wall.items()},
       "cpu_p50_ms": {k: med(v) for k, v in cpu.items()}}
row["wall_ratio"] = round(row["wall_p50_ms"]["handler"] / row["wall_p50_ms"]["raw_session"], 3)
row["cpu_ratio"] = round(row["cpu_p50_ms"]["handler"] / row["cpu_p50_ms"]["raw_session"], 3)
os.write(out_fd, (json.dumps(row) + "\n").encode())
"""

WORKER = r"""
import cProfile, json, os, pstats, sys, time, warnings
warnings.filterwarnings("ignore")
os.environ.update({"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1",
                   "AWS_REGION": "us-east-1", "POWERTOOLS_LOG_LEVEL": "WARNING", "POWERTOOLS_METRICS_DISABLED": "true",
                   "POWERTOOLS_TRACE_DISABLED": "true"})
os.environ.pop("AWS_ENDPOINT_URL", None)
from pathlib import Path
from bench import batch_throughput as bt
from functions.core.batch import worker
from functions.core.inference.model_store import ModelStore
from functions.core.settings import Settings
import functions.handlers.batch_worker as handler_module
bundles = Path(".cache/bundles")
store = ModelStore(Settings(model_dir=str(bundles), intra_op_threads=1))
store.get("all-minilm-l6-v2").embed(bt.texts(64))
profiles = []
original = worker.process_message
def profiled(*args, **kwargs):
    p = cProfile.Profile()
    p.enable()
    try:
        return original(*args, **kwargs)
    finally:
        p.disable()
        profiles.append(p)
handler_module.process_message = profiled
t = time.perf_counter()
job = bt.run(4000, 2000, 1, bundles, store)
wall = time.perf_counter() - t
stats = pstats.Stats(profiles[0])
for p in profiles[1:]:
    stats.add(p)
def cum(suffix):
    return round(sum(v[3] for k, v in stats.stats.items() if f"{k[0]}:{k[2]}".endswith(suffix)), 3)
row = {"lines": 4000, "chunk_lines": 2000, "status": job["status"], "job_lines_per_s": round(4000 / wall, 1),
       "worker_s": cum("worker.py:process_message"), "run_chunk_s": cum("worker.py:run_chunk"),
       "model_embed_s": cum("encoder.py:embed"), "session_run_s": cum("onnxruntime_inference_collection.py:run"),
       "line_json_s": round(cum("json/__init__.py:dumps") + cum("json_text.py:dumps"), 3)}
row["run_chunk_of_model"] = round(row["model_embed_s"] / row["run_chunk_s"], 3)
row["worker_of_model"] = round(row["model_embed_s"] / row["worker_s"], 3)
print(json.dumps(row))
"""


def _run(tree: Path, code: str, *args: str) -> dict:
    proc = subprocess.run([str(tree / ".venv" / "bin" / "python"), "-c", code, *args], cwd=tree,
                          env={**os.environ, "PYTHONPATH": str(tree)}, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise SystemExit(f"{tree}: {proc.stderr.strip().splitlines()[-1:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tree", action="append", required=True, metavar="NAME=DIR",
                    help="a tree to measure (repeat: before=..., after=...)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--n", type=int, default=400, help="handler calls per system and setup")
    args = ap.parse_args()
    trees = {name: Path(d).resolve() for name, d in (t.split("=", 1) for t in args.tree)}
    rows = []
    for rnd in range(args.rounds):
        for name, tree in trees.items():
            for threads in ("1", "2"):
                for mode in ("quiet", "lambda"):
                    load = os.getloadavg()[0]
                    row = {"round": rnd, "tree": name, "part": "handler", "mode": mode, "load_1min": round(load, 2),
                           **_run(tree, HANDLER, mode, threads, str(args.n))}
                    rows.append(row)
                    print(json.dumps(row), flush=True)
            row = {"round": rnd, "tree": name, "part": "worker", "load_1min": round(os.getloadavg()[0], 2),
                   **_run(tree, WORKER)}
            rows.append(row)
            print(json.dumps(row), flush=True)
    OUT.write_text(json.dumps({"trees": {k: str(v) for k, v in trees.items()}, "rounds": args.rounds,
                               "cpus": os.cpu_count(), "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                               "rows": rows}, indent=2) + "\n")
    print(f"wrote {OUT.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
