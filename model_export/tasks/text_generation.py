"""The text-generation task: causal LMs exported with a KV cache (optimum ``text-generation-with-past``).

The gate compares ONNX files with the reference PyTorch model (for a GGUF source: the model
transformers dequantized from it) on data written for it (``data/generation_eval.json``):
the fp32 graph must reproduce greedy decoding token for token; the shipped file is held to a
perplexity ratio and teacher-forced next-token agreement on held-out prose, and must still answer
the short factual questions the reference answers correctly. Prompts are rendered with the
model's own Jinja chat template and encoded without added special tokens, exactly as the runtime
does; the gate also checks that this equals transformers' ``apply_chat_template``.

Also builds the demo generator ``cirrus-tiny-gpt2``: a GPT-2-shaped model with seeded random
weights and a byte-level BPE tokenizer trained here on text written for it. It is NOT a trained
chat model — its replies are noise — it is a small, fast test fixture for the generation path.
"""
from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import asdict, dataclass
from importlib.metadata import version as package_version
from pathlib import Path
from typing import Any

from model_export.config import ExportConfig, QuantizeConfig, Threshold
from model_export.tasks.base import Task

TINY_NAME = "cirrus-tiny-gpt2"
SPECIAL_TOKENS = ("<|endoftext|>", "<|system|>", "<|user|>", "<|assistant|>")
# The fixture's chat template: Jinja of the same shape real models ship (roles as special tokens,
# generation prompt on request), stored in its tokenizer_config like any model's.
TINY_CHAT_TEMPLATE = ("{% for message in messages %}{{ '<|' + message['role'] + '|>\n' + message['content'] + '\n' }}"
                      "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}")
# Tokens that end a turn in common chat templates; those present in a model's template stop generation.
END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "</s>")
EVAL_FILE = Path(__file__).resolve().parent.parent / "data" / "generation_eval.json"
PARITY_QUESTIONS = 8      # fp32 greedy parity runs on the first questions' chat prompts
ANSWER_TOKENS = 48        # greedy budget per question (answers are one sentence)
PPL_WINDOW = 256          # held-out text is scored in windows of this many tokens

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
                            pad_token="<|endoftext|>", chat_template=TINY_CHAT_TEMPLATE,
                            additional_special_tokens=list(SPECIAL_TOKENS[1:])).save_pretrained(out_dir)
    (out_dir / "cirrus_source.json").write_text(json.dumps(
        {"what": "randomly initialised GPT-2-shaped model, not trained", "config": cfg.__dict__}, indent=2))
    return out_dir


def load_eval(path: Path = EVAL_FILE) -> dict[str, Any]:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def _special_token(tok, name: str) -> str | None:
    value = getattr(tok, name, None)
    return str(value) if value else None


