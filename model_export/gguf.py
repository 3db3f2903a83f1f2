"""A GGUF file as an export source: dequantized by transformers into a Hugging Face model folder.

The folder keeps the file's tokenizer and chat template, and the special tokens the file's own
metadata names: transformers 4.57's GGUF conversion takes the BOS token for EOS too and adds a
BOS in the tokenizer's post-processor even when ``tokenizer.ggml.add_bos_token`` is false, so
both are set back from the metadata here (a doubled ``<|im_start|>`` derails a chat model).
Needs the export-only packages ``gguf`` and ``accelerate``.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from model_export.errors import ExportError

SUFFIX = ".gguf"
SOURCE_NOTE = "cirrus_source.json"


def is_gguf(path: Path | str) -> bool:
    return Path(path).suffix.lower() == SUFFIX


@dataclass(frozen=True)
class GgufTokens:
    """The tokenizer facts in a GGUF file's metadata (ids, and whether a BOS is prepended)."""

    bos_id: int | None
    eos_id: int | None
    pad_id: int | None
    add_bos: bool
    chat_template: str | None
    architecture: str


def read_tokens(path: Path) -> GgufTokens:
    try:
        from gguf import GGUFReader

        fields = GGUFReader(str(path)).fields
    except ImportError:
        raise ExportError("reading a GGUF file needs the `gguf` package (pip install -r requirements.txt)") from None
    except (ValueError, OSError) as exc:
        raise ExportError(f"{path} is not a readable GGUF file: {exc}") from None

    def get(key):
        field = fields.get(key)
        return None if field is None else field.contents()

    return GgufTokens(bos_id=get("tokenizer.ggml.bos_token_id"), eos_id=get("tokenizer.ggml.eos_token_id"),
                      pad_id=get("tokenizer.ggml.padding_token_id"),
                      add_bos=bool(get("tokenizer.ggml.add_bos_token")),
                      chat_template=get("tokenizer.chat_template"),
                      architecture=str(get("general.architecture") or "unknown"))


def convert(path: Path, out_dir: Path, *, sha256: str) -> Path:
    """Write ``out_dir`` (config, fp32 safetensors, tokenizer + chat template) from the GGUF file."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(path).resolve()
    meta = read_tokens(path)
    try:
        model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
        tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    except Exception as exc:  # unsupported architecture, missing package, corrupt tensors: one line
        raise ExportError(f"transformers cannot load {path.name} ({meta.architecture}): "
                          f"{exc.__class__.__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from None
    ids = {"bos_token": meta.bos_id, "eos_token": meta.eos_id, "pad_token": meta.pad_id}
    for name, token_id in ids.items():
        if token_id is not None:
            setattr(tok, name, tok.convert_ids_to_tokens(int(token_id)))
    if hasattr(tok, "add_bos_token"):
        tok.add_bos_token = meta.add_bos  # rebuilds the post-processor
    if meta.chat_template and not tok.chat_template:
        tok.chat_template = meta.chat_template
    for cfg in (model.config, model.generation_config):
        cfg.bos_token_id, cfg.eos_token_id = meta.bos_id, meta.eos_id
        cfg.pad_token_id = meta.pad_id if meta.pad_id is not None else meta.eos_id
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    (out_dir / SOURCE_NOTE).write_text(json.dumps(
        {"format": "gguf", "file": path.name, "sha256": sha256, "architecture": meta.architecture}, indent=2))
    return out_dir
