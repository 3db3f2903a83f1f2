"""Start and stop the whole local Cirrus: bundles, moto + stores, key, heavy stand-in, gateway, pollers.

``LocalSystem.start()`` does the steps of ``python -m local up`` in order and, if one fails, stops
what the earlier ones started; ``stop()`` stops everything it started (threads it owns, and the
heavy stand-in subprocess by its PID) and nothing else.

Over ~300 lines on purpose: start and stop are one ordered list of steps, each undone by the other.
"""
from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from functions.core.contract import JOBS_GENERATION_FAILURE_PREFIX, JOBS_GENERATION_OUTPUT_PREFIX
from infra.function_specs import FUNCTIONS_BY_ID
from local.config import REPO_ROOT, LocalConfig

log = logging.getLogger("local")

HEAVY_SERVER_MODULE = "local.heavy_server"
HEAVY_ENDPOINT_NAME = "cirrus-local-heavy"
HEAVY_MODEL_SUFFIX = "-heavy"
DEV_KEY_NAME = "local-dev"
# The backing services (moto: the keys table, data, KMS; the SageMaker stand-in) have no
# authentication: only this machine may reach them, whatever --host the gateway listens on.
BACKING_HOST = "127.0.0.1"


def is_loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class StartupError(RuntimeError):
    """A step of ``up`` failed with a message meant for the person at the terminal."""


def missing_dependency(exc: ImportError) -> StartupError:
    name = getattr(exc, "name", None) or str(exc)
    return StartupError(f"missing dependency {name!r}: run `make setup` (or "
                        f"`.venv/bin/python -m pip install -r requirements.txt`) and try again")


def port_free(host: str, port: int) -> bool:
    if port == 0:
        return True
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@dataclass
class Started:
    """What ``start()`` brought up: the facts the banner, ``status`` and the tests need."""

    url: str
    aws_endpoint_url: str
    api_key: str
    api_key_id: str
    buckets: dict[str, str]
    tables: dict[str, str]
    queues: dict[str, dict[str, Any]]
    models: dict[str, str]                      # name -> published version
    tasks: dict[str, str]                       # name -> manifest task
    batch: bool                                 # splitter/worker pollers running
    heavy_url: str | None
    heavy_pid: int | None
    heavy_model: str | None
    usage_plan_id: str | None = None
    batch_max_file_bytes: int | None = None     # what the splitter and upload forms refuse past
    timings_s: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def public(self) -> dict[str, Any]:
        """Everything but the API key: this goes into the state file."""
        out = dict(vars(self))
        out.pop("api_key")
        return out


