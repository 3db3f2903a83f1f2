"""Renders a model's own Jinja chat template the way transformers' ``apply_chat_template`` does.

The template comes from the bundle (it is the model's, never written here) and is untrusted
input, so it runs in Jinja's immutable sandbox with the same environment transformers builds
(``trim_blocks``, ``lstrip_blocks``, loop controls, ``raise_exception``, ``tojson``,
``strftime_now``). The rendered text is encoded WITHOUT added special tokens: the template already
wrote them, and a tokenizer post-processor that adds BOS would double the first token.
"""
from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from functions.core.errors import BadRequest, BundleError


class _TemplateRefused(Exception):
    """The template itself refused the conversation (its ``raise_exception``)."""


def _raise_exception(message: str) -> None:
    raise _TemplateRefused(message)


def _tojson(x: Any, ensure_ascii: bool = False, indent: int | None = None, separators: Any = None,
            sort_keys: bool = False) -> str:
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


class ChatRenderer:
    """One compiled template; ``render`` is thread-safe (Jinja templates are)."""

    def __init__(self, source: str, special_tokens: dict[str, str], *, label: str) -> None:
        # Imported here: only generation bundles pay for Jinja at cold start.
        import jinja2
        import jinja2.ext
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        self._errors = (jinja2.TemplateError, _TemplateRefused)
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                            extensions=[jinja2.ext.loopcontrols])
        env.filters["tojson"] = _tojson
        env.globals["raise_exception"] = _raise_exception
        env.globals["strftime_now"] = _strftime_now
        try:
            self._template = env.from_string(source)
        except jinja2.TemplateError as exc:
            raise BundleError(f"bundle {label}: its chat template does not compile ({exc})") from exc
        self._special = dict(special_tokens)
        self._label = label

    def render(self, messages: list[tuple[str, str]], *, add_generation_prompt: bool = True) -> str:
        """The prompt text for ``messages`` ((role, content) pairs), ending where the reply starts."""
        try:
            return self._template.render(messages=[{"role": r, "content": c} for r, c in messages],
                                         add_generation_prompt=add_generation_prompt, tools=None, documents=None,
                                         **self._special)
        except _TemplateRefused as exc:
            # The model's template refuses this conversation shape (e.g. roles must alternate).
            raise BadRequest(f"model {self._label}: {exc}", param="messages", code="invalid_messages") from exc
        except self._errors as exc:
            raise BundleError(f"bundle {self._label}: its chat template failed to render "
                              f"({exc.__class__.__name__}: {exc})") from exc
