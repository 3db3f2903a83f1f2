"""Render results.json as results.md (tables, ratios against PyTorch fp32) and the PNG plots."""
from __future__ import annotations

from pathlib import Path

REFERENCE = "pytorch-fp32"
LABELS = {"pytorch-fp32": "PyTorch fp32", "onnx-fp32": "ONNX fp32", "onnx-int8": "ONNX int8 (shipped)",
          "onnx-int8-u8s8": "ONNX int8 u8s8 (candidate)",
          "onnx-bare": "onnxruntime + tokenizers only (floor)"}


def _engines(cell: dict) -> list[str]:
    return [e for e in LABELS if e in cell]


def _x(ref: float, val: float) -> str:
    return f"{ref / val:.2f}x" if val else "-"


def write(r: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    plots = _plots(r, out)
    (out / "results.md").write_text(markdown(r, plots))


def markdown(r: dict, plots: list[str] | None = None) -> str:
    m = r["machine"]
    lines = [
        "# Cirrus benchmark results",
        "",
        f"Mode **{r['mode']}**, started {r['started_at']}, took {r.get('elapsed_s', '?')} s. "
        f"Machine: {m['cpu_model']}, {m['cores']} cores{' (VM)' if m.get('hypervisor') else ''}, "
        f"{m['mhz_reported']:.0f} MHz reported, flags {', '.join(m['simd_flags'])}, {m['memory_gb']} GB; "
        f"load average at start {m['load_avg_at_start']}, at end {m.get('load_avg_at_end')}. onnxruntime {m['versions'].get('onnxruntime')}, "
        f"torch {m['versions'].get('torch')}, transformers {m['versions'].get('transformers')}.",
        "",
        "Absolute times are **this machine's**; the ratios (`x`) are against PyTorch fp32 measured in the same "
        "run, with the engines interleaved round by round. Latency is per call, text in -> normalised "
        "embedding out (tokenization included); warm-up calls are excluded.",
        "",
        *_busy_warning(r),
        "## Targets",
        "",
        "| target | measured | need | |",
        "|---|---|---|---|",
    ]
    for t in r["targets"]:
        lines.append(f"| {t['name']} | {t['measured']} | {t['need']} | {'met' if t['met'] else '**missed**'} |")

    w = r["workloads"]
    lines += ["", "## Latency and throughput", "",
              "Workloads (tokens incl. [CLS]/[SEP]): " + ", ".join(
                  f"{k} ~{v['mean_tokens']} ({v['min_tokens']}-{v['max_tokens']})" for k, v in w.items()) + ".", ""]
    cells = list(r["latency"].values())
    engines = _engines(cells[0])
    lines.append("| threads | texts | batch | " + " | ".join(f"{LABELS[e]} p50 / p99 ms" for e in engines)
                 + " | " + " | ".join(f"{LABELS[e]} vs PyTorch" for e in engines if e != REFERENCE) + " |")
    lines.append("|" + "---|" * (3 + 2 * len(engines) - 1))
    for c in cells:
        ref = c[REFERENCE]["p50_ms"]
        lines.append(f"| {c['threads']} | {c['workload']} | {c['batch']} | "
                     + " | ".join(f"{c[e]['p50_ms']:.2f} / {c[e]['p99_ms']:.2f}" for e in engines) + " | "
                     + " | ".join(_x(ref, c[e]["p50_ms"]) for e in engines if e != REFERENCE) + " |")
    lines += ["", "Throughput at batch 32 (texts/s):", "",
              "| threads | texts | " + " | ".join(LABELS[e] for e in engines) + " |",
              "|" + "---|" * (2 + len(engines))]
    for c in cells:
        if c["batch"] == 32:
            lines.append(f"| {c['threads']} | {c['workload']} | " + " | ".join(
                f"{c[e]['texts_per_s']:.0f} ({_x(c[REFERENCE]['p50_ms'], c[e]['p50_ms'])})" for e in engines) + " |")
    n_small = min(c[engines[0]]["n"] for c in cells)
    lines += ["", f"Samples per cell: {n_small} to {max(c[engines[0]]['n'] for c in cells)}; with fewer than "
              "100 samples p99 is close to the maximum."]

    lines += ["", "## Parity, memory, files", "",
              "| engine | mean cos vs PyTorch | p1 cos | min cos | peak RSS MB: loaded / medium b1 / medium b32 / long b32 | file MB |",
              "|---|---|---|---|---|---|"]
    for e in engines:
        p = r["parity"].get(e)
        mem = r["memory"][e]
        cos = f"{p['mean_cosine']:.4f} | {p['p1_cosine']:.4f} | {p['min_cosine']:.4f}" if p else "reference | | "
        lines.append(f"| {LABELS[e]} | {cos} | {mem['after_load']:.0f} / {mem['medium_b1']:.0f} / "
                     f"{mem['medium_b32']:.0f} / {mem['long_b32']:.0f} | {r['files'][e]['mb']} |")
    n_par = next(iter(r["parity"].values()))["n_texts"]
    lines += ["", f"Parity over {n_par} texts (the export gate's eval set plus every workload text). "
              "Peak RSS (high-water mark) of a fresh process per engine (all threads), read after loading and "
              "after each growing workload."]

    cold = r.get("cold_start")
    if cold:
        lines += ["", "## Cold start", "", "| runtime | import s | load s | first result s | process wall s | n |",
                  "|---|---|---|---|---|---|"]
        for e, c in cold.items():
            lines.append(f"| {LABELS[e]} | {c['import_s_median']} | {c['load_s_median']} | "
                         f"{c['first_result_s_median']} | {c['process_wall_s_median']} | {len(c['runs'])} |")
        lines += ["", "Medians over fresh processes, alternating runtimes; the first round of each only warms the "
                  "page cache. `first result` runs from the process's first line; `process wall` adds "
                  "interpreter start-up."]

    ce = r["ceiling"]
    pk = r["peaks"]
    lines += ["", "## Ceiling", "",
              f"`{ce['formula']}` with L={ce['shape']['layers']}, d={ce['shape']['hidden']}, "
              f"f={ce['shape']['ffn']}, n = tokens (matrix products only, 2 FLOPs per multiply-add).", "",
              "Peak of this CPU, measured: onnxruntime's GEMM on a 1024^3 product, best of repeated runs "
              "(GFLOP/s or GOP/s): " + "; ".join(f"{k} {v}" for k, v in pk["measured_gops"].items()) + ". "
              f"Theoretical ({pk['theoretical']['note']}): fp32 {pk['theoretical']['fp32_gflops']} GFLOP/s, "
              f"int8 u8s8 {pk['theoretical']['int8_gops_u8s8']} GOP/s.", "",
              "| texts | tokens | GFLOP/text | " + " | ".join(f"{LABELS[e]} GFLOP/s" for e in engines)
              + " | int8 / u8u8 peak | int8 / fp32 peak |", "|" + "---|" * (5 + len(engines))]
    for wname, row in ce["per_workload"].items():
        lines.append(f"| {wname} | {row['mean_tokens']} | {row['gflops_per_text']} | "
                     + " | ".join(str(row.get(f"{e}_gflops", "-")) for e in engines)
                     + f" | {row.get('int8_fraction_of_u8u8_peak', '-')} | {row.get('int8_fraction_of_fp32_peak', '-')} |")
    lines += ["", "At batch 32, all threads. The shipped int8 model is mixed precision: the FFN down-projections "
              "and the attention products stay fp32, so neither peak alone is its ceiling."]

    prof = r.get("profile")
    if prof:
        lines += ["", "## Profile (medium texts, batch 32, 1 thread)", "",
                  "| file | ms / run (kernels) | top operators (share) |", "|---|---|---|"]
        for e, p in prof["ops"].items():
            tops = ", ".join(f"{o['op']} {o['share']:.0%}" for o in p["ops"][:6])
            lines.append(f"| {LABELS.get(e, e)} | {p['ms_per_run']} | {tops} |")
        for key, t in prof["tokenizer"].items():
            lines.append(f"\nTokenizer ({key}): {t['tokenize_ms']} ms, {t['share_of_embed']:.1%} of the shipped "
                         "engine's p50 call.")

    h = r.get("handler")
    api = r.get("api")
    lines += ["", "## API path", ""]
    if h and "unavailable" not in h:
        s = h["single"]
        raw = s["raw_session"]["p50_ms"]
        lines += ["In-process, one text (bench/handler_latency.py): raw session "
                  f"{raw} ms, runtime embed {s['runtime_embed']['p50_ms']} ms, API handler "
                  f"{s['handler']['p50_ms']} ms (x{s['handler']['p50_ms'] / raw:.2f} of the raw session); handler "
                  f"cold start {h['cold_start']['first_response_s_median']} s."]
    elif h:
        lines.append(f"Handler benchmark not available: {h['unavailable']}")
    if api and "unavailable" not in api:
        lines += ["", f"Through the local system (`python -m local up`: HTTP -> gateway -> authorizer, policy "
                  f"cached {api['authorizer_cache_ttl_s']} s as API Gateway's default -> API handler), one text per "
                  "request, clients on the same cores:", "",
                  "| concurrency | requests/s | p50 ms | p99 ms | errors |", "|---|---|---|---|---|"]
        for lv in api["levels"]:
            lines.append(f"| {lv['concurrency']} | {lv['requests_per_s']} | {lv['p50_ms']} | {lv['p99_ms']} | {lv['errors']} |")
        if h and "unavailable" not in h:
            c1 = api["levels"][0]["p50_ms"]
            lines.append(f"\nOverhead at concurrency 1: HTTP p50 {c1} ms = x{c1 / h['single']['raw_session']['p50_ms']:.2f} "
                         "of the raw session. The local gateway runs one warm container per function, so "
                         "concurrent requests queue (Lambda would scale out).")
    elif api:
        lines.append(f"Local system not measured: {api['unavailable']}")

    b = r.get("batch")
    lines += ["", "## Batch jobs", ""]
    if b and "unavailable" not in b:
        lines += [f"bench/batch_throughput.py: a JSONL job through the real splitter and worker handlers on moto "
                  f"(in-process), workers sharing one loaded model; the model alone embeds "
                  f"{b['model_alone_lines_per_s']} lines/s on the same texts.", "",
                  "| lines | chunk lines | chunks | workers | status | total s | lines/s | of model alone |",
                  "|---|---|---|---|---|---|---|---|"]
        for row in b["runs"]:
            lines.append(f"| {row['lines']} | {row['chunk_lines']} | {row['chunks']} | {row['workers']} | "
                         f"{row['status']} | {row['total_s']} | {row['lines_per_s']} | "
                         f"{row['lines_per_s'] / b['model_alone_lines_per_s']:.0%} |")
    else:
        lines.append(f"Not measured in this run: {(b or {}).get('unavailable', 'skipped')}.")

    co = r["cost"]
    lines += ["", "## Cost", "", f"Prices {co['prices']['as_of']}: Lambda x86 "
              f"${co['prices']['lambda_x86_gb_second']} per GB-s and ${co['prices']['lambda_request'] * 1e6:.2f} per "
              f"million requests; API Gateway REST ${co['prices']['api_gateway_rest_request'] * 1e6:.2f} per million; "
              f"SageMaker ml.g5.xlarge ${co['prices']['sagemaker_ml_g5_xlarge_hour']}/h "
              f"(${co['gpu_endpoint']['usd_per_month_always_on']:.0f}/month always on).", "",
              "Assumptions: " + " ".join(co["assumptions"].split()), "",
              "Medium texts (~40 tokens). $ per million embeddings:", "",
              "| engine | memory MB | vCPU | batch-1 ms | $/M batch 1 | + API Gateway | batch-32 ms | $/M batch 32 |",
              "|---|---|---|---|---|---|---|---|"]
    for row in co["rows"]:
        nf1 = "" if row["fits_b1"] else " (does not fit)"
        nf32 = "" if row["fits_b32"] else " (does not fit)"
        lines.append(f"| {LABELS[row['engine']]} | {row['memory_mb']} | {row['vcpu_share']} | {row['b1_latency_ms']} | "
                     f"{row['usd_per_million_b1']}{nf1} | {row['usd_per_million_b1_with_api_gateway']} | "
                     f"{row['b32_latency_ms']} | {row['usd_per_million_b32']}{nf32} |")
    lines.append("")
    for e, be in co["break_even"].items():
        lines.append(f"- {LABELS[e]}: cheapest batch-1 at {be['cheapest_b1']['memory_mb']} MB "
                     f"(${be['cheapest_b1']['usd_per_million']}/M); an always-on ml.g5.xlarge costs the same only above "
                     f"{be['cheapest_b1']['gpu_break_even_per_s']} embeddings/s sustained. Batch 32 at "
                     f"{be['cheapest_b32']['memory_mb']} MB: ${be['cheapest_b32']['usd_per_million']}/M, "
                     f"break-even {be['cheapest_b32']['gpu_break_even_per_s']}/s.")
    lines.append("\nThe GPU figure is a price comparison, not a measurement: no GPU endpoint was run here.")
    if plots:
        lines += ["", "## Plots", ""] + [f"![{p}]({p})" for p in plots]
    return "\n".join(lines) + "\n"


def _busy_warning(r: dict) -> list[str]:
    """Flag a run whose multi-threaded reference got slower than single-threaded: a busy machine."""
    lat = r["latency"]
    top = max(c["threads"] for c in lat.values())
    worse = [w for w in ("short", "medium", "long")
             if f"t1/{w}/b32" in lat and f"t{top}/{w}/b32" in lat and top > 1
             and lat[f"t{top}/{w}/b32"][REFERENCE]["texts_per_s"] < lat[f"t1/{w}/b32"][REFERENCE]["texts_per_s"]]
    if not worse:
        return []
    return [f"> **Busy machine:** PyTorch ran slower with {top} threads than with 1 ({', '.join(worse)} texts; "
            f"load average {r['machine']['load_avg_at_start']} on {r['machine']['cores']} cores). Its OpenMP threads "
            "wait on each other when the host deschedules one, so the multi-thread ratios below overstate "
            "Cirrus's advantage; the 1-thread rows are the fair comparison for this run. Rerun on a quiet machine.", ""]


def _plots(r: dict, out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    lat = r["latency"]
    threads = max(c["threads"] for c in lat.values())
    engines = _engines(next(iter(lat.values())))
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.2))
    for ax, wname in zip(axes, ("short", "medium", "long")):
        cells = sorted((c for c in lat.values() if c["threads"] == threads and c["workload"] == wname),
                       key=lambda c: c["batch"])
        for e in engines:
            xs = [c["batch"] for c in cells]
            ax.plot(xs, [c[e]["p50_ms"] / c["batch"] for c in cells], marker="o", label=LABELS[e])
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("batch size")
        ax.set_ylabel("p50 ms per text (this machine)")
        ax.set_title(f"{wname} texts (~{r['workloads'][wname]['mean_tokens']:.0f} tokens), {threads} threads")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"Latency vs batch size - {r['machine']['cpu_model']}, {r['machine']['cores']} cores")
    fig.tight_layout()
    fig.savefig(out / "latency_vs_batch.png", dpi=110)
    plt.close(fig)
    written.append("latency_vs_batch.png")

    rows = r["cost"]["rows"]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    for ax, key, title in ((axes[0], "usd_per_million_b1", "one text per request"),
                           (axes[1], "usd_per_million_b32", "32 texts per invocation (batch jobs)")):
        mems = sorted({row["memory_mb"] for row in rows})
        width = 0.38
        fit_key = "fits_b1" if key.endswith("b1") else "fits_b32"
        for i, e in enumerate(sorted({row["engine"] for row in rows}, key=list(LABELS).index)):
            vals = {row["memory_mb"]: row for row in rows if row["engine"] == e}
            xs = [j + (i - 0.5) * width for j in range(len(mems))]
            bars = ax.bar(xs, [vals[mm][key] for mm in mems], width, color=f"C{i}")
            for bar, mm in zip(bars, mems):
                if not vals[mm][fit_key]:
                    bar.set_hatch("//")
                    bar.set_alpha(0.4)
        ax.set_xticks(range(len(mems)), [str(mm) for mm in mems])
        ax.set_xlabel("Lambda memory MB")
        ax.set_ylabel("$ per million embeddings")
        ax.set_title(f"Lambda, medium texts, {title}")
        ax.set_yscale("log")
        ax.grid(True, axis="y", which="both", alpha=0.3)
    from matplotlib.patches import Patch

    axes[0].legend(handles=[Patch(color=f"C{i}", label=LABELS[e]) for i, e in enumerate(
        sorted({row["engine"] for row in rows}, key=list(LABELS).index))], fontsize=8)
    fig.suptitle(f"Cost per million embeddings (prices {r['cost']['prices']['as_of'].split(' (')[0]}, assumed; hatched: "
                 "does not fit in memory)")
    fig.tight_layout()
    fig.savefig(out / "cost_per_million.png", dpi=110)
    plt.close(fig)
    written.append("cost_per_million.png")
    return written


def main() -> None:
    """``python -m bench.report [DIR]``: re-render results.md and the plots from DIR/results.json."""
    import json
    import sys

    out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent / "results"
    write(json.loads((out / "results.json").read_text()), out)
    print(f"wrote {out}/results.md and plots")


if __name__ == "__main__":
    main()