class LocalSystem:
    def __init__(self, cfg: LocalConfig, *, say: Callable[[str], None] = lambda s: None) -> None:
        self.cfg = cfg
        self.say = say
        self._stops: list[tuple[str, Callable[[], None]]] = []
        self.started: Started | None = None
        self.pollers: list = []
        self.functions: dict[str, Any] = {}
        self.heavy_model: str | None = None
        self.usage_plan_id: str | None = None

    # ------------------------------------------------------------------ start
    def start(self) -> Started:
        cfg = self.cfg
        if not port_free(cfg.host, cfg.port):
            raise StartupError(f"port {cfg.port} on {cfg.host} is taken (is Cirrus already running? "
                               f"`python -m local status`); choose another with --port N")
        if not port_free(BACKING_HOST, cfg.aws_port):
            raise StartupError(f"port {cfg.aws_port} on {BACKING_HOST} is taken; choose another with --aws-port N")
        timings: dict[str, float] = {}
        try:
            with _timed(timings, "bundles"):
                bundles = self._bundles()
            with _timed(timings, "aws"):
                prov = self._aws()
            with _timed(timings, "publish"):
                models = self._publish(bundles, prov)
            with _timed(timings, "dev_key"):
                self.usage_plan_id = self._usage_plan(prov)
                key, key_id = self._dev_key(prov)
            with _timed(timings, "heavy"):
                heavy_url, heavy_pid, heavy_note = self._heavy(bundles, prov)
            with _timed(timings, "functions"):
                self._environment(prov, heavy_url, models)
                gateway_url = self._gateway()
            with _timed(timings, "batch"):
                batch, batch_note = self._batch(prov)
        except ImportError as exc:
            self.stop()
            raise missing_dependency(exc) from None
        except BaseException:
            self.stop()
            raise
        timings["total"] = round(sum(timings.values()), 2)
        self.started = Started(
            url=gateway_url, aws_endpoint_url=prov.endpoint_url, api_key=key, api_key_id=key_id,
            buckets=prov.buckets, tables=prov.tables, queues={k: vars(v) for k, v in prov.queues.items()},
            models=models, tasks={n: _task(p) or "?" for n, p in bundles.items()}, batch=batch, heavy_url=heavy_url, heavy_pid=heavy_pid,
            heavy_model=self.heavy_model if heavy_url else None, usage_plan_id=self.usage_plan_id,
            batch_max_file_bytes=_settings().batch_max_file_bytes, timings_s=timings,
            notes=[n for n in (heavy_note, batch_note) if n])
        return self.started

    def _bundles(self) -> dict[str, Path]:
        self.say("bundles: checking the default model bundles (exported once, then cached)")
        try:
            from model_export.defaults import ensure_default_bundles
        except ImportError as exc:
            raise missing_dependency(exc) from None
        from model_export.errors import ExportError
        from model_export.progress import Progress

        say = self.say

        class _Say(Progress):
            def info(self, message: str) -> None:  # export/quantize/validate stages, with timings
                say(f"bundles: {message}")

        try:
            return ensure_default_bundles(self.cfg.bundles_dir, list(self.cfg.models) if self.cfg.models else None,
                                          progress=_Say())
        except ExportError as exc:
            raise StartupError(f"could not build the default bundles: {exc}") from None

    def _aws(self):
        from local.aws import FAKE_CREDENTIALS, MotoServer, provision

        # Fake credentials and no profile: whatever the shell holds, nothing reaches a real account.
        for var in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE"):
            os.environ.pop(var, None)
        os.environ.update(FAKE_CREDENTIALS)
        os.environ["AWS_EC2_METADATA_DISABLED"] = "true"
        server = MotoServer(BACKING_HOST, self.cfg.aws_port)
        url = server.start()
        self._stops.append(("moto server", server.stop))
        os.environ["AWS_ENDPOINT_URL"] = url
        self.say(f"aws: moto server on {url}")
        prov = provision(url, self.cfg)
        self.say(f"aws: created {len(prov.buckets)} buckets, {len(prov.tables)} tables, "
                 f"{len(prov.queues)} queues (+DLQs), KMS key {prov.kms_key_id}")
        return prov

    def _publish(self, bundles: dict[str, Path], prov) -> dict[str, str]:
        from local.aws import client
        from model_export.publish import publish_bundle

        s3 = client("s3", prov.endpoint_url)
        out = {}
        for name, path in bundles.items():
            result = publish_bundle(path, prov.buckets["Artifacts"], kms_key_id=prov.kms_key_arn, s3_client=s3)
            out[name] = result["version"]
        self.say("models: published " + ", ".join(f"{n}@{v}" for n, v in out.items())
                 + f" to s3://{prov.buckets['Artifacts']} (SSE-KMS)")
        return out

    def _usage_plan(self, prov) -> str:
        from local.aws import provision_usage_plan

        plan_id = provision_usage_plan(prov.endpoint_url, self.cfg)
        api = self.cfg.stage_settings().api
        self.say(f"api: per-key limits {api.key_rate_limit:g}/s, burst {api.key_burst_limit}, quota "
                 f"{api.key_quota or 'none'}/{api.key_quota_period.lower()} (usage plan {plan_id})")
        return plan_id

    def _dev_key(self, prov) -> tuple[str, str]:
        from functions.core.auth import KeyStore
        from local.aws import client
        from ops.usage_plans import KeyLimits, UsagePlans

        store = KeyStore(prov.tables["ApiKeys"], ddb=client("dynamodb", prov.endpoint_url))
        plans = UsagePlans(client("apigateway", prov.endpoint_url), self.usage_plan_id)
        limits = KeyLimits(rate=self.cfg.dev_key_rate, burst=self.cfg.dev_key_burst)
        key, record = store.create(DEV_KEY_NAME, usage=lambda key_id: plans.register(key_id, limits))
        return key, record.key_id

    def _heavy(self, bundles: dict[str, Path], prov) -> tuple[str | None, int | None, str | None]:

        if not self.cfg.heavy:
            return None, None, "heavy path: off (--no-heavy)"
        # The stage's own light chat model first (dev: smollm2-135m-instruct), so heavy replies are
        # the same real text as light ones; else any generation bundle.
        preferred = [n for n in self.cfg.stage_settings().generation_models if n in bundles]
        candidates = [bundles[n] for n in preferred] + list(bundles.values())
        bundle = next((p for p in candidates if _task(p) == "text-generation"), None)
        if bundle is None:
            return None, None, "heavy path: no text-generation bundle to serve"
        # The stage settings forbid a heavy model name that a Lambda also serves (infra.settings);
        # the stand-in serves the generation bundle under its own name, as the GPU model would.
        self.heavy_model = f"{bundle.name}{HEAVY_MODEL_SUFFIX}"
        port = free_port(BACKING_HOST)
        log_path = self.cfg.state_dir / "heavy-server.log"
        logf = open(log_path, "ab")
        # A separate process, as a SageMaker endpoint is a separate machine; stopped by its PID.
        proc = subprocess.Popen(
            [sys.executable, "-m", HEAVY_SERVER_MODULE, "--host", BACKING_HOST, "--port", str(port),
             "--bundle", str(bundle), "--endpoint", HEAVY_ENDPOINT_NAME,
             # SageMaker async inference writes under the endpoint's S3OutputPath / S3FailurePath:
             # the stack's (infra/constructs/heavy_async.py), from the same shared data.
             "--async-output", f"s3://{prov.buckets['Data']}/{JOBS_GENERATION_OUTPUT_PREFIX}",
             "--async-failure", f"s3://{prov.buckets['Data']}/{JOBS_GENERATION_FAILURE_PREFIX}"],
            cwd=REPO_ROOT, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            preexec_fn=_die_with_parent)
        logf.close()
        self._stops.append(("heavy stand-in", lambda: _stop_process(proc)))
        url = f"http://{BACKING_HOST}:{port}"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise StartupError(f"the heavy stand-in exited with code {proc.returncode}; see {log_path}")
            try:
                with urllib.request.urlopen(url + "/ping", timeout=1) as r:
                    if r.status == 200:
                        self.say(f"heavy: SageMaker stand-in on {url} (pid {proc.pid}) serving {bundle.name} "
                                 f"as model {self.heavy_model}")
                        return url, proc.pid, None
            except OSError:
                time.sleep(0.2)
        raise StartupError(f"the heavy stand-in did not answer /ping within 60 s; see {log_path}")

    def _environment(self, prov, heavy_url: str | None, models: dict[str, str]) -> None:
        """The functions' environment: Settings from what was provisioned, AWS endpoints on loopback."""
        from functions.core.settings import Settings, get_settings

        fields: dict[str, Any] = dict(prov.settings_fields)
        fields.update(cache_dir=str(self.cfg.state_dir / "cache"), stage=self.cfg.stage,
                      # The light generation models of the stage imitated (dev: the chat model smollm2-135m-instruct)
                      # set explicitly: the functions default to none. Only those published here.
                      generation_models=[m for m in self.cfg.stage_settings().generation_models if m in models],
                      max_receive_count=prov.queues["Work"].max_receive_count,
                      # One user: files dropped in the bucket (`submit`) show in GET /v1/jobs for the dev key.
                      batch_unowned_jobs_visible=True,
                      # The stage's CORS, as the stack gives the api and generation functions.
                      cors_origins=list(self.cfg.stage_settings().api.cors_origins),
                      cors_headers=list(self.cfg.stage_settings().api.cors_headers))
        if self.cfg.batch_max_file_bytes is not None:
            fields["batch_max_file_bytes"] = self.cfg.batch_max_file_bytes
        if heavy_url:
            # Requests for the heavy model (sync and async) reach the stand-in through the production
            # SageMaker runtime client.
            fields.update(heavy_endpoint_name=HEAVY_ENDPOINT_NAME, heavy_async_endpoint_name=HEAVY_ENDPOINT_NAME,
                          heavy_models=[self.heavy_model])
        env = Settings(**fields).env()
        env.update({
            "POWERTOOLS_TRACE_DISABLED": "true",         # no X-Ray daemon on this machine
            "POWERTOOLS_METRICS_NAMESPACE": "Cirrus",
            "AWS_LAMBDA_LOG_GROUP_NAME": "/aws/lambda/local",
        })
        if heavy_url:
            env["AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME"] = heavy_url
        env.update(self.cfg.extra_env)
        os.environ.update(env)
        get_settings.cache_clear()

    def _gateway(self) -> str:
        from infra.resources import DOCS_ROUTES, ROUTES, STREAM_FUNCTION, STREAMED_ROUTES
        from local.gateway import Gateway, GatewayServer

        from local.aws import client
        from local.gateway import UsageLimiter
        from ops.usage_plans import limits_for

        api, auth = self._function("api"), self._function("authorizer")
        apigw = client("apigateway", os.environ["AWS_ENDPOINT_URL"])
        gw = Gateway(api, auth, routes=ROUTES, stage=self.cfg.stage, cache_ttl_s=self.cfg.authorizer_cache_ttl_s,
                     host=self.cfg.host, stream=self._function(STREAM_FUNCTION), streamed_routes=STREAMED_ROUTES,
                     public=DOCS_ROUTES, usage=UsageLimiter(lambda value: limits_for(apigw, value)),
                     cors=self.cfg.stage_settings().api.cors)
        try:
            server = GatewayServer(gw, self.cfg.host, self.cfg.port)
        except OSError as exc:
            raise StartupError(f"cannot listen on {self.cfg.host}:{self.cfg.port}: {exc.strerror}; "
                               f"choose another port with --port N") from None
        url = server.start()
        self._stops.append(("gateway", server.stop))
        self.say(f"api: local API Gateway on {url} (stage {self.cfg.stage})")
        if not is_loopback(self.cfg.host):
            log.warning("the API listens on %s, not loopback: other machines can reach it with a key", self.cfg.host)
            self.say(f"warning: the API listens on {self.cfg.host}, reachable from other machines; the backing "
                     f"services (moto, the SageMaker stand-in) stay on {BACKING_HOST}")
        return url

    def _function(self, function_id: str):
        """The local twin of one Lambda function (handler, memory and timeout as in the stage)."""
        from local.lambdas import LambdaFunction

        if function_id not in self.functions:
            fs = self.cfg.function_settings(function_id)
            fn = LambdaFunction(f"cirrus-{self.cfg.stage}-{function_id.replace('_', '-')}",
                                FUNCTIONS_BY_ID[function_id].handler, timeout_s=fs.timeout_s, memory_mb=fs.memory_mb)
            try:
                fn.load()  # import now: a broken handler should stop `up`, not the first event
            except ImportError as exc:
                raise missing_dependency(exc) from None
            self.functions[function_id] = fn
        return self.functions[function_id]

    def _batch(self, prov) -> tuple[bool, str | None]:
        """One poller per event source mapping: each queue (and DLQ) feeds its consumer from RESOURCES."""
        from local.aws import client
        from local.pollers import QueuePoller

        consumers = {f for q in prov.queues.values() for f in (q.consumer, q.dlq_consumer) if f}
        sqs = client("sqs", prov.endpoint_url)
        functions = self.cfg.stage_settings().functions  # event source batch sizes as in the stack
        for q in prov.queues.values():
            for url, arn, fid in ((q.url, q.arn, q.consumer), (q.dlq_url, q.dlq_arn, q.dlq_consumer)):
                if fid is None:
                    continue
                poller = QueuePoller(sqs, queue_url=url, queue_arn=arn, function=self._function(fid),
                                     batch_size=functions.sqs_batch_size_for(fid), wait_s=self.cfg.poll_wait_s)
                poller.start()
                self.pollers.append(poller)
                self._stops.append((f"poller {poller.name}", poller.stop))
        self.say(f"batch: files under s3://{prov.buckets['Data']}/jobs/input/*.jsonl start jobs "
                 f"({len(self.pollers)} queue pollers: " + ", ".join(sorted(consumers)) + ")")
        return True, None

    # ------------------------------------------------------------------ stop / status
    def stop(self) -> None:
        """Stop, newest first, everything start() started; each step runs even if another fails."""
        for p in self.pollers:
            p.signal_stop()  # all at once: each is in a long poll of up to poll_wait_s
        while self._stops:
            what, fn = self._stops.pop()
            try:
                fn()
                log.info("stopped %s", what)
            except Exception as exc:  # noqa: BLE001 - keep stopping the rest
                log.error("stopping %s failed: %s", what, exc)

    def health(self) -> dict[str, Any]:
        return {
            "pollers": {p.name: {"running": p.running, "batches": p.batches, "deleted": p.deleted,
                                          "failed": p.failed, "batch_size": p.batch_size} for p in self.pollers},
            "functions": {n: {"invocations": f.invocations, "errors": f.errors} for n, f in self.functions.items()},
        }


def _settings() -> Any:
    from functions.core.settings import get_settings

    return get_settings()


def _task(bundle: Path) -> str | None:
    try:
        return json.loads((bundle / "manifest.json").read_text()).get("task")
    except (OSError, ValueError):
        return None


def _die_with_parent() -> None:
    """In the child, before exec: get SIGTERM if `up` dies without cleaning up (Linux only)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, 15)  # PR_SET_PDEATHSIG, SIGTERM
    except (OSError, AttributeError):
        pass


def _stop_process(proc: subprocess.Popen, timeout: float = 10) -> None:
    """Stop a child we started, by its PID: SIGTERM, then SIGKILL if it does not exit."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=timeout)


class _timed:
    def __init__(self, out: dict[str, float], name: str) -> None:
        self.out, self.name = out, name

    def __enter__(self) -> None:
        self.t = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        self.out[self.name] = round(time.perf_counter() - self.t, 2)

