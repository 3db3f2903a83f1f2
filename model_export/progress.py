"""Stage progress with timings: human lines on stderr, collected for ``--json``."""
from __future__ import annotations

import sys
import time
from contextlib import contextmanager
from typing import Iterator


class Progress:
    def __init__(self, quiet: bool = False) -> None:
        self.quiet = quiet
        self.timings: dict[str, float] = {}

    def fresh(self) -> "Progress":
        """Same output, own timings: one bundle's stage times, not the whole command's."""
        return Progress(quiet=self.quiet)

    def info(self, message: str) -> None:
        if not self.quiet:
            print(message, file=sys.stderr, flush=True)

    @contextmanager
    def stage(self, name: str, detail: str = "") -> Iterator[None]:
        self.info(f"[{name}] start {detail}".rstrip())
        start = time.perf_counter()
        try:
            yield
        finally:
            took = time.perf_counter() - start
            self.timings[name] = round(self.timings.get(name, 0.0) + took, 3)
            self.info(f"[{name}] done in {took:.1f}s")


SILENT = Progress(quiet=True)
