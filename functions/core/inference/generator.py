"""The torch-free generation loop: one onnxruntime session over a causal LM with a KV cache.

The prompt runs once; every next token then feeds only itself plus the cache the previous step
returned, so a step costs one token of compute. Greedy when temperature is 0, otherwise seeded
sampling with temperature and nucleus (top_p) filtering. Stops on an end-of-sequence token, a stop
string, the token budget or the model's context window, and says which.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

from functions.core.errors import BadRequest, BundleError, ContextLengthExceeded
from functions.core.inference.spec import GenerationSpec
from functions.core.inference.manifest import Manifest
from functions.core.inference.encoder import cpu_count, session_options

FinishReason = Literal["stop", "length"]


@dataclass(frozen=True)
class SamplingParams:
    """How to pick tokens; validated at the API edge (schemas), trusted here."""

    max_new_tokens: int
    temperature: float = 1.0     # 0: greedy (argmax), as in the OpenAI API
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0


@dataclass(frozen=True)
class Generation:
    text: str
    token_ids: list[int]
    prompt_tokens: int
    finish_reason: FinishReason
    extra: dict = field(default_factory=dict)

    @property
    def completion_tokens(self) -> int:
        return len(self.token_ids)


def sample_next(logits: np.ndarray, params: SamplingParams, rng: np.random.Generator) -> int:
    """One token id from the last position's logits (float, [vocab])."""
    if params.greedy:
        return int(np.argmax(logits))
    z = logits.astype(np.float64) / params.temperature
    z -= z.max()
    probs = np.exp(z)
    probs /= probs.sum()
    if params.top_p < 1.0:
        order = np.argsort(-probs, kind="stable")
        cum = np.cumsum(probs[order])
        # Keep the smallest head whose mass reaches top_p (always at least the top token).
        keep = order[: int(np.searchsorted(cum, params.top_p)) + 1]
        kept = probs[keep] / probs[keep].sum()
        return int(keep[rng.choice(len(keep), p=kept)])
    return int(rng.choice(len(probs), p=probs))


