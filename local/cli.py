"""``python -m local``: up (run Cirrus on this machine), status, down, keys, submit, env.

Over ~300 lines on purpose: one command per function and the parser that names them all, so
``--help`` and the code that answers it stay side by side.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from functions.core.contract import JOBS_INPUT_PREFIX, JOBS_OUTPUT_PREFIX
from local.config import DEFAULT_BUNDLES_DIR, DEFAULT_STATE_DIR, LocalConfig

if TYPE_CHECKING:
    from functions.core.batch.job import Job

STATE_VERSION = 1


# ----------------------------------------------------------------------------- state file


def read_state(state_dir: Path) -> dict[str, Any] | None:
    try:
        return json.loads((state_dir / "state.json").read_text())
    except (OSError, ValueError):
        return None


def write_state(state_dir: Path, state: dict[str, Any]) -> None:
    path = state_dir / "state.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2, sort_keys=True))
    os.replace(tmp, path)


def pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def is_our_up(pid: int) -> bool:
    """The PID is a ``python -m local up`` (guards against acting on a recycled PID)."""
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return pid_alive(pid)  # no /proc (macOS): trust the state file
    return b"local" in cmd and b"up" in cmd


def running_state(state_dir: Path) -> dict[str, Any] | None:
    state = read_state(state_dir)
    if state and state.get("pid") and pid_alive(state["pid"]) and is_our_up(state["pid"]):
        return state
    return None


def rss_mb(pid: int | None) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    except (OSError, ValueError, IndexError):
        return None
    return None


# ----------------------------------------------------------------------------- up


def _console() -> TextIO:
    """The terminal, kept aside before stdout/stderr are sent to the log file."""
    return os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8", errors="replace")


def _redirect_output_to(log_file: Path) -> None:
    # Handlers print Powertools JSON logs and EMF metrics to stdout, onnxruntime writes to fd 2:
    # all of it belongs in the log file, the terminal shows only what `up` has to say.
    fd = os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)


def banner(st, cfg: LocalConfig) -> str:
    url, key = st.url, st.api_key
    py = ".venv/bin/python"
    models = ", ".join(f"{m} ({st.tasks[m]})" for m in st.models) or "(none)"
    lines = [
        "",
        f"Cirrus is running on this machine (started in {st.timings_s['total']:.1f} s).",
        "",
        f"  API        {url}   (OpenAI-compatible: /v1/embeddings, /v1/classify, /v1/models, /health"
        + (", /v1/chat/completions" if "text-generation" in st.tasks.values() else "")
        + (", /v1/jobs, /v1/files, /v1/batches" if st.batch else "") + "; API page: /docs)",
        f"  API key    {key}",
        "             (shown once; more: python -m local keys create --name NAME)",
        f"  Models     {models}",
        f"  AWS        moto on {st.aws_endpoint_url}   (`eval $({py} -m local env)` points boto3/aws at it)",
        f"  Logs       {cfg.log_file}",
    ]
    if st.heavy_url:
        lines.append(f"  Heavy      model {st.heavy_model} on a SageMaker stand-in at {st.heavy_url}")
    lines += [f"  Note       {n}" for n in st.notes]
    lines += [
        "",
        "Try it:",
        f"  export CIRRUS_KEY={key}",
        f"  curl -s {url}/v1/embeddings -H \"Authorization: Bearer $CIRRUS_KEY\" \\",
        "       -H 'Content-Type: application/json' -d '{\"model\": \"all-minilm-l6-v2\", \"input\": \"hello world\"}'",
        "",
        f"  {py} - <<'EOF'",
        "  import os; from openai import OpenAI",
        f"  client = OpenAI(base_url=\"{url}/v1\", api_key=os.environ[\"CIRRUS_KEY\"])",
        "  out = client.embeddings.create(model=\"all-minilm-l6-v2\", input=[\"hello\", \"world\"])",
        "  print(len(out.data), len(out.data[0].embedding))",
    ]
    # The real chat model first (cirrus-tiny-gpt2 is a random-weight test fixture: its words mean nothing).
    gen = sorted((m for m, task in st.tasks.items() if task == "text-generation"), key=lambda m: "tiny" in m)
    if gen or st.heavy_url:
        lines.append("  ask = [{\"role\": \"user\", \"content\": \"What is the capital of France?\"}]")
    if gen:
        lines += [f"  chat = client.chat.completions.create(model=\"{gen[0]}\", max_tokens=32, messages=ask, temperature=0)",
                  "  print(chat.choices[0].message.content)",
                  f"  for chunk in client.chat.completions.create(model=\"{gen[0]}\", messages=ask, temperature=0, stream=True):",
                  "      print(chunk.choices[0].delta.content or \"\", end=\"\", flush=True)"]
    if st.heavy_url:
        lines += [f"  chat = client.chat.completions.create(model=\"{st.heavy_model}\", max_tokens=32, messages=ask, temperature=0)"
                  "   # the GPU route (a stand-in here)",
                  "  print(chat.choices[0].message.content)"]
    lines += ["  EOF"]
    if st.batch:
        lines += [
            "",
            "  printf '{\"input\": \"hello\"}\\n{\"input\": \"world\"}\\n' > /tmp/job.jsonl",
            f"  {py} -m local submit /tmp/job.jsonl --wait      # a batch job: S3 -> SQS -> splitter/workers",
        ]
    lines += ["", "Ctrl-C stops everything.", ""]
    return "\n".join(lines)


def cmd_up(args: argparse.Namespace) -> int:
    cfg = LocalConfig(host=args.host, port=args.port, aws_port=args.aws_port, state_dir=args.state_dir,
                      bundles_dir=args.bundles_dir, heavy=not args.no_heavy,
                      visibility_timeout_s=args.visibility_timeout,
                      authorizer_cache_ttl_s=args.authorizer_cache_ttl,
                      dev_key_rate=args.dev_key_rate, dev_key_burst=args.dev_key_burst,
                      batch_max_file_bytes=args.batch_max_file_bytes,
                      models=tuple(m.strip() for m in args.models.split(",") if m.strip()) if args.models else None)
    cfg.state_dir.mkdir(parents=True, exist_ok=True)
    existing = running_state(cfg.state_dir)
    if existing:
        print(f"Cirrus is already running: {existing['url']} (pid {existing['pid']}). "
              f"`python -m local status` shows it; `python -m local down` stops it.")
        return 0
    console = _console()
    _redirect_output_to(cfg.log_file)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s", force=True)
    log = logging.getLogger("local")

    def say(msg: str) -> None:
        console.write(f"==> {msg}\n")
        log.info(msg)

    stop = threading.Event()
    # SIGTERM (`down`, a test fixture) stops as cleanly as Ctrl-C. Ctrl-C raises KeyboardInterrupt
    # even when the shell started us with SIGINT ignored (a background job `&`).
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, signal.default_int_handler)
    from local.system import LocalSystem, StartupError

    system = LocalSystem(cfg, say=say)
    t0 = time.perf_counter()
    try:
        say(f"starting Cirrus on {cfg.host} (logs: {cfg.log_file})")
        st = system.start()
    except StartupError as exc:
        console.write(f"error: {exc}\n")
        return 2
    except KeyboardInterrupt:
        console.write("interrupted; everything started so far was stopped\n")
        return 130
    except Exception as exc:  # noqa: BLE001 - one line for the person, the traceback in the log
        log.exception("startup failed")
        console.write(f"error: startup failed: {type(exc).__name__}: {exc} (details in {cfg.log_file})\n")
        return 1
    if args.key_file:
        Path(args.key_file).touch(mode=0o600)
        Path(args.key_file).write_text(st.api_key + "\n")
    state = {"version": STATE_VERSION, "pid": os.getpid(), "state": "running", "host": cfg.host,
             "started_at": time.time(), "startup_s": round(time.perf_counter() - t0, 2),
             "log_file": str(cfg.log_file), **st.public()}

    def heartbeat() -> None:
        # For `status`: what runs, counters, memory.
        state.update(system.health(), heartbeat=time.time(), rss_mb=rss_mb(os.getpid()),
                     heavy_rss_mb=rss_mb(st.heavy_pid) if st.heavy_pid else None)
        write_state(cfg.state_dir, state)

    heartbeat()
    console.write(banner(st, cfg))
    try:
        while not stop.wait(2.0):
            heartbeat()
    except KeyboardInterrupt:
        pass
    console.write("\n==> stopping Cirrus ...\n")
    system.stop()
    (cfg.state_dir / "state.json").unlink(missing_ok=True)
    console.write("==> stopped everything it started\n")
    return 0


# ----------------------------------------------------------------------------- status / down


def _probe(url: str, path: str) -> str:
    try:
        with urllib.request.urlopen(url + path, timeout=2) as r:
            return f"up ({r.status})"
    except urllib.error.HTTPError as e:
        return f"up ({e.code})"  # an answer at all means it is listening
    except OSError as e:
        return f"DOWN ({getattr(e, 'reason', e)})"


def cmd_status(args: argparse.Namespace) -> int:
    state = running_state(args.state_dir)
    if state is None:
        if args.json:
            print(json.dumps({"running": False}))
        else:
            print("Cirrus is not running (start it with `python -m local up`).")
        return 3
    checks = {
        "gateway": _probe(state["url"], "/health"),
        "aws (moto)": _probe(state["aws_endpoint_url"], "/moto-api/"),
    }
    if state.get("heavy_url"):
        checks["heavy stand-in"] = _probe(state["heavy_url"], "/ping")
    for name, p in (state.get("pollers") or {}).items():
        checks[f"poller {name}"] = ("running" if p["running"] else "STOPPED") + \
            f" ({p['batches']} batches, {p['deleted']} messages done, {p['failed']} failed)"
    if args.json:
        print(json.dumps({"running": True, "checks": checks, **state}, indent=2))
        return 0
    age = time.time() - state.get("heartbeat", state["started_at"])
    print(f"Cirrus is running: {state['url']}  (pid {state['pid']}, up {time.time() - state['started_at']:.0f} s, "
          f"started in {state['startup_s']} s, heartbeat {age:.0f} s ago)")
    for name, res in checks.items():
        print(f"  {name:<28} {res}")
    print(f"  {'models':<28} " + ", ".join(f"{n}@{v}" for n, v in state["models"].items()))
    mem = state.get("rss_mb")
    if mem:
        heavy = f" + heavy stand-in {state['heavy_rss_mb']} MB" if state.get("heavy_rss_mb") else ""
        print(f"  {'memory (RSS)':<28} {mem} MB{heavy}")
    for name, f in (state.get("functions") or {}).items():
        print(f"  {'function ' + name:<28} {f['invocations']} invocations, {f['errors']} errors")
    print(f"  {'log file':<28} {state['log_file']}")
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    state = running_state(args.state_dir)
    if state is None:
        print("Cirrus is not running.")
        return 0
    pid = state["pid"]
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and pid_alive(pid):
        time.sleep(0.2)
    if pid_alive(pid):
        print(f"error: pid {pid} did not stop within 30 s", file=sys.stderr)
        return 1
    print(f"stopped Cirrus (pid {pid})")
    return 0


# ----------------------------------------------------------------------------- keys / env / submit


def local_env(state: dict[str, Any]) -> dict[str, str]:
    """The environment that points boto3 (and the project's CLIs) at the running local system."""
    from local.aws import FAKE_CREDENTIALS

    env = dict(FAKE_CREDENTIALS)
    env["AWS_ENDPOINT_URL"] = state["aws_endpoint_url"]
    env["CIRRUS_API_KEYS_TABLE"] = state["tables"]["ApiKeys"]
    env["CIRRUS_JOBS_TABLE"] = state["tables"]["Jobs"]
    env["CIRRUS_DATA_BUCKET"] = state["buckets"]["Data"]
    env["CIRRUS_ARTIFACTS_BUCKET"] = state["buckets"]["Artifacts"]
    if state.get("usage_plan_id"):  # `keys create` registers new keys in the stage's usage plan
        env["CIRRUS_USAGE_PLAN_ID"] = state["usage_plan_id"]
    return env


def _need_running(state_dir: Path) -> dict[str, Any]:
    state = running_state(state_dir)
    if state is None:
        raise SystemExit("error: Cirrus is not running here; start it with `python -m local up`")
    return state


def cmd_env(args: argparse.Namespace) -> int:
    for k, v in local_env(_need_running(args.state_dir)).items():
        print(f"export {k}={v}")
    return 0


def cmd_keys(args: argparse.Namespace) -> int:
    if not args.keys_args or {"-h", "--help"} & set(args.keys_args):
        from ops import keys

        return keys.main(args.keys_args or ["--help"])  # `keys create --help` shows create's options
    os.environ.pop("AWS_PROFILE", None)
    os.environ.update(local_env(_need_running(args.state_dir)))
    from ops import keys

    return keys.main(args.keys_args)


def cmd_submit(args: argparse.Namespace) -> int:
    state = _need_running(args.state_dir)
    if not state.get("batch"):
        print("error: batch jobs are not available in this local system", file=sys.stderr)
        return 2
    path = Path(args.file)
    if not path.is_file():
        print(f"error: no such file: {path}", file=sys.stderr)
        return 2
    limit = state.get("batch_max_file_bytes")
    size = path.stat().st_size
    if limit and size > limit:
        # The splitter would refuse it and delete it; say so before uploading it at all.
        print(f"error: {path} has {size} bytes, the batch file limit is {limit}", file=sys.stderr)
        return 2
    from local.aws import client

    bucket = state["buckets"]["Data"]
    name = path.name if path.name.endswith(".jsonl") else path.name + ".jsonl"
    key = JOBS_INPUT_PREFIX + name
    s3 = client("s3", state["aws_endpoint_url"])
    with open(path, "rb") as fh:
        etag = s3.put_object(Bucket=bucket, Key=key, Body=fh)["ETag"]
    from functions.core.batch.job import job_id_for

    job_id = job_id_for(bucket, key, etag)
    # With --json, stdout carries exactly one JSON document; everything for people goes to stderr.
    human = sys.stderr if args.json else sys.stdout
    print(f"uploaded {path} to s3://{bucket}/{key}: job {job_id}", file=human)
    if not args.wait:
        if args.json:
            print(json.dumps({"job_id": job_id, "bucket": bucket, "key": key}))
        return 0
    job = _wait_for_job(state, job_id, args.timeout, progress=Progress(sys.stderr))
    if job is None:
        print(f"error: job {job_id} did not finish within {args.timeout} s", file=sys.stderr)
        return 1
    from functions.core.batch.service import view  # the job API's public shape of a record
    from functions.core.settings import get_settings

    print(json.dumps(view(job, get_settings(), with_urls=False), indent=None if args.json else 2, default=str))
    if args.download and job.status.value.startswith("succeeded"):
        for kind in ("results", "errors"):
            out_key = f"{JOBS_OUTPUT_PREFIX}{job_id}/{kind}.jsonl"
            target = Path(args.download) / f"{job_id}.{kind}.jsonl"
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                s3.download_file(bucket, out_key, str(target))
                print(f"wrote {target}", file=human)
            except Exception:  # noqa: BLE001 - errors.jsonl is absent when every line succeeded
                pass
    return 0 if job.status.value.startswith("succeeded") else 1


class Progress:
    """A job's progress on ``out``: a bar redrawn in place on a terminal, one line per change otherwise.

    Chunks done / total are exact (the job record counts them); lines done are estimated from them
    until the job ends (the record holds line counts only then).
    """

    WIDTH = 30

    def __init__(self, out: Any) -> None:
        self.out = out
        self.tty = bool(getattr(out, "isatty", lambda: False)())
        self.started = time.monotonic()
        self.last = ""

    def __call__(self, job: Job | None) -> None:
        if job is None:
            line = "waiting for the splitter to pick the file up..."
        else:
            total, done = job.chunks_total or 0, job.chunks_done + job.chunks_failed
            frac = done / total if total else 0.0
            lines = job.lines_ok + job.lines_failed if job.final else int(frac * (job.lines_total or 0))
            rate = lines / max(time.monotonic() - self.started, 1e-6)
            bar = "#" * int(frac * self.WIDTH) + "." * (self.WIDTH - int(frac * self.WIDTH))
            line = (f"[{bar}] {job.status.value:<21} chunks {done}/{total or '?'}  "
                    f"lines {'' if job.final else '~'}{lines}/{job.lines_total if job.lines_total is not None else '?'}"
                    f"  {rate:,.0f} lines/s")
        if line == self.last:
            return
        self.last = line
        if self.tty:
            self.out.write("\r" + line + ("\n" if job is not None and job.final else ""))
        else:
            self.out.write(line + "\n")
        self.out.flush()


def _wait_for_job(state: dict[str, Any], job_id: str, timeout: float,
                  progress: Progress | None = None) -> Job | None:
    os.environ.pop("AWS_PROFILE", None)
    os.environ.update(local_env(state))
    from functions.core.batch.job_store import job_store

    store = job_store()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = store.get(job_id)
        if progress is not None:
            progress(job)
        if job and job.final:
            return job
        time.sleep(0.5)
    return None


# ----------------------------------------------------------------------------- parser


def port(text: str) -> int:
    """argparse type: a TCP port 0-65535 (0 = any free port), refused before anything starts."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"port must be 0-65535, got {value}")
    return value


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1, refused before anything starts."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m local",
        description="Run the whole of Cirrus on this machine: no AWS account, the same handler code.")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR,
                        help=f"where the state file and logs live (default: {DEFAULT_STATE_DIR})")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    up = sub.add_parser("up", parents=[common], help="start Cirrus (API, moto AWS, batch pollers, heavy stand-in); Ctrl-C stops it",
                        description="Start Cirrus on this machine and keep it running until Ctrl-C. "
                                    "Idempotent: if it already runs, says where.")
    up.add_argument("--host", default="127.0.0.1", help="address the API listens on (default 127.0.0.1)")
    up.add_argument("--port", type=port, default=3000, help="API port (default 3000; 0 = any free port)")
    up.add_argument("--aws-port", type=port, default=0, help="moto server port (default: any free port)")
    up.add_argument("--bundles-dir", type=Path, default=DEFAULT_BUNDLES_DIR,
                    help=f"model bundles cache (default: {DEFAULT_BUNDLES_DIR})")
    up.add_argument("--models", metavar="A,B",
                    help="only these default bundles (faster first start), e.g. all-minilm-l6-v2 (default: all)")
    up.add_argument("--no-heavy", action="store_true", help="do not start the heavy-path (SageMaker) stand-in")
    up.add_argument("--visibility-timeout", type=int, default=None, metavar="S",
                    help="SQS visibility timeout of the local queues (default: 6x the consuming function's "
                         "timeout from cdk.json, as deployed)")
    up.add_argument("--authorizer-cache-ttl", type=int, default=0, metavar="S",
                    help="cache authorizer policies per key for S seconds like API Gateway (default 0: "
                         "a revoked key is refused at once)")
    up.add_argument("--dev-key-rate", type=float, default=None, metavar="R",
                    help="the dev key's own requests/s (default: the stage's per-key limit, cdk.json api.key_rate_limit)")
    up.add_argument("--dev-key-burst", type=int, default=None, metavar="B",
                    help="the dev key's own burst (default: the stage's api.key_burst_limit)")
    up.add_argument("--key-file", help="also write the dev API key to this file (mode 600), for scripts")
    up.add_argument("--batch-max-file-bytes", type=positive_int, default=None, metavar="N",
                    help="batch input size limit: upload forms and the splitter refuse larger files "
                         "(default: the functions' CIRRUS_BATCH_MAX_FILE_BYTES default, 256 MiB)")
    up.set_defaults(func=cmd_up)

    st = sub.add_parser("status", parents=[common], help="what runs, counters and memory (exit 3 when not running)")
    st.add_argument("--json", action="store_true", help="machine-readable output")
    st.set_defaults(func=cmd_status)

    down = sub.add_parser("down", parents=[common], help="stop a running `up` (same as Ctrl-C in its terminal)")
    down.set_defaults(func=cmd_down)

    env = sub.add_parser("env", parents=[common], help="print shell exports that point boto3/aws CLI at the local AWS")
    env.set_defaults(func=cmd_env)

    keys = sub.add_parser("keys", parents=[common], help="API keys on the local system: create --name X | list | revoke KEY_ID",
                          add_help=False)
    keys.add_argument("keys_args", nargs=argparse.REMAINDER, help="arguments for python -m ops.keys")
    keys.set_defaults(func=cmd_keys)

    submit = sub.add_parser("submit", parents=[common], help="start a batch job from a JSONL file (uploads to jobs/input/)")
    submit.add_argument("file", help="JSONL file: one {\"input\": ...} object per line")
    submit.add_argument("--wait", action="store_true", help="wait for the job and print its record")
    submit.add_argument("--timeout", type=float, default=300, help="seconds to wait (default 300)")
    submit.add_argument("--download", metavar="DIR", help="with --wait: save results/errors JSONL into DIR")
    submit.add_argument("--json", action="store_true",
                        help="stdout: one JSON document (the finished job; without --wait its id); "
                             "progress and messages go to stderr")
    submit.set_defaults(func=cmd_submit)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # `keys` passes its arguments through to ops.keys, options first included (--help, --table).
    args, rest = parser.parse_known_args(argv)
    if rest and args.command != "keys":
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if args.command == "keys":
        args.keys_args = rest + list(args.keys_args)
    return args.func(args)


