"""``python -m bench``: every benchmark in one run, written to bench/results/ (JSON, markdown, plots).

Order matters on a small machine: the GEMM peak and the interleaved engine matrix run first with
nothing else of ours alive, then cold starts, the handler, the local API and batch jobs, each
after the previous one has stopped its processes.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from bench import api_path, ceiling, coldstart, cost, engines, machine, profile, report, workloads
from bench.latency import Cell, Worker, parity, run_cells
from model_export.pipeline import load_eval_texts

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = "pytorch-fp32"
SHIPPED = "onnx-int8"
PEER = "fastembed-int8"  # the peer a CPU-only embeddings user would pick


@dataclass(frozen=True)
class Plan:
    """How many repetitions each part gets: ``quick`` to check the harness, ``full`` for the README."""

    b1: int
    b32: dict[str, int]
    t1_b1: int
    t1_b32: dict[str, int]
    warmup: int
    cold_reps: int
    peak_s: float
    profile_runs: int
    api_seconds: float
    handler_n: int

    def cells(self, all_threads: int) -> list[Cell]:
        """The peer table's columns at all threads, then the same at 1 thread (cost: 1 vCPU)."""
        cells = [Cell(all_threads, "b1", 1, self.b1, self.warmup)]
        cells += [Cell(all_threads, w, 32, n, self.warmup if w != "long" else 1) for w, n in self.b32.items()]
        if all_threads > 1:
            cells.append(Cell(1, "b1", 1, self.t1_b1, self.warmup))
            cells += [Cell(1, w, 32, n, 1) for w, n in self.t1_b32.items()]
        return cells


PLANS = {
    "quick": Plan(b1=15, b32={"medium": 3, "long": 2}, t1_b1=10, t1_b32={"medium": 2, "long": 1},
                  warmup=1, cold_reps=2, peak_s=0.5, profile_runs=2, api_seconds=2.0, handler_n=40),
    "full": Plan(b1=80, b32={"medium": 15, "long": 6}, t1_b1=40, t1_b32={"medium": 8, "long": 3},
                 warmup=2, cold_reps=5, peak_s=2.0, profile_runs=5, api_seconds=8.0, handler_n=200),
}