def generation_block(model_dir: Path) -> dict[str, Any]:
    """The manifest's ``generation`` block, read from the model's config, tokenizer and template.

    ``chat_template`` is the model's own Jinja source (tokenizer_config.json or chat_template.jinja,
    as transformers saves it); ``special_tokens`` are the strings the template may refer to;
    ``eos_token_ids`` holds the model's end-of-sequence ids plus every end-of-turn token its
    template uses, so a reply stops where the next turn would begin.
    """
    from transformers import AutoConfig, AutoTokenizer, GenerationConfig

    config = AutoConfig.from_pretrained(model_dir)
    tok = AutoTokenizer.from_pretrained(model_dir)
    template = tok.chat_template
    if isinstance(template, dict):  # named templates: the default one is the chat template
        template = template.get("default")
    if not isinstance(template, str) or not template.strip():
        template = None  # a base model: served by /v1/completions only
    eos: list[int] = []

    def add(ids):
        for i in ids if isinstance(ids, (list, tuple)) else [ids]:
            if isinstance(i, int) and i >= 0 and i not in eos:
                eos.append(i)

    add(config.eos_token_id)
    try:
        add(GenerationConfig.from_pretrained(model_dir).eos_token_id)
    except OSError:  # no generation_config.json
        pass
    add(tok.eos_token_id)
    vocab = tok.get_vocab()
    add([vocab[t] for t in END_OF_TURN_TOKENS if t in template and t in vocab])
    if config.model_type == "gpt2" and all(t in vocab for t in SPECIAL_TOKENS[1:]):
        add([vocab[t] for t in SPECIAL_TOKENS[1:]])  # the fixture's role markers start a new turn
    n_head = config.num_attention_heads
    special = {k: v for k in ("bos_token", "eos_token", "pad_token") if (v := _special_token(tok, k))}
    return {
        "eos_token_ids": eos,
        "context_length": int(getattr(config, "max_position_embeddings", None) or config.n_positions),
        "num_layers": int(config.num_hidden_layers),
        "num_kv_heads": int(getattr(config, "num_key_value_heads", None) or n_head),
        "head_dim": int(getattr(config, "head_dim", None) or config.hidden_size // n_head),
        "past_name": "past_key_values.{layer}.{kind}", "present_name": "present.{layer}.{kind}",
        "uses_position_ids": True,
        "chat_template": template,
        "special_tokens": special,
    }


def render_chat(block: dict[str, Any], messages: list[dict[str, str]]) -> str:
    """The prompt text for ``messages``, rendered as transformers does (sandboxed Jinja)."""
    from jinja2.exceptions import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise TemplateError(message)

    def tojson(value, indent=None):
        return json.dumps(value, indent=indent, ensure_ascii=False)

    # The environment transformers renders chat templates in (its helpers included).
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    return env.from_string(block["chat_template"]).render(messages=messages, add_generation_prompt=True,
                                                          **block["special_tokens"])


def chat_ids(tokenizer, block: dict[str, Any], question: str) -> list[int]:
    """Token ids of a one-turn chat prompt: rendered template, encoded WITHOUT added special tokens
    (the template already holds them; a GGUF-converted tokenizer would otherwise add a BOS)."""
    if block.get("chat_template") is None:  # a base model: a plain completion prompt
        return tokenizer.encode(f"Question: {question}\nAnswer:").ids
    return tokenizer.encode(render_chat(block, [{"role": "user", "content": question}]),
                            add_special_tokens=False).ids


def answer_is_right(answer: str, accepted: list[str]) -> bool:
    """Does ``answer`` contain an accepted string as a whole token ("7" is not in "2777", "0°C"
    not in "-18.0°C")?"""
    return any(re.search(r"(?<![\w.\-])" + re.escape(a) + r"(?!\w)", answer, re.IGNORECASE) for a in accepted)


@dataclass
class Reference:
    """What the reference PyTorch model did on the eval data (computed once, reused per candidate)."""

    prompts: list[list[int]]          # chat prompt ids per question
    answers: list[list[int]]          # greedy answer ids (up to EOS) per question
    right: list[bool]                 # reference answer contains an accepted string
    windows: list[list[int]]          # held-out token windows
    nll: float                        # mean next-token NLL over the windows
    argmax: list[list[int]]           # reference argmax per window position
    template_matches: float           # share of prompts equal to transformers' apply_chat_template


def reference_run(source_dir: Path, tokenizer_path: Path, block: dict[str, Any],
                  data: dict[str, Any] | None = None) -> Reference:
    """Run the reference (PyTorch, fp32) on the questions and the held-out text."""
    import torch
    from tokenizers import Tokenizer
    from transformers import AutoModelForCausalLM, AutoTokenizer

    data = data or load_eval()
    # One thread: token-by-token generate() is latency-bound, and on a shared machine a second
    # thread mostly waits at every op's barrier (measured: several times slower under load).
    torch.set_num_threads(1)
    tok = Tokenizer.from_file(str(tokenizer_path))
    tok.no_padding()
    tok.no_truncation()
    hf_tok = AutoTokenizer.from_pretrained(source_dir)
    model = AutoModelForCausalLM.from_pretrained(source_dir, dtype=torch.float32).eval()
    eos = set(block["eos_token_ids"])
    prompts, answers, right, same = [], [], [], 0
    for item in data["questions"]:
        ids = chat_ids(tok, block, item["q"])
        if block.get("chat_template") is None:
            same += 1  # no template to compare
        else:
            hf_ids = hf_tok.apply_chat_template([{"role": "user", "content": item["q"]}],
                                                add_generation_prompt=True, tokenize=True)
            same += int(list(hf_ids) == ids)
        with torch.inference_mode():
            gen = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                 max_new_tokens=ANSWER_TOKENS, do_sample=False, eos_token_id=list(eos),
                                 pad_token_id=block["eos_token_ids"][0])
        out = gen[0, len(ids):].tolist()
        cut = next((i for i, t in enumerate(out) if t in eos), len(out))
        prompts.append(ids)
        answers.append(out[:cut])
        right.append(answer_is_right(tok.decode(out[:cut], skip_special_tokens=True), item["a"]))
    ids = tok.encode("\n".join(data["heldout"]), add_special_tokens=False).ids
    windows = [ids[i:i + PPL_WINDOW] for i in range(0, len(ids) - 1, PPL_WINDOW) if len(ids[i:i + PPL_WINDOW]) > 1]
    nll_sum, count, argmax = 0.0, 0, []
    with torch.inference_mode():
        for w in windows:
            logits = model(torch.tensor([w])).logits[0].float()
            nll_sum += float(torch.nn.functional.cross_entropy(logits[:-1], torch.tensor(w[1:]), reduction="sum"))
            count += len(w) - 1
            argmax.append(logits[:-1].argmax(-1).tolist())
    return Reference(prompts, answers, right, windows, nll_sum / count, argmax, same / len(prompts))


