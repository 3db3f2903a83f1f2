"""The text-generation task: causal LMs exported with a KV cache (optimum ``text-generation-with-past``).

The gate drives the runtime's own generation loop (functions/core/generation) against PyTorch
``generate()``: the fp32 graph must match greedy decoding token for token; the shipped int8 graph
is measured by next-token agreement along PyTorch's greedy tokens (teacher-forced, so one early
flip does not hide how close the rest is) and by how many prompts it reproduces exactly.

Also builds the demo generator ``cirrus-tiny-gpt2``: a GPT-2-shaped model with seeded random
weights and a byte-level BPE tokenizer trained here on text written for it. It is NOT a trained
chat model — its replies are noise — it exists so the whole generation path (KV-cache loop,
sampling, stops, light/heavy routing, the SageMaker stand-in) runs on real ONNX without a hub.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from importlib.metadata import version as package_version
from pathlib import Path
from typing import Any

from functions.core.inference.spec import ChatTemplate, GenerationSpec
from model_export.config import ExportConfig, QuantizeConfig, Threshold
from model_export.tasks.base import Task

TINY_NAME = "cirrus-tiny-gpt2"
SPECIAL_TOKENS = ("<|endoftext|>", "<|system|>", "<|user|>", "<|assistant|>")
PARITY_PROMPTS = 8        # the first texts of the export eval set become prompts
PARITY_NEW_TOKENS = 24

# Text written for this project to train the demo tokenizer (byte-level BPE, so any input still
# encodes: words outside this text fall back to byte pieces).
TOKENIZER_CORPUS = """\
Cirrus serves transformer models behind a serverless API. A model is exported once to ONNX,
quantized to int8, checked against the original and published to storage. Small functions answer
requests on CPU; a GPU endpoint takes the long generations that a CPU cannot do quickly.
Hello! How can I help you today? I would like to check the status of my order, please.
Where is my package? It left the warehouse on Monday and should arrive by Friday.
How do I reset my password? Open the settings page, choose security and follow the link we send.
The quick brown fox jumps over the lazy dog. A small model is fast; a large model knows more.
What is deep learning? It is a way to learn representations from data with many layers.
Thank you for your patience. Your refund was approved and will reach your account in five days.
The system prompt tells the assistant how to behave. The user asks, and the assistant answers.
Please keep your answer short and clear. If you are not sure, say so and ask a question back.
Numbers, dates and prices: 1, 2, 3, 10, 42, 100, 2026, $19.99, 25%, 3.5 kg, 09:30, 12/31.
Cloud functions start cold, load the model once, and then answer many requests from memory.
Shop search, support bots, risk scoring and tutoring questions all need fast, cheap inference.
"""


@dataclass(frozen=True)
class TinyGpt2Config:
    """The demo generator's shape; small enough to export and test in seconds."""

    seed: int = 0
    vocab_size: int = 1024
    n_positions: int = 512
    n_embd: int = 64
    n_layer: int = 2
    n_head: int = 4
    # Wider than GPT-2's 0.02 and untied from the input embeddings: with the defaults a random
    # model just repeats its last token, which would make greedy parity a weak check.
    initializer_range: float = 0.2


def train_tokenizer(vocab_size: int):
    """A byte-level BPE with the chat special tokens, trained on TOKENIZER_CORPUS (deterministic)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(TOKENIZER_CORPUS.splitlines(), trainer)
    return tok


def build_tiny_gpt2(out_dir: Path, cfg: TinyGpt2Config = TinyGpt2Config()) -> Path:
    """Write a Hugging Face model folder (config, safetensors, tokenizer) for ``cirrus-tiny-gpt2``."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tok = train_tokenizer(cfg.vocab_size)
    eos = tok.token_to_id("<|endoftext|>")
    torch.manual_seed(cfg.seed)
    config = GPT2Config(vocab_size=tok.get_vocab_size(), n_positions=cfg.n_positions, n_embd=cfg.n_embd,
                        n_layer=cfg.n_layer, n_head=cfg.n_head, initializer_range=cfg.initializer_range,
                        tie_word_embeddings=False, bos_token_id=eos, eos_token_id=eos, pad_token_id=eos)
    model = GPT2LMHeadModel(config).eval()
    model.save_pretrained(out_dir)
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                            pad_token="<|endoftext|>",
                            additional_special_tokens=list(SPECIAL_TOKENS[1:])).save_pretrained(out_dir)
    (out_dir / "cirrus_source.json").write_text(json.dumps(
        {"what": "randomly initialised GPT-2-shaped model, not trained", "config": cfg.__dict__}, indent=2))
    return out_dir


def generation_spec(model_dir: Path) -> GenerationSpec:
    """The manifest's ``generation`` block, read from the model's config and tokenizer."""
    from tokenizers import Tokenizer
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_dir)
    tok = Tokenizer.from_file(str(Path(model_dir) / "tokenizer.json"))
    eos = config.eos_token_id if isinstance(config.eos_token_id, list) else [config.eos_token_id]
    # A reply ends where the next turn would begin, so the role markers stop generation too.
    eos += [i for t in SPECIAL_TOKENS if (i := tok.token_to_id(t)) is not None and i not in eos]
    n_head = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or n_head
    has_roles = all(tok.token_to_id(t) is not None for t in SPECIAL_TOKENS[1:])
    return GenerationSpec(
        eos_token_ids=[int(e) for e in eos if e is not None],
        context_length=int(getattr(config, "max_position_embeddings", None) or config.n_positions),
        num_layers=config.num_hidden_layers, num_kv_heads=kv_heads, head_dim=config.hidden_size // n_head,
        chat_template=ChatTemplate() if has_roles else ChatTemplate(
            message="{role}: {content}\n", generation_prompt="assistant:"),
    )


