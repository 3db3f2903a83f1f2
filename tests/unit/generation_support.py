"""Shared names of the generation tests (fixtures ``tiny_bundle``/``tiny_generator``: tests/unit/conftest.py)."""
from __future__ import annotations




TINY = "cirrus-tiny-gpt2"
