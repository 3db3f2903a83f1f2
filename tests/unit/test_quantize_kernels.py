"""The shipped int8 weights compute the same integer sums on every kernel path Lambda may run.

onnxruntime's u8 x s8 GEMM on x86 without VNNI multiplies with VPMADDUBSW, which adds each pair
of adjacent u8 x s8 products into a *saturating* int16; VNNI (VPDPBUSD), AMX and arm64
(UDOT/USMMLA/widening NEON) accumulate in int32 and are exact. With 7-bit weights
(|w| <= 64) a pair sum is at most 255 * 64 * 2 = 32640 < 32767, so no path can saturate and all
of them produce the exact integer product. This CPU cannot be switched to the AVX2 kernel, so
the AVX2 path is emulated in numpy (saturating pair sums, then int32 adds) and compared with
the exact product and with what onnxruntime computes here.
"""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

INT16_MAX, INT16_MIN = 32767, -32768


def _int8_weights(model_path) -> dict[str, np.ndarray]:
    model = onnx.load(str(model_path))
    return {i.name: numpy_helper.to_array(i) for i in model.graph.initializer
            if i.data_type == TensorProto.INT8 and i.name.endswith("_quantized") and len(i.dims) == 2}


def _vpmaddubsw_product(a: np.ndarray, w: np.ndarray) -> np.ndarray:
    """A (M,K) u8 x W (K,N) s8 as the AVX2 kernel sums it: int16-saturated pairs along K."""
    a = a.astype(np.int32)
    w = w.astype(np.int32)
    if a.shape[1] % 2:
        a = np.pad(a, ((0, 0), (0, 1)))
        w = np.pad(w, ((0, 1), (0, 0)))
    prods = a[:, :, None] * w[None, :, :]                      # (M, K, N) exact products
    pairs = prods[:, 0::2, :] + prods[:, 1::2, :]              # VPMADDUBSW: adjacent pairs...
    pairs = np.clip(pairs, INT16_MIN, INT16_MAX)               # ...saturated to int16
    return pairs.sum(axis=1, dtype=np.int64)                   # VPMADDWD + VPADDD: exact int32


def _matmul_integer(a: np.ndarray, w: np.ndarray) -> np.ndarray:
    """onnxruntime's MatMulInteger on this CPU (its MLAS kernel for this machine's flags)."""
    graph = helper.make_graph(
        [helper.make_node("MatMulInteger", ["A", "B"], ["Y"])], "mmi",
        [helper.make_tensor_value_info("A", TensorProto.UINT8, list(a.shape))],
        [helper.make_tensor_value_info("Y", TensorProto.INT32, None)],
        [numpy_helper.from_array(w, "B")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"A": a})[0].astype(np.int64)


@pytest.fixture(scope="module")
def shipped_weights(bundles_dir):
    weights = _int8_weights(bundles_dir / "all-minilm-l6-v2" / "model.onnx")
    assert weights, "the shipped embedding model has no s8 weight matrices"
    return weights


def test_every_shipped_weight_is_7_bit(shipped_weights):
    for name, w in shipped_weights.items():
        assert int(np.abs(w.astype(np.int32)).max()) <= 64, name
        # the exact condition of the AVX2 kernel: any two adjacent K rows times 255 fit int16
        pair = np.abs(w[0::2].astype(np.int32))[: w.shape[0] // 2] + np.abs(w[1::2].astype(np.int32))
        assert int(pair.max()) * 255 <= INT16_MAX, name


def test_integer_sums_are_equal_on_every_kernel_path(shipped_weights):
    rng = np.random.default_rng(13)
    # The worst activations for saturation (all 255) and realistic ones, on four real matrices.
    for name in list(shipped_weights)[:4]:
        w = shipped_weights[name][:, :96]
        for a in (np.full((4, w.shape[0]), 255, np.uint8),
                  rng.integers(0, 256, size=(8, w.shape[0]), dtype=np.uint8)):
            exact = a.astype(np.int64) @ w.astype(np.int64)
            assert np.array_equal(_vpmaddubsw_product(a, w), exact), f"AVX2 path saturates on {name}"
            assert np.array_equal(_matmul_integer(a, w), exact), f"this CPU's kernel differs on {name}"


def test_full_range_weights_would_saturate_on_avx2(shipped_weights):
    """The emulation can tell: the same matrix stored in 8 bits (|w| <= 127) breaks the AVX2 sums."""
    name = next(iter(shipped_weights))
    w = np.clip(np.round(shipped_weights[name].astype(np.float64) * 127 / 64), -127, 127).astype(np.int8)
    a = np.full((2, w.shape[0]), 255, np.uint8)
    exact = a.astype(np.int64) @ w.astype(np.int64)
    assert not np.array_equal(_vpmaddubsw_product(a, w), exact)
    assert np.array_equal(_matmul_integer(a, w), exact)  # int32-accumulating kernels stay exact
