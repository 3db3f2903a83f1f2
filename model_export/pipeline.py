"""The export stages (export -> quantize -> validate -> bundle) over a work folder, and ``build``.

A work folder holds the fp32 export, the int8 file and the gate result, with ``work.json``
recording what each stage did; ``bundle`` turns it into a bundle only when the gate passed
for the exact file that ships (or ``--force``, which the manifest records).
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from dataclasses import asdict
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from functions.core.inference.manifest import (FileEntry, Gate, Manifest, Quantization, Source, file_entry,
                                     sha256_file, verify_bundle)
from model_export.config import ExportConfig, QuantizeConfig, Threshold, parse_threshold_overrides
from model_export.errors import ExportError, GateFailed
from model_export.progress import SILENT, Progress
from model_export.tasks import get_task

WORK_FILE = "work.json"
GATE_FILE = "gate.json"
FP32_FILE = "model.onnx"
INT8_FILE = "model.int8.onnx"
BUNDLE_FILES = ("tokenizer.json", "config.json")
EVAL_SET = Path(__file__).parent / "data" / "eval_texts.jsonl"
TOOL_PACKAGES = ("torch", "transformers", "optimum", "optimum-onnx", "onnx", "onnxruntime", "tokenizers")


# ---------------------------------------------------------------- helpers

def ensure_writable_dir(path: Path) -> Path:
    """Create ``path`` (and parents) and prove we can write there, with a one-line error if not."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".probe-"):
            pass
    except OSError as exc:
        raise ExportError(f"cannot write to {path}: {exc.strerror or exc}") from None
    return path


