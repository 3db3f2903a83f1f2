"""Cost model: $ per million embeddings on Lambda at the measured latencies, vs a GPU endpoint per hour.

Assumptions (stated in the results too):
- Prices are AWS public on-demand list prices for us-east-1 as the author knew them (see PRICES:
  assumed, not fetched at run time; check the pricing pages before relying on them).
- Lambda gives CPU in proportion to memory: 1,769 MB = one vCPU-second per second, up to 6 vCPUs
  at 10,240 MB; below 1,769 MB a function gets that fraction of one vCPU, so 1-thread latency
  stretches by 1769/M. Above it, the speed-up is the one measured here from 1 to 2 threads,
  capped there: this 2-core machine cannot show more, so larger settings are not credited with
  more speed (their cost is an upper bound).
- The Lambda CPU is taken to be as fast per core as this machine's; duration is billed per 1 ms.
"""
from __future__ import annotations

import math

PRICES = {
    "as_of": "2025-01 (assumed list prices, us-east-1, not fetched at run time)",
    "lambda_x86_gb_second": 0.0000166667,
    "lambda_arm64_gb_second": 0.0000133334,
    "lambda_request": 0.20 / 1e6,
    "api_gateway_rest_request": 3.50 / 1e6,
    "sagemaker_ml_g5_xlarge_hour": 1.408,
}
MB_PER_VCPU = 1769
MAX_VCPU = 6
MEMORY_SETTINGS_MB = (512, 1024, 1769, 2048, 3008, 3538, 10240)


def lambda_latency_s(memory_mb: int, t1_s: float, t_all_s: float, measured_threads: int) -> float:
    """Latency at ``memory_mb`` from the 1-thread and all-thread latencies measured here."""
    share = min(memory_mb / MB_PER_VCPU, MAX_VCPU)
    if share <= 1:
        return t1_s / share
    speedup_measured = t1_s / t_all_s if t_all_s > 0 else 1.0
    # Linear between 1 vCPU (speed-up 1) and the measured thread count; flat beyond it.
    frac = min(1.0, (share - 1) / max(1, measured_threads - 1))
    speedup = 1 + frac * (speedup_measured - 1)
    return t1_s / max(1.0, speedup) if speedup_measured >= 1 else t1_s


def per_million(memory_mb: int, latency_s: float, batch: int, *, api_gateway: bool = False) -> float:
    invocations = 1e6 / batch
    billed_s = math.ceil(latency_s * 1000) / 1000
    compute = invocations * billed_s * memory_mb / 1024 * PRICES["lambda_x86_gb_second"]
    requests = invocations * PRICES["lambda_request"]
    gateway = invocations * PRICES["api_gateway_rest_request"] if api_gateway else 0.0
    return compute + requests + gateway


def model(latency: dict[str, dict[str, float]], peak_rss_mb: dict[str, dict[str, float]],
          measured_threads: int) -> dict:
    """latency[engine] = {"b1_t1", "b1_tall", "b32_t1", "b32_tall"} seconds (medium texts);
    peak_rss_mb[engine] = {"b1", "b32"}: the process's peak serving that batch (fits or not)."""
    rows = []
    for engine, lat in latency.items():
        for mem in MEMORY_SETTINGS_MB:
            # Lambda's own runtime and buffers need some room too: ask for 10% headroom.
            fits_b1 = peak_rss_mb[engine]["b1"] < mem * 0.9
            fits_b32 = peak_rss_mb[engine]["b32"] < mem * 0.9
            b1 = lambda_latency_s(mem, lat["b1_t1"], lat["b1_tall"], measured_threads)
            b32 = lambda_latency_s(mem, lat["b32_t1"], lat["b32_tall"], measured_threads)
            rows.append({
                "engine": engine, "memory_mb": mem, "fits_b1": fits_b1, "fits_b32": fits_b32,
                "vcpu_share": round(min(mem / MB_PER_VCPU, MAX_VCPU), 2),
                "b1_latency_ms": round(b1 * 1000, 2), "b32_latency_ms": round(b32 * 1000, 1),
                "usd_per_million_b1": round(per_million(mem, b1, 1), 3),
                "usd_per_million_b1_with_api_gateway": round(per_million(mem, b1, 1, api_gateway=True), 3),
                "usd_per_million_b32": round(per_million(mem, b32, 32), 4),
            })
    gpu_hour = PRICES["sagemaker_ml_g5_xlarge_hour"]
    break_even = {}
    for engine in latency:
        mine = [r for r in rows if r["engine"] == engine]
        best_b1 = min((r for r in mine if r["fits_b1"]), key=lambda r: r["usd_per_million_b1"], default=None)
        best_b32 = min((r for r in mine if r["fits_b32"]), key=lambda r: r["usd_per_million_b32"], default=None)
        if best_b1 is None or best_b32 is None:
            continue
        break_even[engine] = {
            "cheapest_b1": {"memory_mb": best_b1["memory_mb"], "usd_per_million": best_b1["usd_per_million_b1"],
                            "gpu_break_even_per_s": round(gpu_hour / (best_b1["usd_per_million_b1"] / 1e6) / 3600, 1)},
            "cheapest_b32": {"memory_mb": best_b32["memory_mb"], "usd_per_million": best_b32["usd_per_million_b32"],
                             "gpu_break_even_per_s": round(gpu_hour / (best_b32["usd_per_million_b32"] / 1e6) / 3600, 1)},
        }
    return {"prices": PRICES, "assumptions": __doc__.split("Assumptions (stated in the results too):")[1].strip(),
            "gpu_endpoint": {"instance": "ml.g5.xlarge", "usd_per_hour": gpu_hour,
                             "usd_per_month_always_on": round(gpu_hour * 730, 0)},
            "rows": rows, "break_even": break_even}


# --- generation: dollars per million generated tokens ------------------------------------------------
GEN_REQUEST_TOKENS = 128   # tokens generated per request in the model (a short chat reply)
ARCH_PRICE = {"x86_64": "lambda_x86_gb_second", "arm64": "lambda_arm64_gb_second"}


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
    for arch, price_key in ARCH_PRICE.items():
        for mem in MEMORY_SETTINGS_MB:
            per_token = lambda_latency_s(mem, 1 / tok_s_1, 1 / tok_s_all, measured_threads)
            ttft = lambda_latency_s(mem, ttft_s_1, ttft_s_all, measured_threads)
            duration = ttft + GEN_REQUEST_TOKENS * per_token
            billed = math.ceil(duration * 1000) / 1000
            requests = 1e6 / GEN_REQUEST_TOKENS
            usd = requests * (billed * mem / 1024 * PRICES[price_key] + PRICES["lambda_request"])
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
