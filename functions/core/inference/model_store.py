"""The model registry of a container: find a bundle (S3 registry pointer or local folder), verify, load once.

``get_model(name)`` is the one way any part of Cirrus (API routes, batch workers) gets a loaded model.
A bundle from S3 is downloaded into ``Settings.cache_dir`` once per container, every file's
sha256 is checked against the manifest (and the manifest against the pointer) before a session
is built. A bundle that fails is refused with ``BundleError`` (503), nothing of it is kept, and
the next request tries again from scratch. Downloads land in a ``.partial-*`` staging folder that is
renamed into place when verified; staging folders a killed process left behind (a Lambda timeout
keeps /tmp) are removed before the next download of that model.
"""
from __future__ import annotations

import os
import re
import shutil
import threading
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING
from pathlib import Path

from botocore.exceptions import BotoCoreError, ClientError

from functions.core.aws import s3
from functions.core.aws.base import translate
from functions.core.contract import MODELS_PREFIX, Pointer, bundle_key, pointer_key
from functions.core.errors import BundleError, ModelNotFound
from functions.core.inference.manifest import MANIFEST_NAME, Manifest, safe_relpath, sha256_file, verify_bundle
from functions.core.observability import logger, metrics, tracer
from functions.core.settings import Settings, get_settings

if TYPE_CHECKING:
    from functions.core.inference.encoder import OnnxModel

# Model names and versions become S3 keys and /tmp paths: keep them to a safe alphabet.
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
STAGING_PREFIX = ".partial-"
# .partial-<version>-<pid>-<random>: the pid says whether the process that stages it still runs.
_STAGING = re.compile(r"^\.partial-.+-(\d+)-[0-9a-f]{8}$")
# This process's downloads in progress (every store of the process: a store rebuilt mid-download
# must not take another one's folder for a leftover).
_IN_PROGRESS: set[Path] = set()
_IN_PROGRESS_LOCK = threading.Lock()


@dataclass(frozen=True)
class ModelInfo:
    """What ``/v1/models`` shows for one model: its manifest, or why it cannot be served."""

    name: str
    manifest: Manifest | None
    error: str | None = None