def resolve_source(source: str, revision: str | None = None, *, work_dir: Path | None = None,
                   progress: Progress = SILENT) -> tuple[Path, dict[str, Any]]:
    """A local model folder for ``source`` + provenance.

    ``source`` is a model directory, a hub id (fetched once), or a ``.gguf`` file: that one is
    dequantized into ``work_dir/source`` and its provenance records the file's sha256.
    """
    from model_export import gguf

    path = Path(source).expanduser()
    if path.is_file() and gguf.is_gguf(path):
        if work_dir is None:
            raise ExportError("a GGUF source needs a work folder to convert into")
        digest = sha256_file(path)
        ensure_writable_dir(work_dir)
        with progress.stage("convert", f"GGUF {path.name} -> fp32 Hugging Face folder"):
            folder = gguf.convert(path, Path(work_dir) / "source", sha256=digest)
        return folder, {"id": str(path.resolve()), "format": "gguf", "content_sha256": digest}
    if path.exists():
        if path.is_file():
            raise ExportError(f"{source} is a file: give a model directory, a .gguf file or a hub id")
        if not (path.is_dir() and (path / "config.json").is_file()):
            raise ExportError(f"model directory {source} has no config.json")
        return path.resolve(), {"id": str(path.resolve()), "content_sha256": content_hash(path)}
    if source.startswith((".", "/", "~")) or source.count("/") > 1 or os.sep + os.sep in source:
        raise ExportError(f"model directory not found: {source}")
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.utils import disable_progress_bars, enable_progress_bars

        # The hub client draws one byte-progress bar per file (size, speed, time left) on stderr;
        # --quiet silences them with the stage lines.
        (disable_progress_bars if progress.quiet else enable_progress_bars)()
        with progress.stage("download", f"{source}@{revision or 'main'} from the Hugging Face hub"):
            local = Path(snapshot_download(source, revision=revision))
    except Exception as exc:  # any hub failure (offline, 404, auth) is one line for the user
        raise ExportError(f"cannot fetch {source!r} from the Hugging Face hub: "
                          f"{exc.__class__.__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from None
    return local, {"id": source, "revision": revision or local.name, "content_sha256": content_hash(local)}


def content_hash(folder: Path) -> str:
    """sha256 over (relative path, file sha256) of every non-hidden file: the source's identity."""
    import hashlib

    h = hashlib.sha256()
    for file in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = file.relative_to(folder).as_posix()
        if any(part.startswith(".") for part in rel.split("/")):
            continue
        h.update(f"{rel}\0{sha256_file(file)}\n".encode())
    return h.hexdigest()


def tool_versions(packages: tuple[str, ...] = TOOL_PACKAGES) -> dict[str, str]:
    """Installed versions of ``packages`` (those not installed are left out)."""
    out = {}
    for pkg in packages:
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out


def load_eval_texts(path: Path = EVAL_SET) -> list[str]:
    return [json.loads(line)["text"] for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _read_work(work_dir: Path) -> dict[str, Any]:
    try:
        return json.loads((Path(work_dir) / WORK_FILE).read_text())
    except FileNotFoundError:
        raise ExportError(f"{work_dir} is not an export folder (no {WORK_FILE}; run `export` first)") from None


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def _write_tokenizer(src: Path, dst: Path, max_length: int) -> None:
    """Save tokenizer.json with truncation at max_length and pad-to-longest, so the runtime
    serves exactly what the gate measured (exported files often pad to a fixed 128)."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(src))
    tok.no_padding()
    tok.enable_truncation(max_length)
    pad_id = tok.token_to_id("[PAD]")
    if pad_id is None:
        pad_id = tok.token_to_id("<pad>")
    tok.enable_padding(pad_id=pad_id or 0, pad_token=tok.id_to_token(pad_id or 0) or "[PAD]")
    tok.save(str(dst))


# ---------------------------------------------------------------- stages

def export(config: ExportConfig, work_dir: Path, *, revision: str | None = None,
           progress: Progress = SILENT) -> dict[str, Any]:
    """Stage 1: optimum export to fp32 ONNX in ``work_dir`` (+ tokenizer, config, work.json)."""
    task = get_task(config.task)
    source_dir, source = resolve_source(config.source, revision, work_dir=work_dir, progress=progress)
    work_dir = ensure_writable_dir(work_dir)
    with progress.stage("export", f"{config.task} from {source['id']}"):
        with tempfile.TemporaryDirectory(prefix="cirrus-export-", dir=work_dir) as tmp:
            try:
                task.export(str(source_dir), Path(tmp), local=True, opset=config.opset)
            except Exception as exc:
                raise ExportError(f"optimum export failed: {exc.__class__.__name__}: "
                                  f"{str(exc).splitlines()[0] if str(exc) else ''}") from None
            max_length = config.max_length or task.default_max_length(source_dir)
            shutil.move(Path(tmp) / FP32_FILE, work_dir / FP32_FILE)
            shutil.copyfile(Path(tmp) / "config.json", work_dir / "config.json")
            tok_src = Path(tmp) / "tokenizer.json"
            if not tok_src.is_file():
                tok_src = source_dir / "tokenizer.json"
            if not tok_src.is_file():
                raise ExportError("the model has no fast tokenizer (tokenizer.json); the runtime needs one")
            _write_tokenizer(tok_src, work_dir / "tokenizer.json", max_length)
    fields = task.manifest_fields(source_dir, work_dir)
    if config.source_id:
        source["id"] = config.source_id
    work = {"name": config.name, "task": config.task, "source": source, "source_dir": str(source_dir),
            "max_length": max_length, "fields": fields, "config": asdict(config),
            "timings": dict(progress.timings), "sizes": {"fp32_bytes": (work_dir / FP32_FILE).stat().st_size}}
    _write_json(work_dir / WORK_FILE, work)
    return work


def quantize_stage(work_dir: Path, qconfig: QuantizeConfig, *, progress: Progress = SILENT) -> dict[str, Any]:
    """Stage 2: int8 file next to the fp32 one (or record that fp32 ships)."""
    from model_export.quantize import quantize

    work = _read_work(work_dir)
    work_dir = Path(work_dir)
    (work_dir / GATE_FILE).unlink(missing_ok=True)  # a new file to ship needs a new gate run
    if qconfig.enabled and qconfig.method == "weight-only":
        from model_export.quantize import weight_only_quantize

        with progress.stage("quantize", f"weight-only MatMulNBits: {qconfig.weight_only.describe()}"):
            excluded = weight_only_quantize(work_dir / FP32_FILE, work_dir / INT8_FILE, qconfig.weight_only)
        work["sizes"]["int8_bytes"] = (work_dir / INT8_FILE).stat().st_size
    elif qconfig.enabled:
        with progress.stage("quantize", f"dynamic int8, {qconfig.preset}, per_channel={qconfig.per_channel}"):
            excluded = quantize(work_dir / FP32_FILE, work_dir / INT8_FILE, qconfig, model_config=work_dir / "config.json")
        work["sizes"]["int8_bytes"] = (work_dir / INT8_FILE).stat().st_size
    else:
        (work_dir / INT8_FILE).unlink(missing_ok=True)
        excluded = []
    work["quantization"] = {"config": asdict(qconfig), "nodes_excluded": excluded}
    work["timings"].update(progress.timings)
    _write_json(work_dir / WORK_FILE, work)
    return work


def shipped_file(work_dir: Path) -> Path:
    """The file the bundle will ship: int8 when quantization ran, else fp32."""
    work = _read_work(work_dir)
    quant = work.get("quantization")
    if quant is None:
        raise ExportError(f"{work_dir}: run `quantize` first (use --no-quantize to ship fp32)")
    return Path(work_dir) / (INT8_FILE if quant["config"]["enabled"] else FP32_FILE)


def validate(work_dir: Path, *, thresholds: list[str] | dict[str, Threshold] | None = None,
             eval_set: Path = EVAL_SET, progress: Progress = SILENT, raise_on_fail: bool = True) -> dict[str, Any]:
    """Stage 3: the accuracy gate on the file that ships. Writes gate.json; raises GateFailed."""
    work = _read_work(work_dir)
    task = get_task(work["task"])
    if isinstance(thresholds, dict):
        rules = thresholds
    else:
        rules = parse_threshold_overrides(thresholds, task.thresholds)
    onnx_path = shipped_file(work_dir)
    source_dir = Path(work["source_dir"])
    texts = load_eval_texts(eval_set) + task.eval_texts(source_dir)
    with progress.stage("validate", f"{onnx_path.name} vs PyTorch on {task.eval_description(texts)}"):
        metrics = task.evaluate(source_dir, onnx_path, Path(work_dir) / "tokenizer.json", texts,
                                {**work["fields"], "max_length": work["max_length"]})
    failed = [f"{k}={metrics[k]:.4f} (need {'>=' if r.higher else '<='} {r.value})"
              for k, r in rules.items() if not r.ok(metrics[k])]
    gate = {"passed": not failed, "metrics": {k: round(v, 6) for k, v in metrics.items()},
            "thresholds": {k: r.value for k, r in rules.items()},
            "file": onnx_path.name, "file_sha256": sha256_file(onnx_path),
            "eval_set": task.eval_set_id(eval_set, texts),
            "failed": failed}
    _write_json(Path(work_dir) / GATE_FILE, gate)
    work["timings"].update(progress.timings)
    _write_json(Path(work_dir) / WORK_FILE, work)
    progress.info("[validate] " + ", ".join(f"{k}={v:.4f}" for k, v in metrics.items() if k != "n_texts")
                  + (" PASSED" if not failed else " FAILED: " + "; ".join(failed)))
    if failed and raise_on_fail:
        raise GateFailed(f"accuracy gate failed: {'; '.join(failed)}", metrics)
    return gate


def bundle(work_dir: Path, out_dir: Path, *, version: str | None = None, force: bool = False,
           extra: dict[str, Any] | None = None, progress: Progress = SILENT) -> Manifest:
    """Stage 4: assemble ``out_dir`` (model.onnx, tokenizer.json, config.json, manifest.json).

    Refuses unless the gate passed for this exact file, or ``force`` (recorded as gate.forced).
    """
    work_dir = Path(work_dir)
    work = _read_work(work_dir)
    onnx_path = shipped_file(work_dir)
    try:
        gate = json.loads((work_dir / GATE_FILE).read_text())
    except FileNotFoundError:
        gate = None
    if gate is not None and gate["file_sha256"] != sha256_file(onnx_path):
        gate = None  # the gate ran on another file: it says nothing about this one
    if not force:
        if gate is None:
            raise ExportError(f"{work_dir}: no gate result for {onnx_path.name}; run `validate` first (or --force)")
        if not gate["passed"]:
            raise GateFailed("refusing to bundle: accuracy gate failed: " + "; ".join(gate["failed"]))
    out_dir = ensure_writable_dir(out_dir)
    with progress.stage("bundle", str(out_dir)):
        shutil.copyfile(onnx_path, out_dir / "model.onnx")
        for name in BUNDLE_FILES:
            shutil.copyfile(work_dir / name, out_dir / name)
        files: dict[str, FileEntry] = {name: file_entry(out_dir / name) for name in ("model.onnx", *BUNDLE_FILES)}
        quant = work["quantization"]
        qcfg = quant["config"]
        qconfig = QuantizeConfig(**{**qcfg, "exclude": tuple(qcfg["exclude"])})
        fields = work["fields"]
        version = version or (datetime.now(timezone.utc).strftime("%Y%m%d") + "-" + files["model.onnx"].sha256[:8])
        manifest = Manifest(
            name=work["name"], version=version, task=work["task"], source=Source(**work["source"]),
            max_length=work["max_length"], pooling=fields.get("pooling", "none"),
            normalize=fields.get("normalize", False), output_name=get_task(work["task"]).output_name,
            labels=fields.get("labels", []),
            quantization=Quantization(mode=qconfig.mode, preset=qconfig.preset,
                                      per_channel=qcfg["per_channel"] if qconfig.mode == "dynamic-int8" else None,
                                      weight_only=asdict(qconfig.weight_only) if qconfig.mode == "weight-only" else None,
                                      nodes_excluded=quant["nodes_excluded"],
                                      exclude_patterns=list(qcfg["exclude"]),
                                      operators=list(qcfg["operators"]) if qcfg["operators"] else None),
            arch=qcfg["arch"], files=files,
            gate=Gate(passed=bool(gate and gate["passed"]), forced=force and not (gate and gate["passed"]),
                      metrics=gate["metrics"] if gate else {}, thresholds=gate["thresholds"] if gate else {},
                      eval_set=gate["eval_set"] if gate else None),
            tools=tool_versions(), created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            generation=fields.get("generation"), sizes=work["sizes"], timings=work["timings"],
            **(extra or {}))
        manifest.write(out_dir)
        verify_bundle(out_dir, manifest)
    return manifest


def build(config: ExportConfig, out_dir: Path, *, version: str | None = None, force: bool = False,
          thresholds: list[str] | dict[str, Threshold] | None = None, revision: str | None = None,
          extra: dict[str, Any] | None = None, progress: Progress = SILENT) -> Manifest:
    """All four stages into ``out_dir``; nothing is left in ``out_dir`` when the gate fails."""
    out_dir = Path(out_dir)
    ensure_writable_dir(out_dir.parent)
    progress = progress.fresh()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix=f".work-{config.name}-", dir=out_dir.parent) as work:
        export(config, Path(work), revision=revision, progress=progress)
        quantize_stage(Path(work), config.quantize, progress=progress)
        validate(Path(work), thresholds=thresholds, progress=progress, raise_on_fail=not force)
        staging = Path(work) / "bundle"
        manifest = bundle(Path(work), staging, version=version, force=force,
                          extra=extra, progress=progress)
        manifest.timings["total"] = round(time.perf_counter() - started, 3)  # type: ignore[attr-defined]
        manifest.write(staging)
        # Swap in whole: readers of out_dir never see a half-written bundle.
        if out_dir.exists():
            old = out_dir.with_name(f".old-{out_dir.name}-{os.getpid()}")
            out_dir.rename(old)
            staging.rename(out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            staging.rename(out_dir)
    return manifest
