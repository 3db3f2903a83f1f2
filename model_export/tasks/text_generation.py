"""Causal LM export: optimum ``text-generation-with-past`` → int8 → parity gate → generation bundle.

Also builds the demo generator ``cirrus-tiny-gpt2``: a GPT-2-shaped model with seeded random
weights and a byte-level BPE tokenizer trained here on text written for it. It is NOT a trained
chat model — its replies are noise — it exists so the whole generation path (KV-cache loop,
sampling, stops, light/heavy routing, the SageMaker stand-in) runs on real ONNX without a hub.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from functions.core.generation.spec import ChatTemplate, GenerationSpec
from functions.core.manifest import FileEntry, Gate, Manifest, Quantization, Source, file_entry

TASK = "text-generation"
OPTIMUM_TASK = "text-generation-with-past"
TINY_NAME = "cirrus-tiny-gpt2"
SPECIAL_TOKENS = ("<|endoftext|>", "<|system|>", "<|user|>", "<|assistant|>")
PARITY_PROMPTS = (
    "Hello, how can I help you today?",
    "The quick brown fox",
    "Cirrus serves transformer models",
    "Where is my order?",
    "<|user|>\nWhat is deep learning?\n<|assistant|>\n",
    "A",
)
PARITY_NEW_TOKENS = 24
# fp32 must reproduce PyTorch greedy decoding exactly; int8 is measured teacher-forced (next-token
# argmax along the fp32 continuation) so one early flip does not hide how close the rest is.
THRESHOLDS = {"fp32_greedy_exact": 1.0, "int8_next_token_agreement": 0.80}

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


def content_sha256(model_dir: Path) -> str:
    """Hash over the source's weights, config and tokenizer (what decides the exported bytes)."""
    h = hashlib.sha256()
    for path in sorted(Path(model_dir).iterdir()):
        if path.is_file() and path.suffix in {".json", ".safetensors", ".bin", ".txt", ".model"}:
            h.update(path.name.encode())
            h.update(hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()


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


def export_onnx(model_dir: Path, out_dir: Path) -> Path:
    """optimum-onnx export with past key values: one graph that takes an (possibly empty) cache."""
    from optimum.exporters.onnx import main_export

    main_export(str(model_dir), output=str(out_dir), task=OPTIMUM_TASK, library_name="transformers",
                do_validation=False, local_files_only=True)
    return Path(out_dir) / "model.onnx"


def quantize_int8(src: Path, dst: Path, *, per_channel: bool = True) -> Path:
    """Dynamic int8, per-channel weights (per-tensor was measured poor on AVX2, see DESIGN.md)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, per_channel=per_channel)
    return Path(dst)


def parity(model_dir: Path, bundle_dir: Path, onnx_files: dict[str, str],
           prompts=PARITY_PROMPTS, new_tokens: int = PARITY_NEW_TOKENS) -> dict[str, float]:
    """Compare ONNX generation to PyTorch ``generate()`` (greedy) on ``prompts``.

    ``onnx_files`` maps a label ("fp32", "int8") to a file in ``bundle_dir``. For each label:
    ``<label>_greedy_exact`` (share of prompts whose free-running greedy tokens equal PyTorch's) and
    ``<label>_next_token_agreement`` (teacher-forced argmax agreement along PyTorch's tokens).
    """
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM

    from functions.core.generation.onnx_generator import OnnxGenerator, SamplingParams

    ref_model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    greedy = SamplingParams(max_new_tokens=new_tokens, temperature=0.0)
    metrics: dict[str, float] = {}
    gens = {label: OnnxGenerator(bundle_dir, model_file=f, intra_op_threads=1) for label, f in onnx_files.items()}
    any_gen = next(iter(gens.values()))
    refs = []
    for prompt in prompts:
        ids = any_gen.encode(prompt)
        with torch.no_grad():
            out = ref_model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                     max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                                     eos_token_id=None, pad_token_id=ref_model.config.eos_token_id)
        refs.append((ids, out[0, len(ids):].tolist()))
    for label, gen in gens.items():
        exact, agree, total = 0, 0, 0
        for ids, ref in refs:
            # min_new_tokens above keeps PyTorch from stopping at EOS; the ONNX side must not stop either.
            got = _greedy_no_stop(gen, ids, greedy)
            exact += int(got == ref)
            full = np.asarray([ids + ref], dtype=np.int64)
            logits = _forward_all(gen, full)
            pred = logits[0, len(ids) - 1:-1].argmax(-1)
            agree += int((pred == np.asarray(ref)).sum())
            total += len(ref)
        metrics[f"{label}_greedy_exact"] = exact / len(refs)
        metrics[f"{label}_next_token_agreement"] = agree / total
    return metrics


def _greedy_no_stop(gen, ids, params) -> list[int]:
    saved = gen.spec.eos_token_ids
    try:
        gen.spec.eos_token_ids = [-1]
        return gen.generate_ids(ids, params).token_ids
    finally:
        gen.spec.eos_token_ids = saved


def _forward_all(gen, ids):
    import numpy as np

    n = ids.shape[1]
    feeds = {"input_ids": ids, "attention_mask": np.ones((1, n), dtype=np.int64), **gen._empty_cache()}
    if gen._use_positions:
        feeds["position_ids"] = np.arange(n, dtype=np.int64)[None, :]
    return gen.session.run([gen.manifest.output_name], feeds)[0]


def export_text_generation(model_dir: Path, out_dir: Path, *, name: str, version: str | None = None,
                           quantize: bool = True, source_id: str | None = None,
                           thresholds: dict[str, float] | None = None, force: bool = False) -> Manifest:
    """Export ``model_dir`` (a local HF causal LM) into a verified generation bundle at ``out_dir``.

    The shipped ``model.onnx`` is the int8 file when ``quantize`` (fp32 otherwise); the gate
    checks fp32 against PyTorch exactly and the shipped int8 file by next-token agreement.
    Raises ``GateFailed`` (unless ``force``) and leaves no bundle behind when the gate fails.
    """
    import onnxruntime
    import optimum
    import tokenizers
    import torch
    import transformers

    from model_export.errors import GateFailed

    model_dir, out_dir = Path(model_dir), Path(out_dir)
    thresholds = dict(THRESHOLDS if thresholds is None else thresholds)
    spec = generation_spec(model_dir)
    with tempfile.TemporaryDirectory(prefix="cirrus-gen-") as tmp:
        tmp = Path(tmp)
        fp32 = export_onnx(model_dir, tmp / "onnx")
        work = tmp / "bundle"
        work.mkdir()
        shutil.copy(fp32, work / "model.fp32.onnx")
        for f in ("tokenizer.json", "config.json"):
            shutil.copy(model_dir / f, work / f)
        files = {"fp32": "model.fp32.onnx"}
        if quantize:
            quantize_int8(work / "model.fp32.onnx", work / "model.onnx")
            files["int8"] = "model.onnx"
        else:
            (work / "model.fp32.onnx").rename(work / "model.onnx")
            files = {"fp32": "model.onnx"}
        draft = _manifest(work, name=name, version=version or "draft", spec=spec, model_dir=model_dir,
                          source_id=source_id, quantize=quantize, gate=None)
        draft.write(work)
        metrics = parity(model_dir, work, files)
        if quantize:
            thresholds = {k: v for k, v in thresholds.items()}
        else:
            thresholds = {k: v for k, v in thresholds.items() if k.startswith("fp32")}
        passed = all(metrics.get(k, 0.0) >= v for k, v in thresholds.items())
        if not passed and not force:
            raise GateFailed(f"{name}: generation parity gate failed: {metrics} (need {thresholds})", metrics)
        (work / "model.fp32.onnx").unlink(missing_ok=True)  # reference only: the bundle ships one graph
        version = version or content_sha256(model_dir)[:12]
        gate = Gate(passed=passed, forced=force and not passed, metrics=metrics, thresholds=thresholds,
                    eval_set=f"parity-prompts:{len(PARITY_PROMPTS)}x{PARITY_NEW_TOKENS}")
        manifest = _manifest(work, name=name, version=version, spec=spec, model_dir=model_dir,
                             source_id=source_id, quantize=quantize, gate=gate)
        manifest.tools = {"torch": torch.__version__, "transformers": transformers.__version__,
                          "optimum": getattr(optimum, "__version__", "?"), "onnxruntime": onnxruntime.__version__,
                          "tokenizers": tokenizers.__version__}
        manifest.write(work)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(work, out_dir)
    return manifest


def _manifest(work: Path, *, name: str, version: str, spec: GenerationSpec, model_dir: Path,
              source_id: str | None, quantize: bool, gate: Gate | None) -> Manifest:
    files: dict[str, FileEntry] = {f: file_entry(work / f) for f in ("model.onnx", "tokenizer.json", "config.json")}
    return Manifest(
        name=name, version=version, task=TASK,
        source=Source(id=source_id or str(model_dir), content_sha256=content_sha256(model_dir)),
        max_length=spec.context_length, output_name="logits",
        quantization=Quantization(mode="dynamic-int8", preset="avx2", per_channel=True) if quantize
        else Quantization(mode="none"),
        files=files, gate=gate, created_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        generation=spec.model_dump(mode="json"),
    )


def build_tiny_bundle(out_dir: Path, *, work_dir: Path | None = None, quantize: bool = True,
                      cfg: TinyGpt2Config = TinyGpt2Config()) -> Manifest:
    """Build the ``cirrus-tiny-gpt2`` source model and export it as a bundle at ``out_dir``."""
    with tempfile.TemporaryDirectory(prefix="cirrus-tiny-") as tmp:
        src = build_tiny_gpt2(Path(work_dir or tmp) / "source", cfg)
        return export_text_generation(src, out_dir, name=TINY_NAME, quantize=quantize,
                                      source_id=f"cirrus:tiny-gpt2(seed={cfg.seed},random-init)")
