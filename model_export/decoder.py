"""A minimal greedy KV-cache loop over an exported decoder, for the gate and quantization comparisons.

The exporter judges a candidate file before any bundle exists, so it drives onnxruntime itself
(the served loop lives in functions/core/inference/generator.py and is measured in bench/). Same graph
contract as the manifest's ``generation`` block: ``input_ids``, ``attention_mask``, optional
``position_ids``, ``past_key_values.{i}.{key,value}`` in and ``logits`` + ``present.*`` out.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np


@dataclass
class Greedy:
    tokens: list[int]
    first_token_s: float           # prompt pass + first argmax
    decode_s: float                # every later step
    stopped: bool                  # hit an end-of-sequence id
    step_s: list[float] = field(default_factory=list)

    @property
    def decode_tokens_per_s(self) -> float:
        return len(self.step_s) / self.decode_s if self.decode_s > 0 else 0.0


class Decoder:
    """One onnxruntime session over a ``text-generation-with-past`` graph."""

    def __init__(self, onnx_path: Path, *, threads: int = 1) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
        inputs = {i.name: i for i in self.session.get_inputs()}
        self.past = [n for n in inputs if n.startswith("past_key_values.")]
        self.present = [n.replace("past_key_values.", "present.") for n in self.past]
        self.uses_positions = "position_ids" in inputs
        first = inputs[self.past[0]]
        self.kv_heads, self.head_dim = int(first.shape[1]), int(first.shape[3])
        self.cache_dtype = np.float16 if first.type == "tensor(float16)" else np.float32

    def _run(self, ids: Sequence[int], start: int, cache: dict[str, np.ndarray]):
        n = len(ids)
        feeds = {"input_ids": np.asarray([list(ids)], dtype=np.int64),
                 "attention_mask": np.ones((1, start + n), dtype=np.int64), **cache}
        if self.uses_positions:
            feeds["position_ids"] = np.arange(start, start + n, dtype=np.int64)[None, :]
        logits, *present = self.session.run(["logits", *self.present], feeds)
        return logits[0], dict(zip(self.past, present))

    def _empty(self) -> dict[str, np.ndarray]:
        return {n: np.zeros((1, self.kv_heads, 0, self.head_dim), dtype=self.cache_dtype) for n in self.past}

    def logits(self, ids: Sequence[int]) -> np.ndarray:
        """[len(ids), vocab] logits in one pass from an empty cache."""
        return self._run(ids, 0, self._empty())[0]

    def greedy(self, prompt: Sequence[int], max_new_tokens: int, eos: Sequence[int] = ()) -> Greedy:
        stop = set(eos)
        t0 = time.perf_counter()
        logits, cache = self._run(prompt, 0, self._empty())
        tokens = [int(np.argmax(logits[-1]))]
        first = time.perf_counter() - t0
        steps: list[float] = []
        pos = len(prompt)
        while tokens[-1] not in stop and len(tokens) < max_new_tokens:
            t = time.perf_counter()
            logits, cache = self._run([tokens[-1]], pos, cache)
            pos += 1
            tokens.append(int(np.argmax(logits[-1])))
            steps.append(time.perf_counter() - t)
        stopped = tokens[-1] in stop
        return Greedy(tokens[:-1] if stopped else tokens, first, sum(steps), stopped, steps)


def main(argv: list[str] | None = None) -> int:
    """``python -m model_export.decoder MODEL.onnx``: session build + one greedy generation in a fresh
    process, with peak RSS (what a Lambda's memory size must hold; docs/quantization.md)."""
    import argparse
    import json
    import resource

    parser = argparse.ArgumentParser(prog="python -m model_export.decoder", description=main.__doc__)
    parser.add_argument("model", type=Path)
    parser.add_argument("--prompt-tokens", type=int, default=50)
    parser.add_argument("--new-tokens", type=int, default=200)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t = time.perf_counter()
    dec = Decoder(args.model, threads=args.threads)
    load_s = time.perf_counter() - t
    rss_load = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    prompt = [(i * 7919) % 1000 + 100 for i in range(args.prompt_tokens)]  # fixed ids, no EOS: full length
    out = dec.greedy(prompt, args.new_tokens)
    print(json.dumps({"model": str(args.model), "bytes": args.model.stat().st_size, "session_s": round(load_s, 3),
                      "first_token_ms": round(1000 * out.first_token_s, 1),
                      "decode_tok_s": round(out.decode_tokens_per_s, 1), "new_tokens": len(out.tokens),
                      "rss_before_mb": rss0 // 1024, "rss_after_session_mb": rss_load // 1024,
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
