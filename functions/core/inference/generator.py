"""The torch-free generation loop: one onnxruntime session over a causal LM with a KV cache.

The prompt runs once (prefill); every next token then feeds only itself plus the cache the
previous step returned, so a step costs one token of compute. The cache never leaves onnxruntime:
each step's ``present.*`` outputs are bound, as OrtValues, to the next step's ``past_key_values.*``
inputs (IO binding), so no numpy conversion or copy of the cache happens between steps, and one
prefill is shared by the ``n`` choices of a request.

The loop is a generator (``stream``): it yields each accepted token as a ``Delta`` (its text, held
back while it could be the start of a stop string), so streaming can forward deltas as they come
and cancel by closing the iterator; ``generate_ids`` collects one whole choice. Sampling follows
the OpenAI API: logit_bias, presence/frequency penalties, temperature (0: greedy), top_p, a seed,
logprobs with top alternatives. Stops on an end-of-turn token, a stop string, the token budget or
the model's context window, and says which.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

from functions.core.errors import BadRequest, BundleError, ContextLengthExceeded, ValidationFailed
from functions.core.inference.encoder import cpu_count, session_options
from functions.core.inference.manifest import MODEL_FILE, TOKENIZER_FILE, Manifest
from functions.core.inference.spec import GenerationSpec

FinishReason = Literal["stop", "length"]


@dataclass(frozen=True)
class SamplingParams:
    """How to pick tokens; validated at the API edge (schemas), trusted here except for finiteness."""

    max_new_tokens: int
    temperature: float = 1.0     # 0: greedy (argmax), as in the OpenAI API
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    presence_penalty: float = 0.0   # subtracted once from every token already generated
    frequency_penalty: float = 0.0  # subtracted per occurrence in the generated tokens
    logit_bias: tuple[tuple[int, float], ...] = ()  # (token id, bias added to its logit)
    top_logprobs: int | None = None  # None: no logprobs; k >= 0: each token's logprob and the k best
    n: int = 1                       # choices, sharing one prefill

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0

    @property
    def plain(self) -> bool:
        """Nothing but argmax/temperature/top_p on raw logits (the fast path)."""
        return not (self.presence_penalty or self.frequency_penalty or self.logit_bias
                    or self.top_logprobs is not None)


@dataclass(frozen=True)
class TokenLogprob:
    """One generated token's log-probability and the ``top`` most likely (id, logprob) at its step."""

    token_id: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()


@dataclass(frozen=True)
class Delta:
    """What one step adds to a choice: new text (maybe empty while held back) and the token."""

    text: str
    token_id: int
    logprob: TokenLogprob | None = None


@dataclass(frozen=True)
class Generation:
    text: str
    token_ids: list[int]
    prompt_tokens: int
    finish_reason: FinishReason
    logprobs: list[TokenLogprob] | None = None
    extra: dict = field(default_factory=dict)

    @property
    def completion_tokens(self) -> int:
        return len(self.token_ids)


class _Logits:
    """The per-choice logits processor: bias, penalties, then greedy or seeded sampling."""

    def __init__(self, params: SamplingParams, vocab: int, rng: np.random.Generator) -> None:
        self.p = params
        self.rng = rng
        self.counts = np.zeros(vocab, dtype=np.float32) if (params.presence_penalty or params.frequency_penalty) \
            else None
        ids = [i for i, _ in params.logit_bias if 0 <= i < vocab]
        self.bias_ids = np.asarray(ids, dtype=np.int64)
        self.bias = np.asarray([b for i, b in params.logit_bias if 0 <= i < vocab], dtype=np.float32)

    def pick(self, logits: np.ndarray) -> tuple[int, TokenLogprob | None]:
        p = self.p
        if p.plain and p.greedy:
            nxt = int(np.argmax(logits))
            if not np.isfinite(logits[nxt]):
                raise _non_finite()
            return nxt, None
        z = logits.astype(np.float64)
        if self.bias_ids.size:
            z[self.bias_ids] += self.bias
        if self.counts is not None:
            z -= self.counts * p.frequency_penalty + (self.counts > 0) * p.presence_penalty
        finite = np.isfinite(z)
        if not finite.all():
            # NaN/inf from the graph must not reach the sampler (np.random would raise or pick junk).
            z = np.where(finite, z, -np.inf)
            if not finite.any():
                raise _non_finite()
        nxt = int(np.argmax(z)) if p.greedy else self._sample(z)
        if self.counts is not None:
            self.counts[nxt] += 1
        return nxt, (self._logprob(z, nxt) if p.top_logprobs is not None else None)

    def _sample(self, z: np.ndarray) -> int:
        z = (z - z.max()) / self.p.temperature  # <= 0 everywhere: exp cannot overflow
        probs = np.exp(z)
        probs /= probs.sum()
        if self.p.top_p < 1.0:
            order = np.argsort(-probs, kind="stable")
            cum = np.cumsum(probs[order])
            # Keep the smallest head whose mass reaches top_p (always at least the top token).
            keep = order[: int(np.searchsorted(cum, self.p.top_p)) + 1]
            kept = probs[keep] / probs[keep].sum()
            return int(keep[self.rng.choice(len(keep), p=kept)])
        return int(self.rng.choice(len(probs), p=probs))

    def _logprob(self, z: np.ndarray, nxt: int) -> TokenLogprob:
        # Log-probabilities of the distribution after bias and penalties, before temperature/top_p
        # (what the model says about each token, as OpenAI reports them).
        m = z.max()
        lse = m + np.log(np.exp(z - m).sum())
        k = self.p.top_logprobs or 0
        top: tuple[tuple[int, float], ...] = ()
        if k:
            best = np.argpartition(-z, k)[:k] if k < z.size else np.arange(z.size)
            best = best[np.argsort(-z[best], kind="stable")]
            top = tuple((int(i), float(z[i] - lse)) for i in best)
        return TokenLogprob(nxt, max(float(z[nxt] - lse), -9999.0), top)


