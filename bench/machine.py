"""What machine a run was on: CPU model, cores, SIMD flags that matter for GEMM, memory, load, versions."""
from __future__ import annotations

import os
import platform
from pathlib import Path

from model_export.pipeline import tool_versions

INTERESTING_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16",
                     "amx_int8", "amx_bf16")
PACKAGES = ("onnxruntime", "tokenizers", "numpy", "torch", "transformers")


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
        "hypervisor": "hypervisor" in flags,
        "memory_gb": round(mem_kb / 1024 / 1024, 1),
        "load_avg_at_start": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "versions": versions,
        "_cpu": cpu,
    }


def one_line(m: dict) -> str:
    return (f"{m['cpu_model']}, {m['cores']} cores{' (VM)' if m['hypervisor'] else ''}, "
            f"{m['mhz_reported']:.0f} MHz reported, {', '.join(m['simd_flags'])}, {m['memory_gb']} GB RAM")
