"""Render results.json as results.md (tables, ratios against PyTorch fp32) and the PNG plots."""
from __future__ import annotations

from pathlib import Path

REFERENCE = "pytorch-fp32"
PEER = "fastembed-int8"
SHIPPED = "onnx-int8"
LABELS = {"pytorch-fp32": "PyTorch fp32 (sentence-transformers)",
          "st-onnx-int8": "sentence-transformers ONNX int8",
          "fastembed-int8": "fastembed int8 (fused, per-channel s8)",
          "ort-fastembed-file": "plain onnxruntime on fastembed's file",
          "onnx-int8": "Cirrus runtime, shipped bundle (accurate profile)",
          "onnx-int8-fast": "Cirrus runtime, fast profile",
          "onnx-fp32": "Cirrus runtime, fp32 export",
          "onnx-bare": "onnxruntime + tokenizers on the shipped file (floor)"}


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

    lines += ["", *peer_table(r)]
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
              "| engine | gate set mean / p1 / min | held-out mean / p1 / min | peak RSS MB: loaded / b1 / medium b32 / long b32 | file MB |",
              "|---|---|---|---|---|"]
    for e in engines:
        cells_p = []
        for key in ("gate", "held-out"):
            p = r["parity"].get(key, {}).get(e)
            cells_p.append(f"{p['mean_cosine']:.4f} / {p['p1_cosine']:.4f} / {p['min_cosine']:.4f}" if p else "reference")
        mem = r.get("memory", {}).get(e)
        mem_s = (f"{mem['after_load']:.0f} / {mem['b1_b1']:.0f} / {mem['medium_b32']:.0f} / {mem['long_b32']:.0f}"
                 if mem else "-")
        lines.append(f"| {LABELS[e]} | {cells_p[0]} | {cells_p[1]} | {mem_s} | {r['files'].get(e, {}).get('mb', '-')} |")
    lines += ["", "Parity: every engine embeds the same texts in batches of 32, cosine against PyTorch fp32 "
              "(sentence-transformers). Peak RSS (high-water mark) of a fresh process per engine (all threads)."]

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
              + " | int8 / u8s8 peak | int8 / fp32 peak |", "|" + "---|" * (5 + len(engines))]
    for wname, row in ce["per_workload"].items():
        lines.append(f"| {wname} | {row['mean_tokens']} | {row['gflops_per_text']} | "
                     + " | ".join(str(row.get(f"{e}_gflops", "-")) for e in engines)
                     + f" | {row.get('int8_fraction_of_u8s8_peak', '-')} | {row.get('int8_fraction_of_fp32_peak', '-')} |")
    lines += ["", "At batch 32, all threads. The shipped model's profile decides how much stays fp32 "
              "(manifest `profile`), so neither peak alone is its ceiling."]

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
        ll = h.get("single_lambda_logging")
        if ll:
            lines.append(f"With Lambda's logging (INFO logs and EMF metrics written, same rounds' method): raw "
                         f"{ll['raw_session']['p50_ms']} ms, handler {ll['handler']['p50_ms']} ms "
                         f"(x{ll['handler']['p50_ms'] / ll['raw_session']['p50_ms']:.2f}).")
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
    px = co["prices"]
    lines += ["", "## Cost per memory size and architecture", "",
              f"Prices {px['as_of']}: Lambda ${px['lambda_gb_second']['x86_64']} (x86_64) / "
              f"${px['lambda_gb_second']['arm64']} (arm64) per GB-s, ${px['lambda_request'] * 1e6:.2f} per million "
              f"requests; API Gateway REST ${px['api_gateway_rest_request'] * 1e6:.2f} per million.", "",
              "Assumptions: " + " ".join(co["assumptions"].split()), "",
              "| engine | arch | memory MB (vCPUs) | measured as | b1 ms | $/M b1 | + API Gateway | b32x40 ms | $/M b32 |",
              "|---|---|---|---|---:|---:|---:|---:|---:|"]
    for row in co["rows"]:
        fit = "" if row["fits"] else " (does not fit)"
        lines.append(f"| {LABELS.get(row['engine'], row['engine'])} | {row['arch']} | {row['memory_mb']} ({row['vcpus']}){fit} | "
                     f"{row['measured_on']} | {row['b1_latency_ms']} | {row['usd_per_million_b1']} | "
                     f"{row['usd_per_million_b1_with_api_gateway']} | {row['b32_latency_ms']} | {row['usd_per_million_b32']} |")
    lines.append("")
    for arch, rec in co["recommendation"].items():
        lines.append(f"- Recommended for the stage on {arch}: API {rec['api']['memory_mb']} MB "
                     f"(${rec['api']['usd_per_million']}/M, {rec['api']['latency_ms']} ms per text); batch worker "
                     f"{rec['batch']['memory_mb']} MB (${rec['batch']['usd_per_million']}/M at batch 32).")
    if plots:
        lines += ["", "## Plots", ""] + [f"![{p}]({p})" for p in plots]
    return "\n".join(lines) + "\n"


