"""What machine a run was on: CPU model, cores, SIMD flags that matter for GEMM, memory, load, versions."""
from __future__ import annotations

import os
import platform
from pathlib import Path

from model_export.pipeline import tool_versions

INTERESTING_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16",
                     "amx_int8", "amx_bf16", "asimddp", "i8mm")  # the last two: arm64 dot-product, int8 matmul
PACKAGES = ("onnxruntime", "tokenizers", "numpy", "torch", "transformers", "fastembed", "sentence-transformers")


def cpuinfo() -> dict:
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    info: dict = {}
    for line in text.splitlines():
        key, _, value = (s.strip() for s in line.partition(":"))
        if key == "model name" and "model" not in info:
            info["model"] = value
        elif key == "cpu MHz" and "mhz" not in info:
            info["mhz"] = float(value)
        elif key == "flags" and "flags" not in info:
            info["flags"] = value.split()
    info["cores"] = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return info


def int8_kernel_path(flags: set[str], arch: str | None = None) -> str:
    """The u8 x s8 GEMM kernel onnxruntime's MLAS picks on this CPU (it dispatches on CPUID once).

    onnxruntime does not report its choice, so this applies MLAS's own order (platform.cpp):
    AMX, then AVX512-VNNI, then AVX-VNNI, then AVX512BW / AVX2 (VPMADDUBSW: int16 pair sums, the
    path where full-range s8 weights can saturate); arm64: i8mm (SMMLA/USMMLA), then dot-product
    (SDOT/UDOT), then plain NEON widening multiplies.
    """
    arch = arch or platform.machine()
    if arch in ("aarch64", "arm64"):
        if "i8mm" in flags:
            return "arm64 i8mm (USMMLA, int32 accumulate)"
        if "asimddp" in flags:
            return "arm64 dot-product (UDOT/SDOT, int32 accumulate)"
        return "arm64 NEON (widening multiply, int32 accumulate)"
    if "amx_int8" in flags:
        return "AMX-INT8 (TDPBUSD, int32 accumulate)"
    if "avx512_vnni" in flags:
        return "AVX512-VNNI (VPDPBUSD, int32 accumulate)"
    if "avx_vnni" in flags:
        return "AVX-VNNI (VPDPBUSD ymm, int32 accumulate)"
    if "avx512bw" in flags:
        return "AVX512BW (VPMADDUBSW, int16 pair sums)"
    return "AVX2 (VPMADDUBSW, int16 pair sums)"


def describe() -> dict:
    cpu = cpuinfo()
    flags = set(cpu.get("flags", []))
    mem_kb = 0
    if Path("/proc/meminfo").exists():
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    versions = tool_versions(PACKAGES)
    return {
        "cpu_model": cpu.get("model", platform.processor()),
        "cores": cpu.get("cores"),
        "mhz_reported": cpu.get("mhz"),
        "simd_flags": [f for f in INTERESTING_FLAGS if f in flags],
        "arch": platform.machine(),
        "int8_kernel_path": int8_kernel_path(flags),
        "hypervisor": "hypervisor" in flags,
        "memory_gb": round(mem_kb / 1024 / 1024, 1),
        "load_avg_at_start": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "versions": versions,
        "_cpu": cpu,
    }


def one_line(m: dict) -> str:
    return (f"{m['cpu_model']}, {m['cores']} cores{' (VM)' if m['hypervisor'] else ''}, "
            f"{m['mhz_reported']:.0f} MHz reported, {', '.join(m['simd_flags'])}, {m['memory_gb']} GB RAM; "
            f"onnxruntime int8 GEMM path: {m['int8_kernel_path']}")
