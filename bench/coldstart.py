"""Cold start in a fresh process: import -> session -> first embedding, Cirrus's runtime vs the peers.

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

# Cirrus's runtime from a fresh process: import, get_model (sha256 + session), first embedding.
_CIRRUS_SCRIPT = r"""
import time; t0 = time.perf_counter()
import json, os, sys
{setup}
from functions.core.inference.model_store import get_model
t1 = time.perf_counter()
model = get_model("all-minilm-l6-v2")
t2 = time.perf_counter()
vec, _ = model.embed([sys.argv[1]])
t3 = time.perf_counter()
assert vec.shape == (1, 384)
print(json.dumps({{"import_s": t1 - t0, "load_s": t2 - t1, "first_result_s": t3 - t0}}))
"""

SCRIPTS = {
    # The Lambda's path: the model store finds the bundle, checks sha256, builds the session.
    "onnx-int8": _CIRRUS_SCRIPT.format(setup=""),
    # The same runtime on the fast-profile bundle (a smaller graph: fewer fp32 weights to load).
    "onnx-int8-fast": _CIRRUS_SCRIPT.format(
        setup='os.environ["CIRRUS_MODEL_DIR"] = os.environ["CIRRUS_BENCH_FAST_BUNDLES"]'),
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
    # The peers, as their users start them (peer packages from .cache/bench-peers).
    "fastembed-int8": r"""
import time; t0 = time.perf_counter()
import json, os, sys
sys.path.append(os.environ["CIRRUS_BENCH_PEERS"])
from fastembed import TextEmbedding
from fastembed.common.model_description import ModelSource, PoolingType
t1 = time.perf_counter()
name = "cirrus-bench/all-MiniLM-L6-v2-int8"
TextEmbedding.add_custom_model(model=name, pooling=PoolingType.MEAN, normalization=True,
                               sources=ModelSource(hf=name), dim=384, model_file="model.onnx")
model = TextEmbedding(name, specific_model_path=os.environ["CIRRUS_BENCH_FASTEMBED"], local_files_only=True)
t2 = time.perf_counter()
vec = list(model.embed([sys.argv[1]]))[0]
t3 = time.perf_counter()
assert vec.shape == (384,)
print(json.dumps({"import_s": t1 - t0, "load_s": t2 - t1, "first_result_s": t3 - t0}))
""",
    "st-onnx-int8": r"""
import time; t0 = time.perf_counter()
import json, os, sys
sys.path.append(os.environ["CIRRUS_BENCH_PEERS"])
from sentence_transformers import SentenceTransformer
t1 = time.perf_counter()
model = SentenceTransformer(os.environ["CIRRUS_BENCH_ST"], backend="onnx", device="cpu",
                            model_kwargs={"file_name": os.environ["CIRRUS_BENCH_ST_FILE"]})
t2 = time.perf_counter()
vec = model.encode([sys.argv[1]], normalize_embeddings=True)
t3 = time.perf_counter()
assert vec.shape == (1, 384)
print(json.dumps({"import_s": t1 - t0, "load_s": t2 - t1, "first_result_s": t3 - t0}))
""",
    "pytorch-fp32": r"""
import time; t0 = time.perf_counter()
import json, os, sys
sys.path.append(os.environ["CIRRUS_BENCH_PEERS"])
from sentence_transformers import SentenceTransformer
t1 = time.perf_counter()
from bench.engines import source_dir
model = SentenceTransformer(str(source_dir()), device="cpu")
t2 = time.perf_counter()
vec = model.encode([sys.argv[1]], normalize_embeddings=True)
t3 = time.perf_counter()
assert vec.shape == (1, 384)
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


def measure(bundles: Path, reps: int, say=print, *, dirs: dict[str, Path]) -> dict:
    from bench.engines import PEER_DIR, st_cpu_config

    env = {**os.environ, "CIRRUS_MODEL_DIR": str(bundles), "PYTHONPATH": str(ROOT),
           "CIRRUS_BENCH_PEERS": str(PEER_DIR), "CIRRUS_BENCH_FASTEMBED": str(dirs["fastembed-int8"]),
           "CIRRUS_BENCH_ST": str(dirs["st-onnx-int8"]),
           "CIRRUS_BENCH_FAST_BUNDLES": str(dirs["onnx-int8-fast"].parent),
           "CIRRUS_BENCH_ST_FILE": f"onnx/model_qint8_{st_cpu_config()}.onnx",
           "POWERTOOLS_LOG_LEVEL": "WARNING", "POWERTOOLS_METRICS_DISABLED": "true",
           "POWERTOOLS_TRACE_DISABLED": "true", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false"}
    engines = list(SCRIPTS)
    runs: dict[str, list[dict]] = {e: [] for e in engines}
    for rnd in range(reps + 1):
        for engine in engines[rnd % len(engines):] + engines[:rnd % len(engines)]:  # rotate the order
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
