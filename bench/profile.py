"""Where the time goes: onnxruntime's per-operator profile of each ONNX file, and the tokenizer's share.

Sessions are built with the runtime's own options (``functions.core.inference.encoder.session_options``)
plus profiling; node times are summed per operator type over a few runs of
the same batch the latency table uses.
"""
from __future__ import annotations

import json
import os
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np


def op_profile(onnx_path: Path, feeds: dict[str, np.ndarray], *, threads: int, runs: int) -> dict:
    import onnxruntime as ort

    from functions.core.inference.encoder import session_options

    opts = session_options(threads)
    with tempfile.TemporaryDirectory(prefix="cirrus-prof-") as tmp:
        opts.enable_profiling = True
        opts.profile_file_prefix = os.path.join(tmp, "ort")
        session = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
        session.run(None, feeds)  # warm-up, counted out below
        for _ in range(runs):
            session.run(None, feeds)
        events = json.loads(Path(session.end_profiling()).read_text())
    per_op: dict[str, float] = defaultdict(float)
    runs_seen = [e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"]
    first_measured = runs_seen[1]["ts"] if len(runs_seen) > 1 else 0
    for e in events:
        if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time") and e["ts"] >= first_measured:
            per_op[e.get("args", {}).get("op_name", "?")] += e["dur"] / 1000 / runs
    total = sum(per_op.values())
    ranked = sorted(per_op.items(), key=lambda kv: -kv[1])
    return {"ms_per_run": round(total, 2),
            "ops": [{"op": op, "ms": round(ms, 2), "share": round(ms / total, 3)} for op, ms in ranked[:8]]}


def tokenizer_share(model, texts: list[str], run_s: float, reps: int = 20) -> dict:
    """Tokenization (the runtime's own, batched) against one model call on the same texts."""
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        model.tokenize(texts)
        times.append(time.perf_counter() - t)
    tok = float(np.median(times))
    return {"tokenize_ms": round(tok * 1000, 3), "share_of_embed": round(tok / run_s, 3) if run_s else None}


def feeds_for(model, texts: list[str]) -> dict[str, np.ndarray]:
    """The exact feed the runtime builds for ``texts`` (one batch, padded to its longest)."""
    batches = list(model._batches(model.tokenize(texts)))
    assert len(batches) == 1, "profile one runtime batch at a time"
    return batches[0][1]
