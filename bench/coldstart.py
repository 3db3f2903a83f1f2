"""Cold start in a fresh process: import -> session -> first embedding, Lambda runtime vs torch+transformers.

Each repetition is a new interpreter (as a new Lambda container is); the two runtimes alternate,
and a first unrecorded round of each fills the page cache, as a container image or /tmp would be
on a warm host. Times inside the process start at its first line; ``process_wall_s`` adds the
interpreter's own start-up.
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TEXT = "How do I reset my password?"

SCRIPTS = {
    # The Lambda's path: the model store finds the bundle, checks sha256, builds the session.
    "onnx-int8": r"""
import time; t0 = time.perf_counter()
import json, sys
from functions.core.inference.model_store import get_model
t1 = time.perf_counter()
model = get_model("all-minilm-l6-v2")
t2 = time.perf_counter()
vec, _ = model.embed([sys.argv[1]])
t3 = time.perf_counter()
assert vec.shape == (1, 384)
print(json.dumps({"import_s": t1 - t0, "load_s": t2 - t1, "first_result_s": t3 - t0}))
""",
    # The floor: onnxruntime + tokenizers + numpy and nothing of Cirrus (no settings, sha256,
    # Powertools or boto3), to show what the runtime's own imports and checks add.
    "onnx-bare": r"""
import time; t0 = time.perf_counter()
import json, os, sys
import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer
t1 = time.perf_counter()
bundle = os.path.join(os.environ["CIRRUS_MODEL_DIR"], "all-minilm-l6-v2")
tok = Tokenizer.from_file(os.path.join(bundle, "tokenizer.json"))
session = ort.InferenceSession(os.path.join(bundle, "model.onnx"), providers=["CPUExecutionProvider"])
t2 = time.perf_counter()
enc = tok.encode(sys.argv[1])
ids = np.array([enc.ids], dtype=np.int64)
mask = np.ones_like(ids)
hidden = session.run(None, {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)})[0]
vec = hidden.mean(axis=1)
vec /= np.linalg.norm(vec, axis=1, keepdims=True)
t3 = time.perf_counter()
assert vec.shape == (1, 384)
print(json.dumps({"import_s": t1 - t0, "load_s": t2 - t1, "first_result_s": t3 - t0}))
""",
    "pytorch-fp32": r"""
import time; t0 = time.perf_counter()
import json, sys
import torch
from transformers import AutoModel, AutoTokenizer
from bench.engines import source_dir
t1 = time.perf_counter()
src = source_dir()
tokenizer = AutoTokenizer.from_pretrained(src)
model = AutoModel.from_pretrained(src).eval()
t2 = time.perf_counter()
with torch.inference_mode():
    enc = tokenizer([sys.argv[1]], padding=True, truncation=True, max_length=256, return_tensors="pt")
    hidden = model(**enc).last_hidden_state
    mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    vec = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=1)
t3 = time.perf_counter()
assert tuple(vec.shape) == (1, 384)
print(json.dumps({"import_s": t1 - t0, "load_s": t2 - t1, "first_result_s": t3 - t0}))
""",
}


def _once(engine: str, env: dict[str, str]) -> dict[str, float]:
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", SCRIPTS[engine], TEXT], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        raise RuntimeError(f"cold start of {engine} failed: {proc.stderr.strip().splitlines()[-1:]}")
    last = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")][-1]
    return {**{k: round(v, 4) for k, v in json.loads(last).items()}, "process_wall_s": round(wall, 4)}


def measure(bundles: Path, reps: int, say=print) -> dict:
    env = {**os.environ, "CIRRUS_MODEL_DIR": str(bundles), "PYTHONPATH": str(ROOT),
           "POWERTOOLS_LOG_LEVEL": "WARNING", "POWERTOOLS_METRICS_DISABLED": "true",
           "POWERTOOLS_TRACE_DISABLED": "true", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false"}
    engines = list(SCRIPTS)
    runs: dict[str, list[dict]] = {e: [] for e in engines}
    for rnd in range(reps + 1):
        for engine in (engines if rnd % 2 == 0 else engines[::-1]):
            result = _once(engine, env)
            if rnd > 0:  # round 0 only warms the page cache
                runs[engine].append(result)
    out = {}
    for engine, rs in runs.items():
        out[engine] = {"runs": rs, **{f"{k}_median": round(statistics.median(r[k] for r in rs), 3)
                                      for k in ("import_s", "load_s", "first_result_s", "process_wall_s")}}
        say(f"  cold start {engine:<13} first result {out[engine]['first_result_s_median']:.2f} s "
            f"(process wall {out[engine]['process_wall_s_median']:.2f} s, n={len(rs)})")
    return out
