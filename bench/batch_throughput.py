"""Batch job throughput on one machine: lines/second vs chunk size and concurrent workers.

Runs the real splitter/worker handlers on moto in-process (S3 notifications -> SQS -> handlers),
with the default embedding bundle, W worker threads sharing one loaded model (as W warm Lambdas
would each hold one). Baseline: the model alone on the same texts. Usage:

    python -m bench.batch_throughput [--lines 2000] [--chunks 100,500,2000] [--workers 1,2,4]
"""
from __future__ import annotations

import argparse
import json
import os
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "bench" / "results" / "batch_throughput.json"


def texts(n: int) -> list[str]:
    words = "parcel refund late order broken address invoice account password delivery".split()
    return [f"{words[i % 10]} {words[(i * 7) % 10]} for order {i}" for i in range(n)]


def run(lines: int, chunk_lines: int, workers: int, bundles: Path, store) -> dict:
    import boto3
    from moto import mock_aws

    from functions.core import model_store
    from functions.core.adapters.base import reset_clients
    from functions.core.batch import jobs
    from functions.core.settings import get_settings
    from functions.handlers import batch_splitter, batch_worker
    from local.aws import provision
    from local.config import LocalConfig
    from local.pollers import failed_ids, sqs_record

    reset_clients()
    with mock_aws():
        made = provision(None, LocalConfig(stage="bench", visibility_timeout_s=300))
        os.environ.update({"CIRRUS_MODEL_DIR": str(bundles), "CIRRUS_DATA_BUCKET": made.buckets["Data"],
                           "CIRRUS_JOBS_TABLE": made.tables["Jobs"], "CIRRUS_WORK_QUEUE_URL": made.queues["Work"].url,
                           "CIRRUS_BATCH_CHUNK_LINES": str(chunk_lines)})
        get_settings.cache_clear()
        jobs.reset()
        model_store._store = store
        sqs = boto3.client("sqs")
        s3 = boto3.client("s3")
        events, work = made.queues["JobEvents"], made.queues["Work"]
        sqs.purge_queue(QueueUrl=events.url)
        body = "".join(json.dumps({"id": i, "input": t}) + "\n" for i, t in enumerate(texts(lines)))

        def pump(queue, handler, batch: int) -> int:
            msgs = sqs.receive_message(QueueUrl=queue.url, MaxNumberOfMessages=batch,
                                       AttributeNames=["All"]).get("Messages", [])
            if msgs:
                records = [sqs_record(m, queue.arn) for m in msgs]
                failed = failed_ids(handler({"Records": records}, _Ctx()), records)
                for m in msgs:
                    if m["MessageId"] not in failed:
                        sqs.delete_message(QueueUrl=queue.url, ReceiptHandle=m["ReceiptHandle"])
            return len(msgs)

        started = time.perf_counter()
        s3.put_object(Bucket=made.buckets["Data"], Key="jobs/input/bench.jsonl", Body=body.encode())
        while not pump(events, batch_splitter.handler, 10):
            pass
        split_s = time.perf_counter() - started
        etag = s3.head_object(Bucket=made.buckets["Data"], Key="jobs/input/bench.jsonl")["ETag"]
        job_id = jobs.job_id_for(made.buckets["Data"], "jobs/input/bench.jsonl", etag)
        done = threading.Event()

        def worker_loop() -> None:
            while not done.is_set():
                if not pump(work, batch_worker.handler, 1):  # one chunk per invocation, like batchSize=1
                    time.sleep(0.01)

        threads = [threading.Thread(target=worker_loop, daemon=True) for _ in range(workers)]
        for t in threads:
            t.start()
        while (job := jobs.job_store().get(job_id))["status"] not in ("succeeded", "succeeded_with_errors", "failed"):
            time.sleep(0.05)
        total_s = time.perf_counter() - started
        done.set()
        for t in threads:
            t.join()
    reset_clients()
    return {"lines": lines, "chunk_lines": chunk_lines, "workers": workers, "chunks": job["chunks_total"],
            "status": job["status"], "split_s": round(split_s, 3), "total_s": round(total_s, 3),
            "lines_per_s": round(lines / total_s, 1)}


class _Ctx:
    function_name, memory_limit_in_mb, aws_request_id = "bench", 2048, "bench"
    invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:bench"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lines", type=int, default=2000)
    ap.add_argument("--chunks", default="100,500,2000")
    ap.add_argument("--workers", default="1,2,4")
    ap.add_argument("--bundles", type=Path, default=REPO / ".cache" / "bundles")
    args = ap.parse_args()
    for k, v in {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1",
                 "AWS_REGION": "us-east-1", "POWERTOOLS_LOG_LEVEL": "WARNING",
                 "POWERTOOLS_METRICS_DISABLED": "true", "POWERTOOLS_TRACE_DISABLED": "true"}.items():
        os.environ[k] = v
    os.environ.pop("AWS_ENDPOINT_URL", None)
    import warnings

    warnings.filterwarnings("ignore")
    from functions.core.model_store import ModelStore
    from functions.core.settings import Settings

    store = ModelStore(Settings(model_dir=str(args.bundles)))
    model = store.get("all-minilm-l6-v2")
    corpus = texts(args.lines)
    t = time.perf_counter()
    model.embed(corpus)
    base = args.lines / (time.perf_counter() - t)
    rows = []
    print(f"model alone: {base:.0f} lines/s ({model.threads} intra-op threads, {os.cpu_count()} CPUs)")
    print(f"{'chunk':>6} {'workers':>7} {'chunks':>6} {'split s':>8} {'total s':>8} {'lines/s':>8}")
    for c in [int(x) for x in args.chunks.split(",")]:
        for w in [int(x) for x in args.workers.split(",")]:
            r = run(args.lines, c, w, args.bundles, store)
            rows.append(r)
            print(f"{c:>6} {w:>7} {r['chunks']:>6} {r['split_s']:>8} {r['total_s']:>8} {r['lines_per_s']:>8}")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({"model_alone_lines_per_s": round(base, 1), "cpus": os.cpu_count(),
                               "runs": rows}, indent=2) + "\n")
    print(f"wrote {OUT.relative_to(REPO)}")


if __name__ == "__main__":
    main()
