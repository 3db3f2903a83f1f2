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

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = "pytorch-fp32"
SHIPPED = "onnx-int8"


@dataclass(frozen=True)
class Plan:
    """How many repetitions each part gets: ``quick`` to check the harness, ``full`` for the README."""

    b1: int
    b8: int
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
        cells = [Cell(all_threads, w, 1, self.b1, self.warmup) for w in workloads.TARGETS]
        cells.append(Cell(all_threads, "medium", 8, self.b8, self.warmup))
        cells += [Cell(all_threads, w, 32, n, self.warmup if w != "long" else 1) for w, n in self.b32.items()]
        if all_threads > 1:
            cells.append(Cell(1, "medium", 1, self.t1_b1, self.warmup))
            cells += [Cell(1, w, 32, n, 1) for w, n in self.t1_b32.items()]
        return cells


PLANS = {
    "quick": Plan(b1=15, b8=5, b32={"short": 5, "medium": 4, "long": 2}, t1_b1=10,
                  t1_b32={"short": 3, "medium": 3, "long": 2}, warmup=1, cold_reps=2, peak_s=0.5,
                  profile_runs=2, api_seconds=2.0, handler_n=40),
    "full": Plan(b1=80, b8=30, b32={"short": 20, "medium": 15, "long": 6}, t1_b1=40,
                 t1_b32={"short": 10, "medium": 8, "long": 3}, warmup=2, cold_reps=5, peak_s=2.0,
                 profile_runs=5, api_seconds=8.0, handler_n=200),
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
                    help="parts to leave out: candidates, cold, handler, api, batch, profile")
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
    names = list(engines.ENGINES)
    if "candidates" not in skip:
        dirs["onnx-int8-u8s8"] = engines.u8s8_bundle(args.bundles, args.cache, dirs["onnx-fp32"], say=say)
        names += list(engines.CANDIDATES)
    results["files"] = _files(shipped_dir, dirs)
    texts = workloads.build(shipped_dir / "tokenizer.json")
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
        say("parity vs PyTorch fp32 (cosine)")
        results["parity"] = parity({e: workers[(e, all_threads)] for e in names}, REFERENCE,
                                   workloads.parity_texts(texts))
        say(f"  {results['parity']}")
    finally:
        for w in workers.values():
            try:
                w.close()
            except Exception:  # noqa: BLE001 - a dead worker must not hide the real error
                w.proc.kill()

    say("memory: peak RSS per engine in a fresh process, growing workloads")
    results["memory"] = _memory(names, all_threads, args.bundles, dirs, raw, texts)

    # --- profile --------------------------------------------------------------------------------
    if "profile" not in skip:
        say("profile: onnxruntime operators per file (medium, batch 32, 1 thread) and tokenizer share")
        results["profile"] = _profile(shipped_dir, dirs, texts, plan, results["latency"])

    # --- cold start, handler, API, batch ----------------------------------------------------------
    if "cold" not in skip:
        say("cold start (fresh processes, alternating)")
        results["cold_start"] = coldstart.measure(args.bundles, plan.cold_reps, say=say)
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
        out[name] = {"file": "model.onnx", "mb": round((d / "model.onnx").stat().st_size / 1e6, 1)}
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
            for workload, batch in (("medium", 1), ("medium", 32), ("long", 32)):
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
    files = {"onnx-int8": shipped_dir, **dirs}
    out = {"ops": {}, "tokenizer": {}}
    for name, d in files.items():
        out["ops"][name] = profile.op_profile(d / "model.onnx", feeds, threads=1, runs=plan.profile_runs)
    for key in ("t1/medium/b1", "t1/medium/b32"):
        cell = latency.get(key) or latency.get(key.replace("t1/", f"t{model.threads}/"))
        if cell:
            run_s = cell[SHIPPED]["p50_ms"] / 1000
            out["tokenizer"][key] = profile.tokenizer_share(model, texts["medium"][:cell["batch"]], run_s)
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
            for e in (REFERENCE, "onnx-fp32", SHIPPED, *engines.CANDIDATES):
                if e in cell:
                    achieved = flops * 32 / (cell[e]["p50_ms"] / 1000) / 1e9
                    row[f"{e}_gflops"] = round(achieved, 1)
            # More threads can only add peak: a lower all-thread reading is the host's noise.
            row["int8_fraction_of_u8u8_peak"] = round(row[f"{SHIPPED}_gflops"] / max(peaks["u8u8"].values()), 3)
            row["int8_fraction_of_fp32_peak"] = round(row[f"{SHIPPED}_gflops"] / max(peaks["fp32"].values()), 3)
        out["per_workload"][w] = row
    return out


def _cost(results: dict, threads: int) -> dict:
    lat = results["latency"]
    measured = {}
    for e in (SHIPPED, REFERENCE):
        t1b1 = lat.get("t1/medium/b1", lat[f"t{threads}/medium/b1"])[e]["p50_ms"] / 1000
        t1b32 = lat.get("t1/medium/b32", lat[f"t{threads}/medium/b32"])[e]["p50_ms"] / 1000
        measured[e] = {"b1_t1": t1b1, "b1_tall": lat[f"t{threads}/medium/b1"][e]["p50_ms"] / 1000,
                       "b32_t1": t1b32, "b32_tall": lat[f"t{threads}/medium/b32"][e]["p50_ms"] / 1000}
    peak = {e: {"b1": results["memory"][e]["medium_b1"], "b32": results["memory"][e]["medium_b32"]} for e in measured}
    return cost.model(measured, peak, threads)


def _targets(results: dict, threads: int) -> list[dict]:
    lat = results["latency"]
    out = []

    def ratio(key: str) -> float:
        return round(lat[key][REFERENCE]["p50_ms"] / lat[key][SHIPPED]["p50_ms"], 2)

    for w in workloads.TARGETS:
        r = ratio(f"t{threads}/{w}/b1")
        out.append({"name": f"int8 batch-1 p50 speed-up, {w}", "measured": f"{r}x", "need": ">= 8x", "met": r >= 8})
    for w in ("medium", "long"):
        r = ratio(f"t{threads}/{w}/b32")
        out.append({"name": f"int8 batch-32 throughput, {w}", "measured": f"{r}x", "need": ">= 2.2x", "met": r >= 2.2})
    cold = results.get("cold_start")
    if cold:
        c_int8, c_torch = cold[SHIPPED]["first_result_s_median"], cold[REFERENCE]["first_result_s_median"]
        r = round(c_torch / c_int8, 1)
        out.append({"name": "cold start speed-up", "measured": f"{r}x ({c_int8:.2f} s vs {c_torch:.2f} s)",
                    "need": ">= 15x and <= ~0.6 s", "met": r >= 15 and c_int8 <= 0.6})
    par = results["parity"].get(SHIPPED)
    if par:
        ok = par["mean_cosine"] >= 0.995 and par["p1_cosine"] >= 0.98
        out.append({"name": "int8 parity (mean / p1 cosine)", "measured": f"{par['mean_cosine']:.4f} / {par['p1_cosine']:.4f}",
                    "need": ">= 0.995 / >= 0.98", "met": ok})
    return out
