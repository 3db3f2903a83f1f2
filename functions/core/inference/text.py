"""Text as the tokenizers take it: every request text passes ``clean_text`` before tokenizing."""
from __future__ import annotations

import re

# JSON can carry lone UTF-16 surrogates ("\ud800"); they are not valid Unicode scalars and the
# tokenizer (Rust) cannot take them. They become U+FFFD, as a UTF-8 decoder would do.
_LONE_SURROGATE = re.compile(r"[\ud800-\udfff]")


def clean_text(text: str) -> str:
    return _LONE_SURROGATE.sub("\ufffd", text)