def candidate_metrics(onnx_path: Path, tokenizer_path: Path, block: dict[str, Any], ref: Reference,
                      data: dict[str, Any] | None = None, *, threads: int = 1) -> dict[str, float]:
    """Gate metrics of one ONNX file against the reference run."""
    import numpy as np
    from tokenizers import Tokenizer

    from model_export.decoder import Decoder

    data = data or load_eval()
    tok = Tokenizer.from_file(str(tokenizer_path))
    dec = Decoder(onnx_path, threads=threads)
    exact = kept = 0
    for ids, ref_answer, ref_right, item in zip(ref.prompts, ref.answers, ref.right, data["questions"]):
        got = dec.greedy(ids, ANSWER_TOKENS, block["eos_token_ids"]).tokens
        exact += int(got == ref_answer)
        kept += int(ref_right and answer_is_right(tok.decode(got, skip_special_tokens=True), item["a"]))
    nll_sum, count, agree = 0.0, 0, 0
    for w, ref_argmax in zip(ref.windows, ref.argmax):
        logits = dec.logits(w)[:-1].astype(np.float64)
        z = logits - logits.max(-1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
        nll_sum -= float(logp[np.arange(len(w) - 1), w[1:]].sum())
        count += len(w) - 1
        agree += int((logits.argmax(-1) == np.asarray(ref_argmax)).sum())
    n_right = sum(ref.right)
    return {"greedy_exact": exact / len(ref.prompts),
            "ppl_ratio": math.exp(nll_sum / count - ref.nll),
            "perplexity": math.exp(nll_sum / count), "reference_perplexity": math.exp(ref.nll),
            "next_token_agreement": agree / count,
            # Nothing to keep when the reference knows none of the answers (the random-weight fixture).
            "qa_kept": kept / n_right if n_right else 1.0,
            "qa_reference_right": float(n_right), "qa_right": float(kept), "qa_questions": float(len(ref.prompts)),
            "heldout_tokens": float(count)}


class TextGenerationTask(Task):
    name = "text-generation"
    optimum_task = "text-generation-with-past"
    output_name = "logits"
    # Dynamic int8 (per-batch activation ranges) failed the gate on SmolLM2; block-wise
    # weight-only int4 passes it and is faster (docs/quantization.md).
    quantize_method = "weight-only"
    # docs/quantization.md ("Decoder gate") justifies each number from the candidates measured.
    thresholds = {"fp32_greedy_exact": Threshold(1.0), "template_matches_transformers": Threshold(1.0),
                  "ppl_ratio": Threshold(1.10, higher=False), "next_token_agreement": Threshold(0.85),
                  "qa_kept": Threshold(0.90)}

    def default_max_length(self, source_dir: Path) -> int:
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(source_dir)
        return int(getattr(config, "max_position_embeddings", None) or config.n_positions)

    def manifest_fields(self, source_dir: Path, export_dir: Path) -> dict[str, Any]:
        return {"generation": generation_block(source_dir)}

    def eval_set_id(self, eval_set: Path, texts: list[str]) -> str:
        data = load_eval()
        return (f"{EVAL_FILE.name}@sha256:{eval_identity()[:16]}+{len(data['questions'])} questions"
                f"+{len(data['heldout'])} paragraphs")

    def eval_description(self, texts: list[str]) -> str:
        data = load_eval()
        return f"{len(data['questions'])} chat questions + {len(data['heldout'])} held-out paragraphs"

    def evaluate(self, source_dir: Path, onnx_path: Path, tokenizer_path: Path, texts: list[str],
                 fields: dict[str, Any]) -> dict[str, float]:
        """Reference run once, then the fp32 file (parity) and the shipped file (the gate)."""
        from model_export.decoder import Decoder
        from model_export.pipeline import FP32_FILE

        block = fields["generation"]
        data = load_eval()
        ref = reference_run(source_dir, tokenizer_path, block, data)
        fp32 = Decoder(Path(onnx_path).parent / FP32_FILE)
        parity = [fp32.greedy(ids, ANSWER_TOKENS, block["eos_token_ids"]).tokens == answer
                  for ids, answer in list(zip(ref.prompts, ref.answers))[:PARITY_QUESTIONS]]
        shipped = candidate_metrics(Path(onnx_path), tokenizer_path, block, ref, data)
        return {"fp32_greedy_exact": sum(parity) / len(parity),
                "template_matches_transformers": ref.template_matches, **shipped}


def eval_identity() -> str:
    """sha256 of the generation eval data (part of a default bundle's recipe fingerprint)."""
    return hashlib.sha256(EVAL_FILE.read_bytes()).hexdigest()


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
            "code": hashlib.sha256(Path(__file__).read_bytes()).hexdigest(), "eval": eval_identity(),
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