def peer_table(r: dict) -> list[str]:
    """The issue's table: one row per system, speed columns and ratios vs fastembed and PyTorch."""
    lat = r["latency"]
    t = max(c["threads"] for c in lat.values())
    cols = [(f"t{t}/b1/b1", "b1 p50 ms"), (f"t{t}/medium/b32", "b32x40 texts/s"), (f"t{t}/long/b32", "b32x250 texts/s")]
    cold = r.get("cold_start", {})
    par = r["parity"]
    lines = ["## Peer table", "",
             f"{t} threads, same interleaved rounds for every system; all-MiniLM-L6-v2, same weights everywhere. "
             f"Parity = cosine to PyTorch fp32 (mean / p1) on the gate's set ({_n(par, 'gate')} texts) and on the "
             f"held-out set ({_n(par, 'held-out')} texts) the gate never sees. onnxruntime int8 GEMM path here: "
             f"{r['machine'].get('int8_kernel_path', '?')}.", "",
             "| system | " + " | ".join(c[1] for c in cols) + " | cold start s | parity gate set | parity held-out | "
             "x fastembed (b1 / b32x40 / b32x250) | x PyTorch (same) |",
             "|---|" + "---:|" * (len(cols) + 1) + "---|---|---|---|"]
    for e in r.get("engines", _engines(lat[cols[0][0]])):
        vals = [f"{lat[k][e]['p50_ms']:.2f}" if k.endswith("/b1") else f"{lat[k][e]['texts_per_s']:.1f}" for k, _ in cols]
        cs = cold.get(e, {}).get("first_result_s_median")
        pg = "reference" if e == REFERENCE else _cos(par["gate"].get(e))
        ph = "reference" if e == REFERENCE else _cos(par["held-out"].get(e))
        xf = " / ".join(_x(lat[k][PEER]["p50_ms"], lat[k][e]["p50_ms"]) for k, _ in cols)
        xp = " / ".join(_x(lat[k][REFERENCE]["p50_ms"], lat[k][e]["p50_ms"]) for k, _ in cols)
        name = f"**{LABELS.get(e, e)}**" if e == SHIPPED else LABELS.get(e, e)
        lines.append(f"| {name} | " + " | ".join(vals) + f" | {cs if cs is not None else '-'} | {pg} | {ph} | {xf} | {xp} |")
    return lines


def _n(par: dict, key: str) -> int:
    return next(iter(par[key].values()))["n_texts"] if par.get(key) else 0


def _cos(p: dict | None) -> str:
    return f"{p['mean_cosine']:.4f} / {p['p1_cosine']:.4f}" if p else "-"


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
    t = max(c["threads"] for c in lat.values())
    engines = r.get("engines") or _engines(next(iter(lat.values())))
    cols = [(f"t{t}/b1/b1", "batch 1 (12 tokens)"), (f"t{t}/medium/b32", "batch 32 x ~40"), (f"t{t}/long/b32", "batch 32 x ~250")]
    fig, axes = plt.subplots(1, len(cols), figsize=(15, 4.6))
    for ax, (key, title) in zip(axes, cols):
        ratios = [lat[key][PEER]["p50_ms"] / lat[key][e]["p50_ms"] for e in engines]
        bars = ax.barh([LABELS.get(e, e) for e in engines], ratios,
                       color=["C3" if e == SHIPPED else "C0" for e in engines])
        ax.axvline(1.0, color="k", lw=0.8, ls="--")
        for bar, v in zip(bars, ratios):
            ax.text(bar.get_width(), bar.get_y() + bar.get_height() / 2, f" {v:.2f}x", va="center", fontsize=8)
        ax.set_title(f"{title}, {t} threads")
        ax.set_xlabel("speed vs fastembed int8 (same run)")
        if ax is not axes[0]:
            ax.set_yticklabels([])
    fig.suptitle(f"Peers, all-MiniLM-L6-v2 - {r['machine']['cpu_model']}, {r['machine']['cores']} cores")
    fig.tight_layout()
    fig.savefig(out / "peers.png", dpi=110)
    plt.close(fig)
    written.append("peers.png")

    rows = [row for row in r["cost"]["rows"] if row["fits"]]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    labels = sorted({(row["engine"], row["arch"]) for row in rows}, key=lambda k: (list(LABELS).index(k[0]), k[1]))
    for ax, key, title in ((axes[0], "usd_per_million_b1", "one text per request"),
                           (axes[1], "usd_per_million_b32", "32 texts per model call (batch jobs)")):
        mems = sorted({row["memory_mb"] for row in rows})
        width = 0.8 / max(1, len(labels))
        for i, (e, arch) in enumerate(labels):
            vals = {row["memory_mb"]: row[key] for row in rows if row["engine"] == e and row["arch"] == arch}
            ax.bar([j + (i - len(labels) / 2 + 0.5) * width for j in range(len(mems))],
                   [vals.get(mm, 0) for mm in mems], width, label=f"{LABELS.get(e, e)}, {arch}")
        ax.set_xticks(range(len(mems)), [f"{mm} MB" for mm in mems])
        ax.set_ylabel("$ per million embeddings")
        ax.set_title(f"Lambda, {title}")
        ax.set_yscale("log")
        ax.grid(True, axis="y", which="both", alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"Cost per million embeddings (prices {r['cost']['prices']['as_of'].split(' (')[0]}, assumed; "
                 "vCPUs emulated with thread counts)")
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
