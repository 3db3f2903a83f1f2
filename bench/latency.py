"""Warm latency, throughput, parity and memory of the engines, interleaved round-robin in one run.

Each (threads, workload, batch) cell is run as rounds: in every round each engine computes the
cell once, in a rotating order, so machine noise (other jobs on a shared host, frequency drift)
falls on all engines alike and the ratios stay fair. Warm-up rounds are run first and dropped.
"""
from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench.handler_latency import summary

ROOT = Path(__file__).resolve().parents[1]
IDLE_GAP_S = 0.005


@dataclass(frozen=True)
class Cell:
    threads: int
    workload: str
    batch: int
    rounds: int
    warmup: int = 2

    @property
    def key(self) -> str:
        return f"t{self.threads}/{self.workload}/b{self.batch}"


class Worker:
    """A ``bench.worker`` process running one engine; requests are answered one at a time."""

    def __init__(self, engine: str, threads: int, *, bundles: Path, dirs: dict[str, Path], log_dir: Path) -> None:
        self.engine, self.threads = engine, threads
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
               "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
               "POWERTOOLS_LOG_LEVEL": "WARNING", "POWERTOOLS_METRICS_DISABLED": "true",
               "POWERTOOLS_TRACE_DISABLED": "true", "PYTHONPATH": str(ROOT)}
        log_dir.mkdir(parents=True, exist_ok=True)
        self._log = open(log_dir / f"worker-{engine}-t{threads}.log", "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.worker", "--engine", engine, "--threads", str(threads),
             "--bundles", str(bundles), *[f"--bundle={k}={v}" for k, v in dirs.items()]],
            cwd=ROOT, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log, text=True)
        self.loaded: dict | None = None

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"worker {self.engine}/t{self.threads} exited (rc={self.proc.poll()}); "
                               f"see {self._log.name}")
        answer = json.loads(line)
        if "error" in answer:
            raise RuntimeError(f"worker {self.engine}/t{self.threads}: {answer['error']}")
        return answer

    def wait_ready(self) -> dict:
        if self.loaded is None:
            self.loaded = self._read()
        return self.loaded

    def ask(self, **cmd) -> dict:
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def embed(self, texts: list[str]) -> np.ndarray:
        answer = self.ask(op="embed", texts=texts)
        return np.frombuffer(base64.b64decode(answer["b64"]), dtype=np.float32).reshape(answer["shape"])

    def close(self) -> dict:
        try:
            return self.ask(op="quit")
        finally:
            self.proc.wait(timeout=30)
            self._log.close()


def run_cells(workers: dict[tuple[str, int], Worker], engines: list[str], cells: list[Cell],
              say=print) -> dict[str, dict]:
    """Time every cell on every engine, interleaved; returns cell key -> engine -> summary."""
    results: dict[str, dict] = {}
    for cell in cells:
        samples: dict[str, list[float]] = {e: [] for e in engines}
        for rnd in range(cell.warmup + cell.rounds):
            shift = rnd % len(engines)
            for engine in engines[shift:] + engines[:shift]:
                # Let the previous engine's pool threads stop spinning (OpenMP and onnxruntime
                # both busy-wait briefly after a call) before the next engine is timed.
                time.sleep(IDLE_GAP_S)
                s = workers[(engine, cell.threads)].ask(op="time", workload=cell.workload, batch=cell.batch,
                                                        offset=rnd)["s"]
                if rnd >= cell.warmup:
                    samples[engine].append(s)
        row = {}
        for engine, xs in samples.items():
            stats = summary(xs)
            stats["texts_per_s"] = round(cell.batch / float(np.median(xs)), 1)
            row[engine] = stats
        results[cell.key] = {"threads": cell.threads, "workload": cell.workload, "batch": cell.batch, **row}
        say(f"  {cell.key:<18} " + "  ".join(f"{e} p50 {row[e]['p50_ms']:.1f} ms" for e in engines))
    return results


def parity(workers: dict[str, Worker], reference: str, texts: list[str]) -> dict[str, dict]:
    """Cosine of each engine's embeddings against the reference engine's, on the same texts."""
    vectors = {}
    for engine, worker in workers.items():
        chunks = [worker.embed(texts[i:i + 32]) for i in range(0, len(texts), 32)]
        vectors[engine] = np.concatenate(chunks)
    ref = vectors[reference]
    out = {}
    for engine, vec in vectors.items():
        if engine == reference:
            continue
        cos = (ref * vec).sum(axis=1) / (np.linalg.norm(ref, axis=1) * np.linalg.norm(vec, axis=1))
        out[engine] = {"mean_cosine": round(float(cos.mean()), 6), "p1_cosine": round(float(np.percentile(cos, 1)), 6),
                       "min_cosine": round(float(cos.min()), 6), "n_texts": len(texts)}
    return out
