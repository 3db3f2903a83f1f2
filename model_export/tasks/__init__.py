"""Task registry: task name -> module in this package that exposes ``TASK``.

Adding a task is adding its module here and to ``_MODULES``; the pipeline and CLI only see ``Task``.
"""
from __future__ import annotations

import importlib
import importlib.util

from model_export.errors import ExportError
from model_export.tasks.base import Task

_MODULES = {
    "feature-extraction": "model_export.tasks.feature_extraction",
    "text-classification": "model_export.tasks.text_classification",
    "text-generation": "model_export.tasks.text_generation",
}


def available_tasks() -> list[str]:
    return [name for name, mod in _MODULES.items() if importlib.util.find_spec(mod) is not None]


def get_task(name: str) -> Task:
    if name not in available_tasks():
        raise ExportError(f"unknown task {name!r} (choose from {', '.join(available_tasks())})")
    return importlib.import_module(_MODULES[name]).TASK


__all__ = ["Task", "available_tasks", "get_task"]