class ModelStore:
    """Loaded models of this container, keyed by name; each is loaded on first use."""

    def __init__(self, settings: Settings) -> None:
        if not settings.model_dir and not settings.artifacts_bucket:
            raise RuntimeError("no model source: set CIRRUS_MODEL_DIR or CIRRUS_ARTIFACTS_BUCKET")
        self.settings = settings
        self._models: dict[str, OnnxModel] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()

    # --- lookup ------------------------------------------------------------------------------------
    def check_name(self, name: str) -> None:
        allowed = self.settings.models
        if not _SAFE_NAME.match(name) or (allowed and name not in allowed):
            raise ModelNotFound(f"The model '{name[:128]}' does not exist", param="model")

    def get(self, name: str) -> OnnxModel:
        model = self._models.get(name)
        if model is not None:
            return model
        self.check_name(name)
        with self._guard:
            lock = self._locks.setdefault(name, threading.Lock())
        try:
            with lock:  # one load per name even under concurrent first requests
                model = self._models.get(name)
                if model is None:
                    model = self._models[name] = self._load(name)
        except BaseException:
            # Keep locks only for loaded models: a caller cycling through unknown names (all of them
            # well-formed, none published) must not grow this dict for the container's lifetime.
            with self._guard:
                if name not in self._models:
                    self._locks.pop(name, None)
            raise
        return model

    @property
    def lock_count(self) -> int:
        """Per-name load locks held (one per loaded model once loads are done)."""
        with self._guard:
            return len(self._locks)

    def loaded(self) -> dict[str, OnnxModel]:
        return dict(self._models)

    # --- loading -------------------------------------------------------------------------------------
    @tracer.capture_method(capture_response=False)
    def _load(self, name: str) -> OnnxModel:
        started = time.perf_counter()
        try:
            bundle_dir, manifest, source = (self._local_bundle(name) if self.settings.model_dir
                                            else self._s3_bundle(name))
            # onnxruntime, numpy and tokenizers load with the first model, not with this module: the
            # batch splitter and dead-letter functions only list and describe models, and ship
            # without them (the small asset, infra/functions.py).
            from functions.core.inference.encoder import OnnxModel
            from functions.core.inference.generator import OnnxGenerator

            if manifest.task == "text-generation":  # a KV-cache loop, not a single forward pass
                model = OnnxGenerator(bundle_dir, manifest, intra_op_threads=self.settings.intra_op_threads)
            else:
                model = OnnxModel(bundle_dir, manifest, intra_op_threads=self.settings.intra_op_threads,
                                  batch_size=self.settings.batch_size)
        except BundleError as exc:
            logger.error("bundle refused", extra={"model": name, "reason": exc.message})
            raise
        seconds = time.perf_counter() - started
        logger.info("model loaded", extra={"model": name, "version": manifest.version, "source": source,
                                           "seconds": round(seconds, 3), "threads": model.threads})
        metrics.add_metric(name="ModelLoadTime", unit="Milliseconds", value=seconds * 1000)
        return model

    def _local_bundle(self, name: str) -> tuple[Path, Manifest, str]:
        bundle_dir = Path(self.settings.model_dir or "") / name
        if not (bundle_dir / MANIFEST_NAME).is_file():
            raise ModelNotFound(f"The model '{name}' does not exist", param="model")
        manifest = verify_bundle(bundle_dir)
        _check_identity(manifest, name, None)
        return bundle_dir, manifest, "local"

    def _read_pointer(self, name: str) -> Pointer:
        bucket = self.settings.artifacts_bucket or ""
        try:
            raw = s3.get_bytes(bucket, pointer_key(name))
        except s3.ObjectNotFound as exc:
            raise ModelNotFound(f"The model '{name}' does not exist", param="model") from exc
        except (ClientError, BotoCoreError) as exc:
            raise translate(exc, f"reading the registry entry of {name}") from exc
        try:
            pointer = Pointer.model_validate_json(raw)
        except ValueError as exc:
            raise BundleError(f"registry entry of {name} is malformed") from exc
        if not _SAFE_NAME.match(pointer.version):
            raise BundleError(f"registry entry of {name} is malformed")
        return pointer

    def _s3_bundle(self, name: str) -> tuple[Path, Manifest, str]:
        pointer = self._read_pointer(name)
        version, digest = pointer.version, pointer.manifest_sha256
        final = Path(self.settings.cache_dir) / name / version
        if final.is_dir():
            # A container reuses /tmp across invocations; re-hash so a damaged cache is never trusted.
            try:
                manifest = verify_bundle(final)
                if sha256_file(final / MANIFEST_NAME) == digest:
                    return final, manifest, "cache"
            except BundleError:
                pass
            shutil.rmtree(final, ignore_errors=True)
        final.parent.mkdir(parents=True, exist_ok=True)
        self.remove_stale_staging(final.parent)
        staging = final.parent / f"{STAGING_PREFIX}{version}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        staging.mkdir()
        with _IN_PROGRESS_LOCK:
            _IN_PROGRESS.add(staging)
        try:
            manifest = self._download(name, version, digest, staging)
            staging.replace(final)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        finally:
            with _IN_PROGRESS_LOCK:
                _IN_PROGRESS.discard(staging)
        return final, manifest, "s3"

    def remove_stale_staging(self, model_cache: Path) -> list[str]:
        """Delete the ``.partial-*`` folders under ``model_cache`` no running download owns: staged by a
        process that is gone (a timed-out Lambda keeps /tmp for the next one), by this process but no
        longer in progress, or named the old way (no pid). Returns the names removed."""
        removed = []
        with _IN_PROGRESS_LOCK:
            active = set(_IN_PROGRESS)
        for path in model_cache.glob(f"{STAGING_PREFIX}*"):
            m = _STAGING.match(path.name)
            pid = int(m.group(1)) if m else None
            if path in active or (pid is not None and pid != os.getpid() and _alive(pid)):
                continue
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path.name)
        if removed:
            logger.info("stale staging removed", extra={"folders": len(removed)})
        return removed

    def _download(self, name: str, version: str, digest: str, dest: Path) -> Manifest:
        bucket = self.settings.artifacts_bucket or ""
        try:
            s3.download_file(bucket, bundle_key(name, version, MANIFEST_NAME), dest / MANIFEST_NAME)
            if sha256_file(dest / MANIFEST_NAME) != digest:
                raise BundleError(f"bundle {name}@{version}: manifest sha256 does not match the registry")
            manifest = Manifest.read(dest)
            _check_identity(manifest, name, version)
            for rel in manifest.files:
                if safe_relpath(rel) is None:
                    raise BundleError(f"bundle {name}@{version}: unsafe file path in manifest")
                target = dest / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                s3.download_file(bucket, bundle_key(name, version, rel), target)
        except s3.ObjectNotFound as exc:
            raise BundleError(f"bundle {name}@{version}: a file listed by the manifest is missing in S3") from exc
        except (ClientError, BotoCoreError) as exc:
            raise translate(exc, f"downloading {name}@{version}") from exc
        return verify_bundle(dest, manifest)

    # --- listing -------------------------------------------------------------------------------------
    def names(self) -> list[str]:
        if self.settings.models:
            return list(self.settings.models)
        if self.settings.model_dir:
            root = Path(self.settings.model_dir)
            return sorted(p.name for p in root.iterdir() if (p / MANIFEST_NAME).is_file()) if root.is_dir() else []
        try:
            return sorted(s3.list_prefixes(self.settings.artifacts_bucket or "", MODELS_PREFIX))
        except (ClientError, BotoCoreError) as exc:
            raise translate(exc, "listing the model registry") from exc

    def manifest(self, name: str) -> Manifest:
        """The manifest of ``name`` without loading its session (from the bundle or the registry), so
        a caller can check what the model is before paying for its load. Raises ModelNotFound for a
        model that does not exist, BundleError / ModelUnavailable when it cannot be read now."""
        loaded = self._models.get(name)
        if loaded is not None:
            return loaded.manifest
        self.check_name(name)
        if self.settings.model_dir:
            bundle_dir = Path(self.settings.model_dir) / name
            if not (bundle_dir / MANIFEST_NAME).is_file():
                raise ModelNotFound(f"The model '{name}' does not exist", param="model")
            return Manifest.read(bundle_dir)
        pointer = self._read_pointer(name)
        try:
            raw = s3.get_bytes(self.settings.artifacts_bucket or "", bundle_key(name, pointer.version, MANIFEST_NAME))
        except s3.ObjectNotFound as exc:
            raise BundleError(f"bundle {name}@{pointer.version}: manifest missing in S3") from exc
        except (ClientError, BotoCoreError) as exc:
            raise translate(exc, f"reading the manifest of {name}") from exc
        try:
            return Manifest.model_validate_json(raw)
        except ValueError as exc:
            raise BundleError(f"bundle {name}@{pointer.version}: manifest is malformed") from exc

    def describe(self, name: str) -> ModelInfo:
        """What ``/v1/models`` shows: the manifest of ``name``, or why it cannot be read (never raises)."""
        try:
            return ModelInfo(name, self.manifest(name))
        except Exception as exc:  # listing must show a broken model, not fail the whole list
            code = getattr(exc, "code", None) or exc.__class__.__name__
            return ModelInfo(name, None, error=str(code))


def _check_identity(manifest: Manifest, name: str, version: str | None) -> None:
    if manifest.name != name or (version is not None and manifest.version != version):
        raise BundleError(f"bundle {name}: manifest names {manifest.name}@{manifest.version}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:   # someone else's process: alive
        return True
    return True


_store: ModelStore | None = None
_store_lock = threading.Lock()


def store() -> ModelStore:
    """The container's store, built from settings on first use."""
    global _store
    if _store is None:
        with _store_lock:
            if _store is None:
                _store = ModelStore(get_settings())
    return _store


def get_model(name: str) -> OnnxModel:
    """The loaded model ``name`` (loads and verifies it on first use). Raises ModelNotFound / BundleError."""
    return store().get(name)


def loaded_versions() -> dict[str, str]:
    """name -> version of the models this container has loaded (never builds the store)."""
    current = _store
    return {n: m.version for n, m in current.loaded().items()} if current else {}


def reset() -> None:
    """Forget every loaded model and the settings they came from (tests)."""
    global _store
    with _store_lock:
        _store = None
