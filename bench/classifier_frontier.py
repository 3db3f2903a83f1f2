"""The classifier's recipes side by side: each built through the real pipeline and gated, then timed interleaved.

``python -m bench.classifier_frontier [--work DIR] [--rounds 4]`` fine-tunes the demo classifier once
(cached in DIR/model; training is seeded, so it is the shipped bundle's model), builds each candidate
with ``model_export.pipeline.build`` (export, quantize, the text-classification gate; ``force`` keeps a
failing candidate so it can be timed), and times ``OnnxModel.classify`` on batch 1 and on 32 texts of
~40 and ~250 tokens, candidates interleaved in every round. Writes bench/results/classifier_frontier.json.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from dataclasses import replace
from pathlib import Path

from bench import machine, workloads
from model_export.config import QuantizeConfig
from model_export.defaults import PROFILES

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "results" / "classifier_frontier.json"


def candidates() -> dict[str, QuantizeConfig]:
    from model_export.tasks import get_task

    task = get_task("text-classification")
    return {
        "unfused, every FFN fp32 (shipped before)": QuantizeConfig(arch="x86_64", exclude=task.quantize_exclude),
        "fused, every FFN fp32": QuantizeConfig(arch="x86_64", fuse=True, exclude=task.quantize_exclude),
        "fused, accurate profile (FFN down + FFN up L3-5 fp32; shipped)": PROFILES["accurate"].quantize,
        "fused, fast profile (all int8)": PROFILES["fast"].quantize,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=ROOT / ".cache" / "bench" / "classifier")
    ap.add_argument("--rounds", type=int, default=4)
    args = ap.parse_args()
    m = machine.describe()
    m.pop("_cpu", None)
    from functions.core.inference.encoder import OnnxModel
    from functions.core.inference.manifest import verify_bundle
    from model_export import classifier
    from model_export.pipeline import build

    model_dir = args.work / "model"
    if not (model_dir / "config.json").is_file():
        classifier.train(model_dir)
    rows, models = {}, {}
    for i, (name, quantize) in enumerate(candidates().items()):
        target = args.work / f"candidate-{i}"
        manifest = build(replace(classifier._config(str(model_dir)), quantize=quantize), target, force=True)
        rows[name] = {"gate": manifest.gate.model_dump(), "mb": round((target / "model.onnx").stat().st_size / 1e6, 1)}
        models[name] = OnnxModel(target, verify_bundle(target))
        print(name, json.dumps(rows[name]["gate"]["metrics"]), flush=True)

    tok = ROOT / ".cache" / "bundles" / "all-minilm-l6-v2" / "tokenizer.json"
    texts = workloads.build(tok)
    cells = {"b1": ([workloads.BATCH1_TEXT], 60), "b32x40": (texts["medium"][:32], 8), "b32x250": (texts["long"][:32], 3)}
    names = list(models)
    samples = {c: {n: [] for n in names} for c in cells}
    for n in names:
        for batch, _ in cells.values():
            models[n].classify(batch)  # warm-up
    for rnd in range(args.rounds):
        order = names[rnd % len(names):] + names[:rnd % len(names)]
        for cell, (batch, reps) in cells.items():
            for _ in range(reps):
                for n in order:
                    t = time.perf_counter()
                    models[n].classify(batch)
                    samples[cell][n].append(time.perf_counter() - t)
    base = names[0]
    for n in names:
        rows[n]["p50_ms"] = {c: round(statistics.median(samples[c][n]) * 1000, 3) for c in cells}
        rows[n]["x_shipped_before"] = {c: round(rows[base]["p50_ms"][c] / rows[n]["p50_ms"][c], 2) for c in cells}
    out = {"machine": m, "threads": models[base].threads, "rounds": args.rounds,
           "load_avg_at_end": [round(x, 2) for x in os.getloadavg()], "candidates": rows}
    OUT.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps({n: (r["gate"]["passed"], r["p50_ms"]) for n, r in rows.items()}, indent=1))
    print(f"wrote {OUT.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