class OnnxGenerator:
    """A loaded text-generation bundle; concurrent generations are safe (all loop state is local)."""

    def __init__(self, bundle_dir: Path, manifest: Manifest | None = None, *, model_file: str = "model.onnx",
                 intra_op_threads: int = 0) -> None:
        self.bundle_dir = Path(bundle_dir)
        self.manifest = manifest or Manifest.read(self.bundle_dir)
        self._load(self.bundle_dir / model_file, self.bundle_dir / "tokenizer.json", GenerationSpec.of(self.manifest),
                   self.manifest.output_name, f"{self.manifest.name}@{self.manifest.version}", intra_op_threads)

    @classmethod
    def from_files(cls, model_path: Path, tokenizer_path: Path, spec: GenerationSpec, *,
                   output_name: str = "logits", intra_op_threads: int = 0) -> "OnnxGenerator":
        """A generator over loose files (the exporter's gate, before a bundle exists)."""
        obj = cls.__new__(cls)
        obj.bundle_dir, obj.manifest = Path(model_path).parent, None
        obj._load(Path(model_path), Path(tokenizer_path), spec, output_name, Path(model_path).name, intra_op_threads)
        return obj

    def _load(self, model_path: Path, tokenizer_path: Path, spec: GenerationSpec, output_name: str, label: str,
              intra_op_threads: int) -> None:
        self.spec = spec
        self.output_name = output_name
        try:
            self.tokenizer = Tokenizer.from_file(str(tokenizer_path))
        except Exception as exc:
            raise BundleError(f"bundle {label}: tokenizer.json does not load") from exc
        # Generation sees the whole prompt: the context window is enforced here, not by silent truncation.
        self.tokenizer.no_padding()
        self.tokenizer.no_truncation()
        self.threads = intra_op_threads or cpu_count()
        try:
            self.session = ort.InferenceSession(str(model_path), sess_options=session_options(self.threads),
                                                providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise BundleError(f"bundle {label}: {model_path.name} does not load ({exc.__class__.__name__})") from exc
        inputs = {i.name: i for i in self.session.get_inputs()}
        outputs = [o.name for o in self.session.get_outputs()]
        self._past = spec.past_inputs()
        self._present = spec.present_outputs()
        missing = ({"input_ids", "attention_mask", *self._past} - set(inputs)) | (
            {output_name, *self._present} - set(outputs))
        if missing:
            raise BundleError(f"bundle {label}: graph does not match its generation block, missing "
                              f"{sorted(missing)[:4]}")
        self._use_positions = spec.uses_position_ids and "position_ids" in inputs
        self._cache_dtype = np.float16 if inputs[self._past[0]].type == "tensor(float16)" else np.float32
        self._outputs = [output_name, *self._present]

    @property
    def name(self) -> str:
        return self.manifest.name if self.manifest else "unbundled"

    @property
    def version(self) -> str:
        return self.manifest.version if self.manifest else "unversioned"

    # --- text <-> ids ------------------------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text).ids

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    def render_chat(self, messages: list[tuple[str, str]]) -> str:
        return self.spec.chat_template.render(messages)

    # --- the loop ------------------------------------------------------------------------------------
    def _empty_cache(self) -> dict[str, np.ndarray]:
        shape = (1, self.spec.num_kv_heads, 0, self.spec.head_dim)
        return {name: np.zeros(shape, dtype=self._cache_dtype) for name in self._past}

    def generate_ids(self, prompt_ids: Sequence[int], params: SamplingParams) -> Generation:
        """Generate after ``prompt_ids``; the text is cut before the first stop string."""
        n_prompt = len(prompt_ids)
        if n_prompt == 0:
            raise BadRequest("the prompt is empty after tokenization", param="messages")
        room = self.spec.context_length - n_prompt
        if room < 1:
            raise ContextLengthExceeded(f"the prompt has {n_prompt} tokens; model {self.name!r} has a context "
                                        f"window of {self.spec.context_length} tokens", param="messages")
        budget = min(params.max_new_tokens, room)
        rng = np.random.default_rng(params.seed)
        eos = set(self.spec.eos_token_ids)
        cache = self._empty_cache()
        step_ids = np.asarray([list(prompt_ids)], dtype=np.int64)
        total = n_prompt
        out: list[int] = []
        text = ""
        finish: FinishReason = "length"
        while len(out) < budget:
            feeds = {"input_ids": step_ids, "attention_mask": np.ones((1, total), dtype=np.int64), **cache}
            if self._use_positions:
                start = total - step_ids.shape[1]
                feeds["position_ids"] = np.arange(start, total, dtype=np.int64)[None, :]
            logits, *present = self.session.run(self._outputs, feeds)
            nxt = sample_next(logits[0, -1], params, rng)
            if nxt in eos:
                finish = "stop"
                break
            out.append(nxt)
            if params.stop:
                text = self.decode(out)
                cut = min((i for i in (text.find(s) for s in params.stop) if i >= 0), default=-1)
                if cut >= 0:
                    return Generation(text[:cut], out, n_prompt, "stop")
            cache = dict(zip(self._past, present))
            step_ids = np.asarray([[nxt]], dtype=np.int64)
            total += 1
        return Generation(self.decode(out), out, n_prompt, finish)

    def complete(self, prompt: str, params: SamplingParams) -> Generation:
        return self.generate_ids(self.encode(prompt), params)

    def chat(self, messages: list[tuple[str, str]], params: SamplingParams) -> Generation:
        return self.generate_ids(self.encode(self.render_chat(messages)), params)

    def logits(self, ids: Sequence[int]) -> np.ndarray:
        """Logits at every position of ``ids`` in one pass (no cache): [len(ids), vocab]."""
        n = len(ids)
        feeds = {"input_ids": np.asarray([list(ids)], dtype=np.int64),
                 "attention_mask": np.ones((1, n), dtype=np.int64), **self._empty_cache()}
        if self._use_positions:
            feeds["position_ids"] = np.arange(n, dtype=np.int64)[None, :]
        return self.session.run([self.output_name], feeds)[0][0]