def _non_finite() -> BundleError:
    return BundleError("the model produced no finite logits (a broken bundle)")


@dataclass
class _Prefill:
    """The state after the prompt: the last position's logits and the cache (OrtValues)."""

    logits: np.ndarray
    cache: list[ort.OrtValue]
    total: int


class OnnxGenerator:
    """A loaded text-generation bundle; concurrent generations are safe (all loop state is local)."""

    def __init__(self, bundle_dir: Path, manifest: Manifest | None = None, *, model_file: str = MODEL_FILE,
                 intra_op_threads: int = 0) -> None:
        self.bundle_dir = Path(bundle_dir)
        self.manifest = manifest or Manifest.read(self.bundle_dir)
        self._load(self.bundle_dir / model_file, self.bundle_dir / TOKENIZER_FILE, GenerationSpec.of(self.manifest),
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
        self.label = label
        try:
            self.tokenizer = Tokenizer.from_file(str(tokenizer_path))
        except Exception as exc:
            raise BundleError(f"bundle {label}: tokenizer.json does not load") from exc
        # Generation sees the whole prompt: the context window is enforced here, not by silent truncation.
        self.tokenizer.no_padding()
        self.tokenizer.no_truncation()
        self.vocab_size = self.tokenizer.get_vocab_size(with_added_tokens=True)
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
        self._renderer = None
        if spec.chat_template:
            from functions.core.inference.chat_template import ChatRenderer

            self._renderer = ChatRenderer(spec.chat_template, spec.special_tokens.variables(), label=label)

    @property
    def name(self) -> str:
        return self.manifest.name if self.manifest else "unbundled"

    @property
    def version(self) -> str:
        return self.manifest.version if self.manifest else "unversioned"

    # --- text <-> ids ------------------------------------------------------------------------------
    def encode(self, text: str, *, add_special_tokens: bool = True) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    def token_text(self, token_id: int) -> str:
        """One token as text (logprobs' ``token``); special tokens keep their marker."""
        return self.tokenizer.decode([token_id], skip_special_tokens=False)

    def render_chat(self, messages: list[tuple[str, str]]) -> str:
        if self._renderer is None:
            raise ValidationFailed(f"model {self.name!r} has no chat template; use /v1/completions",
                                   param="model", code="no_chat_template")
        return self._renderer.render(messages)

    def encode_chat(self, messages: list[tuple[str, str]]) -> list[int]:
        """The chat prompt's ids. The template wrote every special token itself, so none is added:
        a tokenizer whose post-processor adds BOS (GGUF conversions do) would double the first."""
        return self.encode(self.render_chat(messages), add_special_tokens=False)

    # --- the loop ------------------------------------------------------------------------------------
    def _check_prompt(self, n_prompt: int) -> int:
        """The room left for new tokens after an ``n_prompt``-token prompt (400s when none)."""
        if n_prompt == 0:
            raise BadRequest("the prompt is empty after tokenization", param="messages")
        room = self.spec.context_length - n_prompt
        if room < 1:
            raise ContextLengthExceeded(f"the prompt has {n_prompt} tokens; model {self.name!r} has a context "
                                        f"window of {self.spec.context_length} tokens", param="messages")
        return room

    def _step(self, binding: ort.IOBinding, ids: np.ndarray, start: int,
              cache: list[ort.OrtValue] | None) -> tuple[np.ndarray, list[ort.OrtValue]]:
        """One forward pass over ``ids`` at positions ``start...``: (last logits, new cache)."""
        total = start + ids.shape[1]
        binding.bind_cpu_input("input_ids", ids)
        binding.bind_cpu_input("attention_mask", np.ones((1, total), dtype=np.int64))
        if self._use_positions:
            binding.bind_cpu_input("position_ids", np.arange(start, total, dtype=np.int64)[None, :])
        if cache is None:
            empty = np.zeros((1, self.spec.num_kv_heads, 0, self.spec.head_dim), dtype=self._cache_dtype)
            for name in self._past:
                binding.bind_cpu_input(name, empty)
        else:
            for name, value in zip(self._past, cache):
                binding.bind_ortvalue_input(name, value)
        for name in self._outputs:
            binding.bind_output(name, "cpu")
        self.session.run_with_iobinding(binding)
        logits, *present = binding.get_outputs()
        return logits.numpy()[0, -1], present

    def prefill(self, prompt_ids: Sequence[int]) -> _Prefill:
        n = len(prompt_ids)
        self._check_prompt(n)
        logits, cache = self._step(self.session.io_binding(), np.asarray([list(prompt_ids)], dtype=np.int64), 0, None)
        return _Prefill(logits, cache, n)

    def stream(self, prompt_ids: Sequence[int], params: SamplingParams, *, rng: np.random.Generator | None = None,
               state: _Prefill | None = None) -> Iterator[Delta]:
        """Yield one choice token by token; ``finish_reason`` is the return value (StopIteration.value).

        ``state`` (from ``prefill``) lets several choices share the prompt's cache: it is read, never
        written. Closing the iterator cancels the generation; nothing outlives it.
        """
        state = state or self.prefill(prompt_ids)
        budget = min(params.max_new_tokens, self.spec.context_length - state.total)
        picker = _Logits(params, self.vocab_size, rng or np.random.default_rng(params.seed))
        eos = set(self.spec.eos_token_ids)
        binding = self.session.io_binding()
        logits, cache, total = state.logits, state.cache, state.total
        out: list[int] = []
        emitted = ""  # text already yielded
        hold = max((len(s) for s in params.stop), default=1) - 1
        while True:
            nxt, lp = picker.pick(logits)
            if nxt in eos:
                break
            out.append(nxt)
            text = self.decode(out)
            if params.stop:
                cut = min((i for i in (text.find(s) for s in params.stop) if i >= 0), default=-1)
                if cut >= 0:
                    yield Delta(text[len(emitted):cut], nxt, lp)
                    return "stop"
            # Hold back a possible stop-string prefix and a half-decoded UTF-8 character.
            safe = len(text) - hold if params.stop else len(text)
            while safe > len(emitted) and text[safe - 1] == "\ufffd":
                safe -= 1
            safe = max(safe, len(emitted))
            yield Delta(text[len(emitted):safe], nxt, lp)
            emitted = text[:safe]
            if len(out) >= budget:
                break
            logits, cache = self._step(binding, np.asarray([[nxt]], dtype=np.int64), total, cache)
            total += 1
        rest = self.decode(out)[len(emitted):]
        if rest:
            yield Delta(rest, -1, None)  # the held-back tail (no new token)
        return "stop" if len(out) < budget else "length"

    def generate_ids(self, prompt_ids: Sequence[int], params: SamplingParams, *,
                     rng: np.random.Generator | None = None, state: _Prefill | None = None) -> Generation:
        """One whole choice after ``prompt_ids``; the text is cut before the first stop string."""
        it = self.stream(prompt_ids, params, rng=rng, state=state)
        parts: list[str] = []
        ids: list[int] = []
        lps: list[TokenLogprob] = []
        while True:
            try:
                d = next(it)
            except StopIteration as done:
                finish: FinishReason = done.value
                break
            parts.append(d.text)
            if d.token_id >= 0:
                ids.append(d.token_id)
                if d.logprob is not None:
                    lps.append(d.logprob)
        return Generation("".join(parts), ids, len(prompt_ids), finish,
                          lps if params.top_logprobs is not None else None)

    def generate_n(self, prompt_ids: Sequence[int], params: SamplingParams) -> list[Generation]:
        """``params.n`` choices from one prefill and one seeded random stream (reproducible with a seed)."""
        state = self.prefill(prompt_ids)
        rng = np.random.default_rng(params.seed)
        return [self.generate_ids(prompt_ids, params, rng=rng, state=state) for _ in range(params.n)]

    def complete(self, prompt: str, params: SamplingParams) -> list[Generation]:
        return self.generate_n(self.encode(prompt), params)

    def chat(self, messages: list[tuple[str, str]], params: SamplingParams) -> list[Generation]:
        return self.generate_n(self.encode_chat(messages), params)

    def logits(self, ids: Sequence[int]) -> np.ndarray:
        """Logits at every position of ``ids`` in one pass (no cache): [len(ids), vocab]."""
        n = len(ids)
        empty = np.zeros((1, self.spec.num_kv_heads, 0, self.spec.head_dim), dtype=self._cache_dtype)
        feeds = {"input_ids": np.asarray([list(ids)], dtype=np.int64),
                 "attention_mask": np.ones((1, n), dtype=np.int64), **{name: empty for name in self._past}}
        if self._use_positions:
            feeds["position_ids"] = np.arange(n, dtype=np.int64)[None, :]
        return self.session.run([self.output_name], feeds)[0][0]
