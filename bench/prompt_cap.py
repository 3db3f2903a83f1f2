"""Time to refuse an oversized generation prompt, with the character cap and without it (tokenized, then
refused as longer than the context), through the generation handler on the real chat model's bundle.

    python -m bench.prompt_cap [--chars 1000000] [--rounds 5]

Both variants run interleaved in the same rounds (load from other processes hits both alike); the
embeddings route's refusal of the same text is the reference a user sees elsewhere in the API.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

from bench.machine import describe, one_line

BUNDLES = Path(".cache/bundles")
CHAT_MODEL = "smollm2-135m-instruct"


def _event(path: str, body: dict) -> dict:
    return {"resource": "/{proxy+}", "path": path, "httpMethod": "POST", "headers": {"content-type": "application/json"},
            "multiValueHeaders": {}, "queryStringParameters": None, "pathParameters": {"proxy": path.lstrip("/")},
            "requestContext": {"stage": "dev", "path": f"/dev{path}", "httpMethod": "POST", "requestId": "bench",
                               "identity": {"sourceIp": "127.0.0.1"}, "authorizer": {"principalId": "bench"}},
            "body": json.dumps(body), "isBase64Encoded": False}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.prompt_cap", description=__doc__.splitlines()[0])
    ap.add_argument("--chars", type=int, default=1_000_000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--out", default="bench/results/prompt_cap.json")
    args = ap.parse_args(argv)
    os.environ.update(CIRRUS_MODEL_DIR=str(BUNDLES.resolve()), CIRRUS_GENERATION_MODELS=CHAT_MODEL,
                      POWERTOOLS_METRICS_NAMESPACE="bench", POWERTOOLS_METRICS_DISABLED="true",
                      POWERTOOLS_LOG_LEVEL="ERROR")
    from functions.core.inference.model_store import get_model, reset
    from functions.core.settings import get_settings
    from functions.handlers.api import handler
    from local.lambdas import LambdaContext

    ctx = LambdaContext(function_name="bench", memory_limit_in_mb=2048, timeout_s=30, aws_request_id="bench")
    machine = describe()
    print(one_line(machine), "load", os.getloadavg())
    text = ("where is my parcel? " * (args.chars // 20 + 1))[:args.chars]
    cases = {
        "chat, cap on": ("/v1/chat/completions", {"model": CHAT_MODEL, "messages": [{"role": "user", "content": text}],
                                                  "max_tokens": 4}, None),
        "chat, cap off": ("/v1/chat/completions", {"model": CHAT_MODEL, "messages": [{"role": "user", "content": text}],
                                                   "max_tokens": 4}, str(10**9)),
        "embeddings (reference)": ("/v1/embeddings", {"model": "all-minilm-l6-v2", "input": text}, None),
    }
    reset()
    get_settings.cache_clear()
    get_model(CHAT_MODEL)  # loaded once: the cost measured is the refusal, not the cold load
    get_model("all-minilm-l6-v2")
    seen: dict[str, list[float]] = {name: [] for name in cases}
    answers: dict[str, str] = {}
    for _ in range(args.rounds):
        for name, (path, body, cap) in cases.items():
            if cap is None:
                os.environ.pop("CIRRUS_MAX_PROMPT_CHARS", None)
            else:
                os.environ["CIRRUS_MAX_PROMPT_CHARS"] = cap
            get_settings.cache_clear()
            started = time.perf_counter()
            resp = handler(_event(path, body), ctx)
            seen[name].append(time.perf_counter() - started)
            answers[name] = f"{resp['statusCode']} {json.loads(resp['body'])['error']['code']}"
    rows = []
    for name, times in seen.items():
        rows.append({"case": name, "answer": answers[name], "p50_ms": round(statistics.median(times) * 1000, 1),
                     "max_ms": round(max(times) * 1000, 1)})
        print(rows[-1])
    on, off = (statistics.median(seen[k]) for k in ("chat, cap on", "chat, cap off"))
    print(f"cap off / cap on: {off / on:.0f}x")
    out = {"machine": {k: v for k, v in machine.items() if k != "_cpu"}, "chars": args.chars,
           "rounds": args.rounds, "load_avg_at_end": os.getloadavg(), "rows": rows, "ratio_off_on": round(off / on, 1)}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
