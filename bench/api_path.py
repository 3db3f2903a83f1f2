"""The API path: requests/s and latency through the local system (gateway -> authorizer -> API handler).

The whole of Cirrus is started with ``python -m local up`` in its own process (as in the
README), and this process plays the clients: ``concurrency`` threads, each with one keep-alive
connection, send single-text ``POST /v1/embeddings`` requests for a fixed time. Clients and
server share this machine's cores, so the figures are a floor for the system, not a ceiling.
"""
from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

from bench.handler_latency import EVENT, summary

ROOT = Path(__file__).resolve().parents[1]
MODEL = "all-minilm-l6-v2"
# API Gateway caches a TOKEN authorizer's policy for 300 s by default; the local gateway can too.
AUTHORIZER_CACHE_TTL_S = 300


class LocalCirrus:
    """``python -m local up`` as a child process; stopped by its PID, its state dir removed."""

    def __init__(self, bundles: Path, log_dir: Path) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="cirrus-bench-local-")
        state = Path(self._tmp.name)
        # Its own copy of the one bundle it serves: `up` takes the bundles folder's build lock,
        # and the bench must not wait on (or disturb) another bundle being rebuilt there.
        shutil.copytree(bundles / MODEL, state / "bundles" / MODEL)
        bundles = state / "bundles"
        self.key_file = state / "key"
        self._log = open(log_dir / "local-up.log", "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "local", "up", "--port", "0", "--no-heavy", "--models", MODEL,
             "--bundles-dir", str(bundles), "--state-dir", str(state / "state"), "--key-file", str(self.key_file),
             "--authorizer-cache-ttl", str(AUTHORIZER_CACHE_TTL_S),
             # The benchmark measures the path's capacity, not the per-key limit (dev: 5/s).
             "--dev-key-rate", "10000", "--dev-key-burst", "5000"],
            cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONPATH": str(ROOT)})
        self.state_file = state / "state" / "state.json"

    def wait(self, timeout: float = 180) -> tuple[str, str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"`python -m local up` exited with {self.proc.returncode}; see {self._log.name}")
            if self.state_file.is_file() and self.key_file.is_file():
                try:
                    url = json.loads(self.state_file.read_text())["url"]
                    return url, self.key_file.read_text().strip()
                except (ValueError, KeyError):
                    pass  # being written
            time.sleep(0.5)
        raise RuntimeError(f"the local system did not start in {timeout:.0f} s; see {self._log.name}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        self._tmp.cleanup()


def _client(url: str, key: str, body: bytes, stop_at: float, out: list, errors: list) -> None:
    parts = urlsplit(url)
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    base = parts.path.rstrip("/")
    while time.perf_counter() < stop_at:
        t = time.perf_counter()
        try:
            conn.request("POST", f"{base}/v1/embeddings", body=body, headers=headers)
            resp = conn.getresponse()
            resp.read()
            status = resp.status
        except (OSError, http.client.HTTPException) as exc:
            errors.append(type(exc).__name__)
            conn.close()
            conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
            continue
        if status == 200:
            out.append(time.perf_counter() - t)
        else:
            errors.append(str(status))
    conn.close()


def load(url: str, key: str, text: str, concurrency: int, seconds: float) -> dict:
    body = json.dumps({"model": MODEL, "input": text}).encode()
    latencies: list[float] = []
    errors: list[str] = []
    stop_at = time.perf_counter() + seconds
    threads = [threading.Thread(target=_client, args=(url, key, body, stop_at, latencies, errors))
               for _ in range(concurrency)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    return {"concurrency": concurrency, "requests_per_s": round(len(latencies) / elapsed, 1),
            "errors": len(errors), "error_kinds": sorted(set(errors)), **summary(latencies or [0.0])}


def measure(bundles: Path, log_dir: Path, *, seconds: float, concurrencies=(1, 8, 32), say=print) -> dict:
    text = json.loads(json.loads(EVENT.read_text())["body"])["input"]  # handler_latency's text
    system = LocalCirrus(bundles, log_dir)
    try:
        started = time.perf_counter()
        url, key = system.wait()
        startup = time.perf_counter() - started
        load(url, key, text, 2, min(seconds, 2.0))  # warm-up: model load, authorizer cache
        results = {"startup_s": round(startup, 1), "authorizer_cache_ttl_s": AUTHORIZER_CACHE_TTL_S,
                   "text_chars": len(text), "levels": []}
        for c in concurrencies:
            row = load(url, key, text, c, seconds)
            results["levels"].append(row)
            say(f"  API c={c:<3} {row['requests_per_s']:>7.1f} req/s  p50 {row['p50_ms']:.1f} ms  "
                f"p99 {row['p99_ms']:.1f} ms  errors {row['errors']}")
        return results
    finally:
        system.stop()