def say(msg: str) -> None:
    print(msg, flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="few repetitions: checks the harness in ~2-3 min")
    ap.add_argument("--bundles", type=Path, default=ROOT / ".cache" / "bundles")
    ap.add_argument("--cache", type=Path, default=ROOT / ".cache" / "bench",
                    help="where the fp32 export and the candidate model are kept between runs")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    ap.add_argument("--skip", default="", metavar="A,B",
                    help="parts to leave out: cold, handler, api, batch, profile, memory")
    ap.add_argument("--candidates", action="store_true",
                    help="also time the project's own fp32 export next to the peers")
    args = ap.parse_args(argv)
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    plan = PLANS["quick" if args.quick else "full"]
    raw = args.out / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()

    m = machine.describe()
    say(f"machine: {machine.one_line(m)}; load average {m['load_avg_at_start']}")
    results: dict = {"mode": "quick" if args.quick else "full", "machine": m,
                     "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}

    # --- models ---------------------------------------------------------------------------------
    shipped_dir = args.bundles / engines.MODEL_NAME
    if not (shipped_dir / "manifest.json").is_file():
        say(f"no shipped bundle in {shipped_dir}: building it (`make bundles` does the same)")
        from model_export.defaults import ensure_default_bundles

        ensure_default_bundles(args.bundles, [engines.MODEL_NAME])
    dirs = {"onnx-fp32": engines.fp32_bundle(args.bundles, args.cache, say=say)}
    dirs["fastembed-int8"] = engines.fastembed_dir(args.cache, dirs["onnx-fp32"], say=say)
    dirs["st-onnx-int8"] = engines.st_onnx_dir(args.cache, say=say)
    dirs["onnx-int8-fast"] = engines.fast_bundle(args.cache, say=say)
    names = list(engines.ENGINES) + (list(engines.CANDIDATES) if args.candidates else [])
    results["engines"] = names
    results["files"] = _files(shipped_dir, dirs)
    texts = {"b1": [workloads.BATCH1_TEXT], **workloads.build(shipped_dir / "tokenizer.json")}
    results["workloads"] = workloads.token_stats(shipped_dir / "tokenizer.json", texts)

    # --- the ceiling: this CPU's GEMM peak, before any worker exists ------------------------------
    all_threads = m["cores"]
    thread_counts = sorted({1, all_threads})
    say("peak: onnxruntime GEMM (1024^3) fp32 / u8u8 / u8s8")
    peaks = ceiling.measure_peaks(thread_counts, plan.peak_s)
    say(f"  {peaks}")

    # --- engines, interleaved ------------------------------------------------------------------
    say(f"engines: {', '.join(names)} at {thread_counts} threads, one process each")
    workers = {(e, t): Worker(e, t, bundles=args.bundles, dirs=dirs, log_dir=raw) for e in names for t in thread_counts}
    try:
        for w in workers.values():
            w.wait_ready()
            w.ask(op="workloads", workloads=texts)
        say("latency (p50 per call; rounds interleave the engines):")
        results["latency"] = run_cells(workers, names, plan.cells(all_threads), say=say)
        say("parity vs PyTorch fp32 (cosine): the gate's set and the held-out set")
        top = {e: workers[(e, all_threads)] for e in names}
        results["parity"] = {"gate": parity(top, REFERENCE, load_eval_texts()),
                             "held-out": parity(top, REFERENCE, workloads.held_out_texts())}
        for set_name, rows in results["parity"].items():
            say(f"  {set_name}: " + ", ".join(f"{e} {r['mean_cosine']:.4f}/{r['p1_cosine']:.4f}" for e, r in rows.items()))
    finally:
        for w in workers.values():
            try:
                w.close()
            except Exception:  # noqa: BLE001 - a dead worker must not hide the real error
                w.proc.kill()

    if "memory" not in skip:
        say("memory: peak RSS per engine in a fresh process, growing workloads")
        results["memory"] = _memory(names, all_threads, args.bundles, dirs, raw, texts)

    # --- profile --------------------------------------------------------------------------------
    if "profile" not in skip:
        say("profile: onnxruntime operators per file (medium, batch 32, 1 thread) and tokenizer share")
        results["profile"] = _profile(shipped_dir, dirs, texts, plan, results["latency"])

    # --- cold start, handler, API, batch ----------------------------------------------------------
    if "cold" not in skip:
        say("cold start (fresh processes, alternating)")
        results["cold_start"] = coldstart.measure(args.bundles, plan.cold_reps, say=say, dirs=dirs)
    if "handler" not in skip:
        say("handler: bench/handler_latency.py (raw session vs runtime vs handler, in-process)")
        results["handler"] = _handler(args.bundles, raw, plan)
    if "api" not in skip:
        say("API: the local system (`python -m local up`) under 1/8/32 concurrent clients")
        try:
            results["api"] = api_path.measure(args.bundles, raw, seconds=plan.api_seconds, say=say)
        except RuntimeError as exc:
            results["api"] = {"unavailable": str(exc)}
            say(f"  not measured: {exc}")
    if "batch" not in skip:
        results["batch"] = _batch(raw, args.quick)

    # --- derived: ceiling, cost, targets --------------------------------------------------------
    results["peaks"] = {"measured_gops": peaks, "theoretical": ceiling.theoretical_peak(m["_cpu"])}
    results["ceiling"] = _ceiling(shipped_dir, results, all_threads, peaks)
    results["cost"] = _cost(results, all_threads)
    results["targets"] = _targets(results, all_threads)
    results["elapsed_s"] = round(time.perf_counter() - t_start, 1)
    m["load_avg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    m.pop("_cpu", None)

    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    report.write(results, args.out)
    say(f"wrote {args.out}/results.json, results.md and plots in {results['elapsed_s']:.0f} s")
    for t in results["targets"]:
        say(f"  target {t['name']}: {t['measured']} (need {t['need']}) -> {'MET' if t['met'] else 'MISSED'}")
    return 0


def _files(shipped_dir: Path, dirs: dict[str, Path]) -> dict:
    src = engines.source_dir()
    out = {"pytorch-fp32": {"file": "model.safetensors", "mb": round((src / "model.safetensors").stat().st_size / 1e6, 1)},
           "onnx-int8": {"file": "model.onnx (shipped bundle)", "mb": round((shipped_dir / "model.onnx").stat().st_size / 1e6, 1)}}
    for name, d in dirs.items():
        f = d / "model.onnx" if (d / "model.onnx").is_file() else d / "onnx" / f"model_qint8_{engines.st_cpu_config()}.onnx"
        out[name] = {"file": f.name, "mb": round(f.stat().st_size / 1e6, 1)}
    out["ort-fastembed-file"] = out["fastembed-int8"]
    return out


def _memory(names: list[str], threads: int, bundles: Path, dirs: dict[str, Path], raw: Path,
            texts: dict) -> dict:
    """High-water RSS after loading, then after each of medium b1, medium b32, long b32 (in that order)."""
    out = {}
    for engine in names:
        w = Worker(engine, threads, bundles=bundles, dirs=dirs, log_dir=raw)
        try:
            row = {"after_load": w.wait_ready()["peak_rss_mb"]}
            w.ask(op="workloads", workloads=texts)
            for workload, batch in (("b1", 1), ("medium", 32), ("long", 32)):
                w.ask(op="time", workload=workload, batch=batch)
                row[f"{workload}_b{batch}"] = w.ask(op="memory")["peak_rss_mb"]
        finally:
            w.close()
        out[engine] = row
        say(f"  {engine:<15} peak RSS MB {row}")
    return out


def _profile(shipped_dir: Path, dirs: dict[str, Path], texts: dict, plan: Plan, latency: dict) -> dict:
    from functions.core.inference.manifest import verify_bundle
    from functions.core.inference.encoder import OnnxModel

    model = OnnxModel(shipped_dir, verify_bundle(shipped_dir), intra_op_threads=1)
    feeds = profile.feeds_for(model, texts["medium"])
    files = {"onnx-int8": shipped_dir / "model.onnx", "onnx-int8-fast": dirs["onnx-int8-fast"] / "model.onnx",
             "fastembed-int8": dirs["fastembed-int8"] / "model.onnx"}
    out = {"ops": {}, "tokenizer": {}}
    for name, f in files.items():
        out["ops"][name] = profile.op_profile(f, feeds, threads=1, runs=plan.profile_runs)
    for key, workload in (("t1/b1/b1", "b1"), ("t1/medium/b32", "medium")):
        cell = latency.get(key) or latency.get(key.replace("t1/", f"t{model.threads}/"))
        if cell:
            run_s = cell[SHIPPED]["p50_ms"] / 1000
            out["tokenizer"][key] = profile.tokenizer_share(model, texts[workload][:cell["batch"]], run_s)
    return out


def _handler(bundles: Path, raw: Path, plan: Plan) -> dict:
    out_file = raw / "handler_latency.json"
    proc = subprocess.run([sys.executable, "-m", "bench.handler_latency", "--bundles", str(bundles),
                           "--n", str(plan.handler_n), "--cold-runs", str(max(2, plan.cold_reps)),
                           "--out", str(out_file)], cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        return {"unavailable": f"bench.handler_latency failed: {proc.stderr.strip().splitlines()[-1:]}"}
    data = json.loads(out_file.read_text())
    say(f"  handler single p50 {data['single']['handler']['p50_ms']} ms vs raw session "
        f"{data['single']['raw_session']['p50_ms']} ms")
    return data


def _batch(raw: Path, quick: bool) -> dict:
    """Batch-job lines/s from the batch engineer's bench/batch_throughput.py (real handlers on moto)."""
    if importlib.util.find_spec("bench.batch_throughput") is None:
        say("batch: bench/batch_throughput.py is not there: batch lines/s not measured")
        return {"unavailable": "bench/batch_throughput.py not present in this checkout"}
    from bench import batch_throughput

    # A 10k-line job at a small and a large chunk size, 1 and 2 workers (this machine has 2 cores).
    sizes = ["--lines", "2000", "--chunks", "500", "--workers", "1,2"] if quick else \
        ["--lines", "10000", "--chunks", "100,2000", "--workers", "1,2", "--repeats", "1"]
    cmd = [sys.executable, "-m", "bench.batch_throughput", *sizes]
    say(f"batch: {' '.join(cmd[1:])}")
    out_file = Path(batch_throughput.OUT)
    out_file.unlink(missing_ok=True)
    with open(raw / "batch_throughput.log", "w") as log:
        proc = subprocess.run(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    if proc.returncode != 0 or not out_file.is_file():
        return {"unavailable": f"bench.batch_throughput failed (rc {proc.returncode}); see {raw / 'batch_throughput.log'}"}
    data = json.loads(out_file.read_text())
    for row in data.get("runs", []):
        say(f"  {row['lines']} lines, chunks of {row['chunk_lines']}, {row['workers']} workers: {row['lines_per_s']} lines/s")
    return data


def _ceiling(shipped_dir: Path, results: dict, threads: int, peaks: dict) -> dict:
    shape = ceiling.model_shape(shipped_dir / "config.json")
    out = {"formula": ceiling.FORMULA, "shape": shape, "per_workload": {}}
    for w, stats in results["workloads"].items():
        flops = ceiling.flops_per_text(shape, stats["mean_tokens"])
        cell = results["latency"].get(f"t{threads}/{w}/b32")
        row = {"mean_tokens": stats["mean_tokens"], "gflops_per_text": round(flops / 1e9, 4)}
        if cell:
            for e in results["engines"]:
                achieved = flops * 32 / (cell[e]["p50_ms"] / 1000) / 1e9
                row[f"{e}_gflops"] = round(achieved, 1)
            # More threads can only add peak: a lower all-thread reading is the host's noise.
            row["int8_fraction_of_u8s8_peak"] = round(row[f"{SHIPPED}_gflops"] / max(peaks["u8s8"].values()), 3)
            row["int8_fraction_of_fp32_peak"] = round(row[f"{SHIPPED}_gflops"] / max(peaks["fp32"].values()), 3)
        out["per_workload"][w] = row
    return out


def _cost(results: dict, threads: int) -> dict:
    """$ per million per measured vCPU count (1 thread ~ 1,769 MB, all threads ~ n x 1,769 MB)."""
    lat = results["latency"]
    measured = {}
    for e in (SHIPPED, "onnx-int8-fast", PEER, REFERENCE):
        measured[e] = {t: {"b1_s": lat[f"t{t}/b1/b1"][e]["p50_ms"] / 1000,
                           "b32_s": lat[f"t{t}/medium/b32"][e]["p50_ms"] / 1000}
                       for t in sorted({1, threads}) if f"t{t}/b1/b1" in lat}
    mem = results.get("memory", {})
    peak = {e: mem[e]["medium_b32"] for e in measured if e in mem}
    return cost.model(measured, peak)


def _targets(results: dict, threads: int) -> list[dict]:
    """Issue 13's targets: speed vs fastembed int8 (same run), parity on both sets, cold start."""
    lat = results["latency"]
    out = []
    for key, label in ((f"t{threads}/b1/b1", "batch 1 (12 tokens)"), (f"t{threads}/medium/b32", "batch 32 x ~40"),
                       (f"t{threads}/long/b32", "batch 32 x ~250")):
        r = round(lat[key][PEER]["p50_ms"] / lat[key][SHIPPED]["p50_ms"], 2)
        out.append({"name": f"speed vs fastembed int8, {label}", "measured": f"{r}x", "need": ">= 1.0x", "met": r >= 1.0})
    for set_name, rows in results["parity"].items():
        par = rows[SHIPPED]
        ok = par["mean_cosine"] >= 0.995 and par["p1_cosine"] >= 0.98
        out.append({"name": f"parity, {set_name} set (mean / p1 cosine)",
                    "measured": f"{par['mean_cosine']:.4f} / {par['p1_cosine']:.4f}",
                    "need": ">= 0.995 / >= 0.98", "met": ok})
    cold = results.get("cold_start")
    if cold:
        mine, peer = cold[SHIPPED]["first_result_s_median"], cold[PEER]["first_result_s_median"]
        out.append({"name": "cold start (fresh process -> first embedding)", "measured": f"{mine:.2f} s (fastembed {peer:.2f} s)",
                    "need": "<= 0.45 s and below fastembed", "met": mine <= 0.45 and mine < peer})
    h = results.get("handler")
    if h and "unavailable" not in h:
        r = round(h["single"]["handler"]["p50_ms"] / h["single"]["raw_session"]["p50_ms"], 2)
        out.append({"name": "API handler in-process vs raw session, one text", "measured": f"{r}x",
                    "need": "<= 1.25x", "met": r <= 1.25})
        ll = h.get("single_lambda_logging")
        if ll:
            r = round(ll["handler"]["p50_ms"] / ll["raw_session"]["p50_ms"], 2)
            out.append({"name": "API handler vs raw session, one text, with Lambda's INFO logs + EMF metrics",
                        "measured": f"{r}x", "need": "<= 1.25x", "met": r <= 1.25})
    b = results.get("batch")
    if b and "unavailable" not in b:
        # A cell faster than the model alone is the host's noise (batch_throughput flags it), not a result.
        cells = [c for c in b.get("summary", []) if c["chunk_lines"] == 2000 and not c["noise"]]
        if cells:
            best = max(cells, key=lambda c: c["of_model_alone"])
            out.append({"name": "batch job vs model alone, chunks of 2,000", "need": ">= 90%",
                        "measured": f"{best['of_model_alone']:.0%} ({best['workers']} worker(s); cells flagged as "
                                    "noise left out)", "met": best["of_model_alone"] >= 0.9})
    return out
