"""JSON text out: the one encoder for response bodies and batch result lines (orjson, vectors of floats).

``json.dumps`` spends ~0.3 ms on one 384-float embedding (``float.__repr__`` per value, in a loop
that also checks every type); orjson writes the same shortest round-trip digits ~30x faster. That
was the largest cost of a one-text request after the model itself (bench/handler_latency.py).

The text differs from ``json.dumps`` only in spelling, never in value: UTF-8 instead of ``\\uXXXX``
escapes, exponents written ``1e-5`` instead of ``1e-05``, no spaces. NaN and infinities become
``null`` (``json.dumps`` writes ``NaN``, which is not JSON).
"""
from __future__ import annotations

import json
from typing import Any

import orjson

_OPTIONS = orjson.OPT_NON_STR_KEYS  # int keys are written as strings, as json.dumps does


def dumps(obj: Any) -> str:
    """``obj`` as compact JSON text; TypeError for a value JSON has no plain form for (a Decimal)."""
    try:
        return orjson.dumps(obj, option=_OPTIONS).decode("utf-8")
    except TypeError:  # orjson.JSONEncodeError is one
        # orjson refuses integers past 64 bits, and a batch line's id may be any JSON integer.
        return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)
