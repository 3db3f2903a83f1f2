"""The local system, started once per test session as ``python -m local up`` on free ports.

It runs in its own process (as a user runs it) so its environment (AWS_ENDPOINT_URL, CIRRUS_*)
never leaks into other tests; the tests drive it over real HTTP and S3. Teardown sends SIGINT
(Ctrl-C) and checks that it, and every process it started, stopped.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

REPO_ROOT = Path(__file__).resolve().parents[2]
STARTUP_TIMEOUT_S = 180
# Short visibility so a failed batch message comes back in seconds, not 6x the function timeout.
VISIBILITY_S = 3
# A small batch file limit, so the oversized-upload tests send a few MB, not 256.
BATCH_MAX_FILE_BYTES = 1024 * 1024


@dataclass
class LocalCirrus:
    url: str
    key: str
    state: dict[str, Any]
    state_dir: Path
    proc: subprocess.Popen

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}

    def post(self, path: str, body: Any, **kw) -> requests.Response:
        return requests.post(self.url + path, json=body, headers={**self.auth, **kw.pop("headers", {})},
                             timeout=60, **kw)

    def get(self, path: str, **kw) -> requests.Response:
        return requests.get(self.url + path, headers={**self.auth, **kw.pop("headers", {})}, timeout=60, **kw)

    def aws(self, service: str):
        from local.aws import client

        return client(service, self.state["aws_endpoint_url"])

    def cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        """``python -m local <args> --state-dir <this system>``."""
        return subprocess.run([sys.executable, "-m", "local", *args[:1], "--state-dir", str(self.state_dir),
                               *args[1:]], cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout)


def _log_tail(state_dir: Path, out_file: Path) -> str:
    parts = []
    for f in (out_file, state_dir / "cirrus-local.log"):
        if f.exists():
            parts.append(f"--- {f.name} ---\n" + "\n".join(f.read_text(errors="replace").splitlines()[-60:]))
    return "\n".join(parts)


@pytest.fixture(scope="session")
def local_cirrus(bundles_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> LocalCirrus:
    state_dir = tmp_path_factory.mktemp("local-cirrus")
    out_file, key_file = state_dir / "console.txt", state_dir / "key"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "CIRRUS_"))}
    with open(out_file, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "local", "up", "--port", "0", "--state-dir", str(state_dir),
             "--bundles-dir", str(bundles_dir), "--visibility-timeout", str(VISIBILITY_S),
             "--key-file", str(key_file),
             # The suites fire requests back to back; the per-key limit has its own test.
             "--dev-key-rate", "1000", "--dev-key-burst", "2000",
             "--batch-max-file-bytes", str(BATCH_MAX_FILE_BYTES)],
            cwd=REPO_ROOT, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
    try:
        state = None
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                pytest.fail(f"`python -m local up` exited with {proc.returncode}:\n{_log_tail(state_dir, out_file)}")
            try:
                state = json.loads((state_dir / "state.json").read_text())
            except (OSError, ValueError):
                state = None
            if state and state.get("pid") == proc.pid and key_file.exists():
                break
            time.sleep(0.2)
        else:
            pytest.fail(f"`python -m local up` not ready in {STARTUP_TIMEOUT_S} s:\n{_log_tail(state_dir, out_file)}")
        system = LocalCirrus(url=state["url"], key=key_file.read_text().strip(), state=state,
                             state_dir=state_dir, proc=proc)
        yield system
    finally:
        heavy_pid = (state or {}).get("heavy_pid")
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)  # what Ctrl-C does
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                pytest.fail("`python -m local up` did not stop within 60 s of Ctrl-C")
    # Everything it started is gone: its own process, the heavy stand-in, the state file.
    assert proc.returncode == 0, _log_tail(state_dir, out_file)
    if heavy_pid:
        assert not _alive(heavy_pid), f"heavy stand-in pid {heavy_pid} still running after Ctrl-C"
    assert not (state_dir / "state.json").exists()
    assert "stopped everything it started" in out_file.read_text()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie child of a dead parent is gone for our purposes.
    try:
        return "State:\tZ" not in Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
