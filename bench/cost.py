"""Cost model: $ per million embeddings per measured Lambda memory size, x86_64 and arm64 prices.

Assumptions (stated in the results too):
- Prices are AWS public on-demand list prices for us-east-1 as the author knew them (see PRICES:
  assumed, not fetched at run time; check the pricing pages before relying on them).
- Lambda gives CPU in proportion to memory: 1,769 MB = one vCPU, 3,538 MB = two. A size is
  "measured" by running onnxruntime (and PyTorch) with that many threads on this machine: 1 thread
  stands for 1,769 MB, 2 threads for 3,538 MB. Thread counts emulate vCPUs; this is not a Lambda
  measurement, and Lambda's vCPUs are taken to be as fast per core as this machine's.
- arm64 rows price the same latencies at Graviton rates: no arm64 CPU was measured here, so
  they hold only if Graviton runs the int8 file as fast per core as this x86 CPU (its int8 path
  is UDOT/SMMLA, see docs/quantization.md); treat them as a what-if, not a measurement.
- Duration is billed per 1 ms; one request per invocation (batch 1 = one text per request,
  batch 32 = a batch job's 32 texts per model call).
"""
from __future__ import annotations

import math

PRICES = {
    "as_of": "2025-01 (assumed list prices, us-east-1, not fetched at run time)",
    "lambda_gb_second": {"x86_64": 0.0000166667, "arm64": 0.0000133334},
    "lambda_request": 0.20 / 1e6,
    "api_gateway_rest_request": 3.50 / 1e6,
    "sagemaker_ml_g5_xlarge_hour": 1.408,
}
MB_PER_VCPU = 1769
MAX_VCPU = 6
MEMORY_SETTINGS_MB = (512, 1024, 1769, 2048, 3008, 3538, 10240)  # the generation model's sizes


def memory_for(vcpus: int) -> int:
    return MB_PER_VCPU * vcpus


def lambda_latency_s(memory_mb: int, t1_s: float, t_all_s: float, measured_threads: int) -> float:
    """Latency at ``memory_mb`` from the 1-thread and all-thread latencies measured here (generation)."""
    share = min(memory_mb / MB_PER_VCPU, MAX_VCPU)
    if share <= 1:
        return t1_s / share
    speedup_measured = t1_s / t_all_s if t_all_s > 0 else 1.0
    # Linear between 1 vCPU (speed-up 1) and the measured thread count; flat beyond it.
    frac = min(1.0, (share - 1) / max(1, measured_threads - 1))
    speedup = 1 + frac * (speedup_measured - 1)
    return t1_s / max(1.0, speedup) if speedup_measured >= 1 else t1_s


def per_million(memory_mb: int, latency_s: float, batch: int, arch: str, *, api_gateway: bool = False) -> float:
    invocations = 1e6 / batch
    billed_s = math.ceil(latency_s * 1000) / 1000
    compute = invocations * billed_s * memory_mb / 1024 * PRICES["lambda_gb_second"][arch]
    requests = invocations * PRICES["lambda_request"]
    gateway = invocations * PRICES["api_gateway_rest_request"] if api_gateway else 0.0
    return compute + requests + gateway


def model(measured: dict[str, dict[int, dict[str, float]]], peak_rss_mb: dict[str, float]) -> dict:
    """measured[engine][threads] = {"b1_s", "b32_s"} (p50 seconds); peak_rss_mb[engine] at batch 32."""
    rows = []
    for engine, per_threads in measured.items():
        for threads, lat in sorted(per_threads.items()):
            mem = memory_for(threads)
            fits = engine not in peak_rss_mb or peak_rss_mb[engine] < mem * 0.9  # 10% for Lambda's runtime
            for arch in PRICES["lambda_gb_second"]:
                rows.append({
                    "engine": engine, "arch": arch, "memory_mb": mem, "vcpus": threads, "fits": fits,
                    "measured_on": f"this machine, {threads} thread{'s' if threads > 1 else ''}"
                                   + ("" if arch == "x86_64" else " (arm64 price, x86 latency: assumed)"),
                    "b1_latency_ms": round(lat["b1_s"] * 1000, 2), "b32_latency_ms": round(lat["b32_s"] * 1000, 1),
                    "usd_per_million_b1": round(per_million(mem, lat["b1_s"], 1, arch), 3),
                    "usd_per_million_b1_with_api_gateway": round(per_million(mem, lat["b1_s"], 1, arch, api_gateway=True), 3),
                    "usd_per_million_b32": round(per_million(mem, lat["b32_s"], 32, arch), 4),
                })
    return {"prices": PRICES, "assumptions": __doc__.split("Assumptions (stated in the results too):")[1].strip(),
            "rows": rows, "recommendation": recommend(rows)}


