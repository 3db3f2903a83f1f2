"""The `python -m local` command line: status, idempotent up, port errors, help, env."""
from __future__ import annotations

import json
import socket
import subprocess
import sys
import time

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def _local(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "local", *args], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=timeout)


def test_status_reports_every_running_part(local_cirrus):
    out = local_cirrus.cli("status", "--json")
    assert out.returncode == 0, out.stderr
    status = json.loads(out.stdout)
    assert status["running"] is True and status["pid"] == local_cirrus.proc.pid
    assert status["checks"]["gateway"].startswith("up")
    assert status["checks"]["aws (moto)"].startswith("up")
    if status.get("heavy_url"):
        assert status["checks"]["heavy stand-in"].startswith("up")
    pollers = [v for k, v in status["checks"].items() if k.startswith("poller")]
    assert pollers and all(p.startswith("running") for p in pollers)
    assert '"api_key":' not in out.stdout and local_cirrus.key not in out.stdout
    human = local_cirrus.cli("status")
    assert human.returncode == 0 and "Cirrus is running" in human.stdout


def test_a_second_up_says_where_the_first_runs_and_starts_nothing(local_cirrus):
    t = time.monotonic()
    out = local_cirrus.cli("up", "--port", "0")
    assert out.returncode == 0
    assert "already running" in out.stdout and local_cirrus.url in out.stdout
    assert time.monotonic() - t < 30


def test_up_on_a_taken_port_fails_with_a_clear_message(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        out = _local("up", "--port", str(port), "--state-dir", str(tmp_path))
    assert out.returncode == 2
    assert f"port {port}" in out.stdout and "--port" in out.stdout
    assert "Traceback" not in out.stdout + out.stderr



def test_up_refuses_an_out_of_range_port_before_starting_anything(tmp_path):
    for flag, value, message in (("--port", "99999", "port must be 0-65535, got 99999"),
                                 ("--aws-port", "-1", "port must be 0-65535, got -1")):
        out = _local("up", flag, value, "--state-dir", str(tmp_path))
        assert out.returncode == 2 and f"error: argument {flag}: {message}" in out.stderr
        assert "Traceback" not in out.stderr and not (tmp_path / "state.json").exists()

def test_status_and_env_when_nothing_runs(tmp_path):
    out = _local("status", "--state-dir", str(tmp_path))
    assert out.returncode == 3 and "not running" in out.stdout
    env = _local("env", "--state-dir", str(tmp_path))
    assert env.returncode != 0 and "not running" in env.stderr


def test_env_points_boto3_at_the_local_moto(local_cirrus):
    out = local_cirrus.cli("env")
    assert out.returncode == 0
    exports = dict(line.removeprefix("export ").split("=", 1) for line in out.stdout.splitlines())
    assert exports["AWS_ENDPOINT_URL"] == local_cirrus.state["aws_endpoint_url"]
    assert exports["AWS_ACCESS_KEY_ID"] == "testing"


def test_every_command_has_help():
    for cmd in ([], ["up"], ["status"], ["down"], ["env"], ["submit"], ["keys"]):
        out = _local(*cmd, "--help")
        assert out.returncode == 0, cmd
        assert "usage" in out.stdout.lower(), cmd
