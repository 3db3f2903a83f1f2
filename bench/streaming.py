"""Benchmark: time to first byte / first token vs time to the full answer, streamed vs buffered, light and heavy.

``python -m bench.streaming [--rounds 30] [--max-tokens 128] [--out bench/results/streaming.json]``

The whole local system runs as ``python -m local up`` in its own process; this process is the
client, over HTTP through the local gateway, with raw ``http.client`` so the clock stops at the
first body byte. Per round, in one interleaved order: light streamed, light buffered, heavy
streamed, heavy buffered, then the heavy pair again with the stand-in paced at a GPU-like
``--paced-ms`` per token (the local stand-in runs the same tiny ONNX model on this CPU, which is
far faster per token than a real LLM; pacing shows what streaming changes when tokens are slow).
Reported: p50/p99 of TTFB (first body byte), TTFT (first event carrying text) and total, and
the ratio streamed TTFT / buffered total from the same rounds. Not run by the test suite.
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

from bench.handler_latency import summary
from bench.machine import describe, one_line

ROOT = Path(__file__).resolve().parents[1]
MODEL = "cirrus-tiny-gpt2"
PROMPT = [{"role": "user", "content": "Tell me a long story"}]


class LocalSystem:
    """``python -m local up`` with the generation bundle and the heavy stand-in, stopped by its PID."""

    def __init__(self, bundles: Path, log: Path) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="cirrus-bench-stream-")
        state = Path(self._tmp.name)
        shutil.copytree(bundles / MODEL, state / "bundles" / MODEL)  # its own copy: no bundle lock shared
        self.key_file, self.state_file = state / "key", state / "state" / "state.json"
        self._log = open(log, "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "local", "up", "--port", "0", "--models", MODEL, "--bundles-dir",
             str(state / "bundles"), "--state-dir", str(state / "state"), "--key-file", str(self.key_file),
             "--authorizer-cache-ttl", "300"],
            cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONPATH": str(ROOT)})

    def wait(self, timeout: float = 240) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"`python -m local up` exited with {self.proc.returncode}; see {self._log.name}")
            try:
                state = json.loads(self.state_file.read_text())
                if self.key_file.is_file() and state.get("heavy_url"):
                    return {**state, "key": self.key_file.read_text().strip()}
            except (OSError, ValueError):
                pass
            time.sleep(0.5)
        raise RuntimeError(f"the local system did not start in {timeout:.0f} s; see {self._log.name}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        self._tmp.cleanup()


def one_request(url: str, key: str, body: dict) -> dict:
    """Seconds to the first body byte, to the first text event (streamed) and to the end of the answer."""
    split = urlsplit(url)
    conn = http.client.HTTPConnection(split.hostname, split.port, timeout=120)
    raw = json.dumps(body).encode()
    started = time.perf_counter()
    conn.request("POST", "/v1/chat/completions", body=raw,
                 headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
    resp = conn.getresponse()
    if resp.status != 200:
        raise RuntimeError(f"HTTP {resp.status}: {resp.read()[:300]!r}")
    first_byte = first_text = None
    buf = b""
    while piece := resp.read1(65536):
        now = time.perf_counter()
        first_byte = first_byte or now
        buf += piece
        # Streamed: the first event with text (the role event's content is ""); buffered: the body.
        if first_text is None and (not body.get("stream") or b'"content":"' in buf.replace(b'"content":""', b"")):
            first_text = now
    done = time.perf_counter()
    conn.close()
    if body.get("stream"):
        assert buf.endswith(b"data: [DONE]\n\n"), buf[-200:]
    return {"ttfb": first_byte - started, "ttft": (first_text or done) - started, "total": done - started}


def measure(bundles: Path, *, rounds: int, max_tokens: int, paced_ms: float, log: Path, say=print) -> dict:
    system = LocalSystem(bundles, log)
    try:
        state = system.wait()
        url, key, heavy_model, heavy_url = state["url"], state["key"], state["heavy_model"], state["heavy_url"]
        cases = {
            "light_streamed": (MODEL, True, 0.0), "light_buffered": (MODEL, False, 0.0),
            "heavy_streamed": (heavy_model, True, 0.0), "heavy_buffered": (heavy_model, False, 0.0),
            "heavy_paced_streamed": (heavy_model, True, paced_ms), "heavy_paced_buffered": (heavy_model, False, paced_ms),
        }
        samples: dict[str, list[dict]] = {name: [] for name in cases}
        for r in range(rounds + 1):  # round 0 warms every path (model load, connections) and is dropped
            for name, (model, stream, pace) in cases.items():
                if pace:
                    _queue_fault(heavy_url, f"slow_tokens:{pace / 1000}")
                out = one_request(url, key, {"model": model, "messages": PROMPT, "max_tokens": max_tokens,
                                             "temperature": 0, "stream": stream})
                if r:
                    samples[name].append(out)
            if r:
                say(f"round {r}/{rounds}: " + ", ".join(f"{n} {samples[n][-1]['ttft'] * 1000:.0f}/"
                                                          f"{samples[n][-1]['total'] * 1000:.0f} ms" for n in cases))
    finally:
        system.stop()
    result = {name: {k: summary([s[k] for s in rows]) for k in ("ttfb", "ttft", "total")}
              for name, rows in samples.items()}
    for route in ("light", "heavy", "heavy_paced"):
        s, b = result[f"{route}_streamed"], result[f"{route}_buffered"]
        result[f"{route}_ratio_ttft_streamed_vs_total_buffered"] = round(
            s["ttft"]["p50_ms"] / b["total"]["p50_ms"], 3)
        result[f"{route}_ratio_total_streamed_vs_buffered"] = round(s["total"]["p50_ms"] / b["total"]["p50_ms"], 3)
    return result


def _queue_fault(heavy_url: str, fault: str) -> None:
    split = urlsplit(heavy_url)
    conn = http.client.HTTPConnection(split.hostname, split.port, timeout=10)
    conn.request("POST", "/_faults", body=json.dumps({"faults": [fault]}), headers={"Content-Type": "application/json"})
    assert conn.getresponse().status == 200
    conn.close()


def markdown(result: dict, machine: dict, args: argparse.Namespace) -> str:
    lines = [f"Streaming vs buffered, {args.rounds} interleaved rounds, max_tokens {args.max_tokens}, "
             f"{MODEL} (light: generation function; heavy: SageMaker stand-in; paced: {args.paced_ms:g} ms/token)",
             f"Machine: {one_line(machine)}; load avg at start {machine['load_avg_at_start']}", "",
             "| case | TTFB p50 | TTFT p50 | TTFT p99 | total p50 | total p99 |", "|---|---|---|---|---|---|"]
    for name in ("light_streamed", "light_buffered", "heavy_streamed", "heavy_buffered",
                 "heavy_paced_streamed", "heavy_paced_buffered"):
        r = result[name]
        lines.append(f"| {name} | {r['ttfb']['p50_ms']:.1f} ms | {r['ttft']['p50_ms']:.1f} ms | "
                     f"{r['ttft']['p99_ms']:.1f} ms | {r['total']['p50_ms']:.1f} ms | {r['total']['p99_ms']:.1f} ms |")
    lines.append("")
    for route in ("light", "heavy", "heavy_paced"):
        lines.append(f"- {route}: streamed first token at {result[f'{route}_ratio_ttft_streamed_vs_total_buffered']:.3f}"
                     f" x the buffered answer's time; streamed total {result[f'{route}_ratio_total_streamed_vs_buffered']:.3f}"
                     " x buffered total")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.streaming", description=__doc__.splitlines()[0])
    ap.add_argument("--bundles", type=Path, default=ROOT / ".cache" / "bundles")
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--paced-ms", type=float, default=20.0, help="stand-in pace per token for the paced heavy case")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "streaming.json")
    args = ap.parse_args(argv)
    machine = describe()
    print(one_line(machine), "| load", machine["load_avg_at_start"], flush=True)
    raw = args.out.parent / "raw"  # git-ignored
    raw.mkdir(parents=True, exist_ok=True)
    result = measure(args.bundles, rounds=args.rounds, max_tokens=args.max_tokens, paced_ms=args.paced_ms,
                     log=raw / "streaming-local-up.log", say=lambda s: print(s, flush=True))
    machine.pop("_cpu", None)
    args.out.write_text(json.dumps({"machine": machine, "load_avg_at_end": [round(x, 2) for x in os.getloadavg()],
                                    "rounds": args.rounds, "max_tokens": args.max_tokens,
                                    "paced_ms": args.paced_ms, "results": result}, indent=1))
    md = markdown(result, machine, args)
    args.out.with_suffix(".md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