def recommend(rows: list[dict], engine: str = "onnx-int8") -> dict:
    """The stage's memory: the cheapest measured size per architecture for API calls and batch jobs.

    Ties within 2% go to the larger size (lower latency for the same money).
    """
    out = {}
    for arch in PRICES["lambda_gb_second"]:
        mine = [r for r in rows if r["engine"] == engine and r["arch"] == arch and r["fits"]]
        if not mine:
            continue
        pick = {}
        for key, use in (("usd_per_million_b1", "api"), ("usd_per_million_b32", "batch")):
            best = min(r[key] for r in mine)
            chosen = max((r for r in mine if r[key] <= best * 1.02), key=lambda r: r["memory_mb"])
            pick[use] = {"memory_mb": chosen["memory_mb"], "usd_per_million": chosen[key],
                         "latency_ms": chosen["b1_latency_ms" if use == "api" else "b32_latency_ms"]}
        out[arch] = pick
    return out


# --- generation: dollars per million generated tokens ------------------------------------------------
GEN_REQUEST_TOKENS = 128   # tokens generated per request in the model (a short chat reply)


def generation_model(tok_s_1: float, tok_s_all: float, ttft_s_1: float, ttft_s_all: float, peak_rss_mb: float,
                     measured_threads: int, *, gpu_tok_s: float | None = None) -> dict:
    """$ per million generated tokens on Lambda from the decode speed and first-token time measured
    here at 1 thread and at ``measured_threads``, per memory size and architecture.

    A request generates ``GEN_REQUEST_TOKENS`` tokens after its first one; its billed duration is
    TTFT + tokens / decode speed at the vCPU share of that memory size (``lambda_latency_s``).
    arm64 is priced at its own GB-second rate but assumed as fast as this x86 machine (not
    measured here: Graviton speed differs). ``gpu_tok_s`` (aggregate tokens/s of the GPU endpoint,
    if known) gives its $/M; without it the break-even throughput is reported instead.
    """
    rows = []
    for arch, price in PRICES["lambda_gb_second"].items():
        for mem in MEMORY_SETTINGS_MB:
            per_token = lambda_latency_s(mem, 1 / tok_s_1, 1 / tok_s_all, measured_threads)
            ttft = lambda_latency_s(mem, ttft_s_1, ttft_s_all, measured_threads)
            duration = ttft + GEN_REQUEST_TOKENS * per_token
            billed = math.ceil(duration * 1000) / 1000
            requests = 1e6 / GEN_REQUEST_TOKENS
            usd = requests * (billed * mem / 1024 * price + PRICES["lambda_request"])
            rows.append({"arch": arch, "memory_mb": mem, "fits": peak_rss_mb < mem * 0.9,
                         "tok_s": round(1 / per_token, 1), "request_s": round(duration, 3),
                         "usd_per_million_tokens": round(usd, 3)})
    gpu_hour = PRICES["sagemaker_ml_g5_xlarge_hour"]
    cheapest = min((r for r in rows if r["fits"]), key=lambda r: r["usd_per_million_tokens"], default=None)
    gpu: dict = {"instance": "ml.g5.xlarge", "usd_per_hour": gpu_hour}
    if gpu_tok_s:
        gpu["usd_per_million_tokens_at_full_load"] = round(gpu_hour / (gpu_tok_s * 3600) * 1e6, 3)
    if cheapest:
        # Aggregate tokens/s the always-on endpoint must sustain to be as cheap per token as Lambda.
        gpu["break_even_tok_s"] = round(gpu_hour / 3600 / (cheapest["usd_per_million_tokens"] / 1e6), 1)
    return {"request_tokens": GEN_REQUEST_TOKENS, "measured_threads": measured_threads,
            "peak_rss_mb": round(peak_rss_mb, 1), "rows": rows, "cheapest": cheapest, "gpu_endpoint": gpu,
            "assumptions": generation_model.__doc__.split("\n\n", 1)[1].strip()}