class TextGenerationTask(Task):
    name = "text-generation"
    optimum_task = "text-generation-with-past"
    output_name = "logits"
    thresholds = {"fp32_greedy_exact": Threshold(1.0), "next_token_agreement": Threshold(0.80)}

    def default_max_length(self, source_dir: Path) -> int:
        return generation_spec(source_dir).context_length

    def manifest_fields(self, source_dir: Path, export_dir: Path) -> dict[str, Any]:
        return {"generation": generation_spec(source_dir).model_dump(mode="json")}

    def evaluate(self, source_dir: Path, onnx_path: Path, tokenizer_path: Path, texts: list[str],
                 fields: dict[str, Any]) -> dict[str, float]:
        """Greedy parity of the fp32 graph and agreement of the shipped graph with PyTorch ``generate()``."""
        from model_export.pipeline import FP32_FILE

        prompts = texts[:PARITY_PROMPTS]
        spec = GenerationSpec.model_validate(fields["generation"])
        files = {"shipped": Path(onnx_path), "fp32": Path(onnx_path).parent / FP32_FILE}
        refs = reference_greedy(source_dir, tokenizer_path, prompts, PARITY_NEW_TOKENS)
        m = {f"{label}_{k}": v for label, path in files.items()
             for k, v in agreement(path, tokenizer_path, spec, refs).items()}
        return {"fp32_greedy_exact": m["fp32_greedy_exact"], "fp32_next_token_agreement": m["fp32_next_token_agreement"],
                "greedy_exact": m["shipped_greedy_exact"], "next_token_agreement": m["shipped_next_token_agreement"],
                "n_prompts": float(len(prompts)), "new_tokens": float(PARITY_NEW_TOKENS)}


def reference_greedy(source_dir: Path, tokenizer_path: Path, prompts: list[str],
                     new_tokens: int) -> list[tuple[list[int], list[int]]]:
    """(prompt ids, PyTorch greedy continuation) per prompt; EOS is ignored so lengths are fixed."""
    import torch
    from tokenizers import Tokenizer
    from transformers import AutoModelForCausalLM

    tok = Tokenizer.from_file(str(tokenizer_path))
    tok.no_padding()
    tok.no_truncation()
    model = AutoModelForCausalLM.from_pretrained(source_dir).eval()
    out = []
    for prompt in prompts:
        ids = tok.encode(prompt).ids
        with torch.inference_mode():
            gen = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                 max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                                 eos_token_id=None, pad_token_id=model.config.eos_token_id)
        out.append((ids, gen[0, len(ids):].tolist()))
    return out


def agreement(onnx_path: Path, tokenizer_path: Path, spec: GenerationSpec,
              refs: list[tuple[list[int], list[int]]]) -> dict[str, float]:
    """``greedy_exact``: share of prompts whose ONNX greedy tokens equal the reference exactly;
    ``next_token_agreement``: teacher-forced argmax agreement along the reference tokens."""
    import numpy as np

    from functions.core.inference.generator import OnnxGenerator, SamplingParams

    # The reference ran without EOS: the loop must not stop early either.
    no_eos = spec.model_copy(update={"eos_token_ids": [-1]})
    gen = OnnxGenerator.from_files(onnx_path, tokenizer_path, no_eos, intra_op_threads=1)
    exact = agree = total = 0
    for ids, ref in refs:
        got = gen.generate_ids(ids, SamplingParams(max_new_tokens=len(ref), temperature=0.0)).token_ids
        exact += int(got == ref)
        pred = gen.logits(ids + ref)[len(ids) - 1:-1].argmax(-1)
        agree += int((pred == np.asarray(ref)).sum())
        total += len(ref)
    return {"greedy_exact": exact / len(refs), "next_token_agreement": agree / total}


TASK = TextGenerationTask()


# --- the default bundle recipe (model_export/defaults.py) ------------------------------------------
NAME = TINY_NAME
DESCRIPTION = "randomly initialised GPT-2-shaped demo generator (seeded, NOT trained: its replies are noise)"


def _config(source: str) -> ExportConfig:
    return ExportConfig(source=source, task=TASK.name, name=TINY_NAME, quantize=QuantizeConfig(arch="x86_64"))


def identity() -> dict:
    """Everything that decides the tiny bundle's bytes, computed without building it."""
    return {"config": _config("<work>/source").fingerprint(), "shape": asdict(TinyGpt2Config()),
            "corpus": hashlib.sha256(TOKENIZER_CORPUS.encode()).hexdigest(), "special": list(SPECIAL_TOKENS),
            "code": hashlib.sha256(Path(__file__).read_bytes()).hexdigest(),
            # Random init depends on torch's generator; the tokenizer trainer on tokenizers.
            "torch": package_version("torch"), "tokenizers": package_version("tokenizers")}


def prepare(work_dir: Path, progress) -> tuple[ExportConfig, dict]:
    """Build the source model under ``work_dir``; the pipeline then exports, quantizes and gates it."""
    with progress.stage("prepare", f"{TINY_NAME}: seeded random GPT-2-shaped model + byte-level BPE"):
        src = build_tiny_gpt2(Path(work_dir) / "source")
    return _config(str(src)), {"description": DESCRIPTION}


def build_tiny_bundle(target: Path, work: Path | None = None, progress=None):
    """``prepare`` + the export pipeline into ``target`` (outside build-defaults, e.g. a script)."""
    import tempfile

    from model_export.pipeline import build
    from model_export.progress import SILENT

    progress = progress or SILENT
    with tempfile.TemporaryDirectory(prefix="cirrus-tiny-gpt2-", dir=work) as tmp:
        config, extra = prepare(Path(tmp), progress)
        return build(config, Path(target), progress=progress, extra=extra)
