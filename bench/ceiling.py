"""The ceiling: FLOPs per text from the model's shape, and this CPU's GEMM peak measured with onnxruntime.

FLOPs count the matrix products only (one multiply-add = 2 FLOPs), per encoder layer for a text
of n tokens with hidden size d and feed-forward size f:

    Q, K, V, output projections  4 * 2*n*d*d
    feed-forward (up + down)     2 * 2*n*d*f
    attention (QK^T and PV)      2 * 2*n*n*d

times the number of layers. Embeddings, LayerNorm, softmax and GELU are O(n*d) and left out.
The peak is what onnxruntime's own GEMM kernels (MLAS) reach on a large square product on this
machine: fp32 MatMul and the uint8 x uint8 MatMulInteger the shipped (AVX2-preset) model uses,
plus uint8 x int8 for comparison (what a VNNI-targeted model would use).
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np


def model_shape(config_path: Path) -> dict[str, int]:
    cfg = json.loads(Path(config_path).read_text())
    return {"layers": cfg["num_hidden_layers"], "hidden": cfg["hidden_size"], "ffn": cfg["intermediate_size"]}


def flops_per_text(shape: dict[str, int], tokens: float) -> float:
    n, d, f, layers = tokens, shape["hidden"], shape["ffn"], shape["layers"]
    return layers * (4 * 2 * n * d * d + 2 * 2 * n * d * f + 2 * 2 * n * n * d)


FORMULA = "FLOPs/text = L * (8*n*d^2 + 4*n*d*f + 4*n^2*d)"


def _gemm_model(kind: str, size: int):
    from onnx import TensorProto, helper

    if kind == "fp32":
        a = helper.make_tensor_value_info("A", TensorProto.FLOAT, [size, size])
        b = helper.make_tensor_value_info("B", TensorProto.FLOAT, [size, size])
        y = helper.make_tensor_value_info("Y", TensorProto.FLOAT, [size, size])
        node = helper.make_node("MatMul", ["A", "B"], ["Y"])
    else:
        b_type = TensorProto.UINT8 if kind == "u8u8" else TensorProto.INT8
        a = helper.make_tensor_value_info("A", TensorProto.UINT8, [size, size])
        b = helper.make_tensor_value_info("B", b_type, [size, size])
        y = helper.make_tensor_value_info("Y", TensorProto.INT32, [size, size])
        node = helper.make_node("MatMulInteger", ["A", "B"], ["Y"])
    graph = helper.make_graph([node], f"gemm_{kind}", [a, b], [y])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def gemm_peak(kind: str, threads: int, *, size: int = 1024, seconds: float = 1.5) -> float:
    """Best GFLOP/s (or GOP/s for integer) of a size^3 product over repeated runs."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    session = ort.InferenceSession(_gemm_model(kind, size).SerializeToString(), opts,
                                   providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    if kind == "fp32":
        feeds = {"A": rng.standard_normal((size, size), dtype=np.float32),
                 "B": rng.standard_normal((size, size), dtype=np.float32)}
    else:
        feeds = {"A": rng.integers(0, 255, (size, size), dtype=np.uint8),
                 "B": rng.integers(0, 255, (size, size), dtype=np.uint8) if kind == "u8u8"
                 else rng.integers(-128, 127, (size, size), dtype=np.int8)}
    session.run(None, feeds)  # warm-up: packing buffers, thread pool
    best = float("inf")
    deadline = time.perf_counter() + seconds
    runs = 0
    while time.perf_counter() < deadline or runs < 3:
        t = time.perf_counter()
        session.run(None, feeds)
        best = min(best, time.perf_counter() - t)
        runs += 1
    # best-of-N: the peak is what the kernel can do when the shared machine lets it.
    return 2 * size ** 3 / best / 1e9


def measure_peaks(thread_counts: list[int], seconds: float) -> dict[str, dict[str, float]]:
    return {kind: {f"t{t}": round(gemm_peak(kind, t, seconds=seconds), 1) for t in thread_counts}
            for kind in ("fp32", "u8u8", "u8s8")}


def theoretical_peak(cpu: dict) -> dict[str, float | str]:
    """cores x GHz x ops/cycle from the CPU flags (2 FMA ports assumed: server Intel since Skylake-SP)."""
    ghz = cpu.get("mhz", 0) / 1000
    flags = set(cpu.get("flags", []))
    lanes = 16 if "avx512f" in flags else 8 if "avx2" in flags else 4
    fp32 = 2 * 2 * lanes  # 2 FMA units x (mul + add) x fp32 lanes
    # int8: VNNI vpdpbusd does 4 u8*s8 products + add per 32-bit lane; without VNNI, vpmaddubsw +
    # vpmaddwd give about half that.
    vnni = "avx512_vnni" in flags and lanes == 16
    int8 = 2 * 2 * 4 * lanes if vnni else 2 * 4 * lanes
    cores = cpu.get("cores", 1)
    return {"ghz_assumed": ghz, "fp32_flops_per_cycle_per_core": fp32, "int8_ops_per_cycle_per_core": int8,
            "fp32_gflops": round(cores * ghz * fp32, 1), "int8_gops_u8s8": round(cores * ghz * int8, 1),
            "note": "cpu MHz from /proc/cpuinfo (a VM may report the base clock); 2 FMA ports assumed"}
