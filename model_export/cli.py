"""``python -m model_export <verb>``: export / quantize / validate / bundle / build / publish /
publish-weights / rollback / list / build-defaults. Progress with timings on stderr, ``--json`` result on stdout,
one-line errors and a non-zero exit on bad input."""
from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from pathlib import Path
from typing import Any, Callable

from model_export.config import ARCHES, METHODS, ExportConfig, QuantizeConfig, WeightOnlyConfig
from model_export.errors import ExportError
from model_export.progress import Progress

TASKS_HELP = "feature-extraction, text-classification or text-generation"


class _Parser(argparse.ArgumentParser):
    """argparse that reports bad input on one line (no usage dump) with exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")


def _s3_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bucket", required=True, help="artifacts bucket holding models/<name>/...")
    p.add_argument("--endpoint-url", default=None,
                   help="S3 endpoint (default: AWS_ENDPOINT_URL or AWS); e.g. a moto server")
    p.add_argument("--kms-key-id", default=None, help="KMS key for SSE-KMS (default: the bucket's aws/s3 key)")


def _task_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--task", required=True, help=TASKS_HELP)


def _quant_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--arch", choices=ARCHES, default="x86_64",
                   help="target CPU family, recorded in the manifest (7-bit s8 weights run exactly on both)")
    p.add_argument("--weights", choices=("s8", "u8"), default="s8", help="int8 weight type (activations are u8)")
    p.add_argument("--full-range", action="store_true",
                   help="8-bit instead of 7-bit s8 weights (arm64 / VNNI only: can saturate on AVX2 without VNNI)")
    p.add_argument("--fuse", action="store_true",
                   help="fuse attention, layer norms and GELU (onnxruntime transformer optimizer) before quantizing")
    p.add_argument("--no-quantize", action="store_true", help="ship fp32 (no int8 file)")
    p.add_argument("--per-tensor", action="store_true", help="per-tensor weights (measured worse; see docs)")
    p.add_argument("--exclude", action="append", default=None, metavar="REGEX",
                   help="keep ONNX nodes whose name matches REGEX in fp32 (repeatable; replaces the task default)")
    p.add_argument("--quantize-activation-matmul", action="store_true",
                   help="also quantize activation x activation MatMuls (attention scores; measured worse)")
    p.add_argument("--method", choices=METHODS, default=None,
                   help="dynamic-int8 or weight-only (block-wise MatMulNBits); default: the task's "
                        "(weight-only for text-generation, see docs/quantization.md)")
    p.add_argument("--bits", type=int, choices=(4, 8), default=None, help="weight-only: weight bits (default 4)")
    p.add_argument("--block-size", type=int, default=None, help="weight-only: block size, 16-256 (default 32)")
    p.add_argument("--accuracy-level", type=int, choices=(0, 1, 2, 3, 4), default=None,
                   help="weight-only: MatMulNBits compute type, 4 = int8 activations (default), 0 = fp32")


def _gate_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threshold", action="append", default=None, metavar="METRIC=VALUE",
                   help="override a gate threshold, e.g. mean_cosine=0.995 (repeatable)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="model_export", description=__doc__,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB", parser_class=_Parser)

    p = verbs.add_parser("export", help="export a model (local dir or hub id) to fp32 ONNX in a work folder")
    p.add_argument("source", help="local model directory, .gguf file (dequantized to fp32) or Hugging Face hub id")
    _task_arg(p)
    p.add_argument("--out", required=True, type=Path, help="work folder to create")
    p.add_argument("--name", default=None, help="bundle name (default: the source folder/repo name)")
    p.add_argument("--max-length", type=int, default=None, help="max tokens (default: from the model)")
    p.add_argument("--revision", default=None, help="hub revision")
    p.add_argument("--opset", type=int, default=None, help="ONNX opset (default: optimum's)")

    p = verbs.add_parser("quantize", help="dynamic int8 for the target arch, in a work folder")
    p.add_argument("work", type=Path, help="work folder from `export`")
    _quant_args(p)

    p = verbs.add_parser("validate", help="accuracy gate: PyTorch vs the ONNX file that will ship")
    p.add_argument("work", type=Path, help="work folder from `quantize`")
    _gate_args(p)

    p = verbs.add_parser("bundle", help="assemble a bundle folder (refused unless the gate passed)")
    p.add_argument("work", type=Path, help="work folder from `validate`")
    p.add_argument("--out", required=True, type=Path, help="bundle folder to create")
    p.add_argument("--version", default=None, help="bundle version (default: <date>-<model sha8>)")
    p.add_argument("--force", action="store_true", help="bundle even if the gate failed (recorded)")

    p = verbs.add_parser("build", help="export + quantize + validate + bundle in one go")
    p.add_argument("source", help="local model directory, .gguf file (dequantized to fp32) or Hugging Face hub id")
    _task_arg(p)
    p.add_argument("--out", required=True, type=Path, help="bundle folder to create")
    p.add_argument("--name", default=None, help="bundle name (default: the source folder/repo name)")
    p.add_argument("--max-length", type=int, default=None)
    p.add_argument("--revision", default=None)
    p.add_argument("--version", default=None)
    p.add_argument("--force", action="store_true", help="bundle even if the gate failed (recorded)")
    _quant_args(p)
    _gate_args(p)

    p = verbs.add_parser("publish", help="upload a bundle to S3 (SSE-KMS) and move the current pointer")
    p.add_argument("bundle", type=Path, help="bundle folder")
    _s3_args(p)

    p = verbs.add_parser("publish-weights",
                         help="copy a GPU model folder (safetensors, config, tokenizer) to S3 with recorded "
                              "sha256s, for heavy.model_s3_prefix; prints the heavy.model_manifest_sha256 to pin")
    p.add_argument("folder", type=Path, help="the model folder the TGI / DJL-LMI container loads")
    p.add_argument("--name", required=True, help="registry name, e.g. the served model: qwen2.5-1.5b-instruct")
    p.add_argument("--version", required=True, help="a new version, e.g. the hub revision or a date")
    _s3_args(p)

    p = verbs.add_parser("rollback", help="move a model's current pointer back")
    p.add_argument("name", help="model name")
    p.add_argument("--to", dest="to_version", default=None, help="version to make current (default: previous)")
    _s3_args(p)

    p = verbs.add_parser("list", help="list published models and versions")
    p.add_argument("name", nargs="?", default=None, help="only this model")
    _s3_args(p)

    p = verbs.add_parser("build-defaults", help="build (or reuse) the default bundles")
    p.add_argument("--out", required=True, type=Path, help="folder receiving <name>/ bundles")
    p.add_argument("--only", action="append", default=None, metavar="NAME", help="only this bundle (repeatable)")
    p.add_argument("--rebuild", action="store_true", help="rebuild even when cached")
    p.add_argument("--profile", choices=("accurate", "fast"), default=None,
                   help="quantization profile of the embedding model (default: $CIRRUS_QUANT_PROFILE, "
                        "else accurate); each has its own gate, recorded in the manifest (docs/quantization.md)")

    for sub in verbs.choices.values():
        _common(sub)
    return parser


# ---------------------------------------------------------------- verbs

def _quant_config(args) -> QuantizeConfig:
    from model_export.tasks import get_task

    task = get_task(args.task)
    method = args.method or task.quantize_method
    weight_only = None
    if method == "weight-only":
        defaults = WeightOnlyConfig()
        bits = args.bits or defaults.bits
        # The LM head and the token embedding take the same width as the layers.
        weight_only = WeightOnlyConfig(
            bits=bits, head_bits=bits, embedding_bits=bits, block_size=args.block_size or defaults.block_size,
            accuracy_level=defaults.accuracy_level if args.accuracy_level is None else (args.accuracy_level or None),
            exclude=tuple(args.exclude or ()))
    elif any(v is not None for v in (args.bits, args.block_size, args.accuracy_level)):
        raise ExportError("--bits, --block-size and --accuracy-level apply to --method weight-only")
    exclude = tuple(args.exclude) if args.exclude is not None else task.quantize_exclude
    return QuantizeConfig(enabled=not args.no_quantize, arch=args.arch, per_channel=not args.per_tensor,
                          fp32_activation_matmul=not args.quantize_activation_matmul, exclude=exclude,
                          method=method, weight_only=weight_only,
                          weights=args.weights, reduce_range=not args.full_range, fuse=args.fuse)


def _name(args) -> str:
    from model_export.gguf import is_gguf

    path = Path(args.source.rstrip("/"))
    return args.name or (path.stem if is_gguf(path) else path.name).lower()


def _check_task(task: str) -> None:
    from model_export.tasks import get_task

    get_task(task)  # one-line ExportError naming the tasks there are


def _export(args, progress):
    from model_export import pipeline

    _check_task(args.task)
    config = ExportConfig(source=args.source, task=args.task, name=_name(args), max_length=args.max_length,
                          opset=args.opset)
    work = pipeline.export(config, args.out, revision=args.revision, progress=progress)
    return {"work": str(args.out), "max_length": work["max_length"], **work["fields"],
            "fp32_bytes": work["sizes"]["fp32_bytes"]}


def _quantize(args, progress):
    from model_export import pipeline

    work = pipeline._read_work(args.work)
    args.task = work["task"]
    result = pipeline.quantize_stage(args.work, _quant_config(args), progress=progress)
    return {"work": str(args.work), **result["sizes"], "nodes_excluded": len(result["quantization"]["nodes_excluded"])}


def _validate(args, progress):
    from model_export import pipeline

    gate = pipeline.validate(args.work, thresholds=args.threshold, progress=progress)
    return gate


def _bundle(args, progress):
    from model_export import pipeline

    manifest = pipeline.bundle(args.work, args.out, version=args.version, force=args.force, progress=progress)
    return _manifest_summary(manifest, args.out)


def _build(args, progress):
    from model_export import pipeline

    _check_task(args.task)
    config = ExportConfig(source=args.source, task=args.task, name=_name(args), max_length=args.max_length,
                          quantize=_quant_config(args))
    manifest = pipeline.build(config, args.out, version=args.version, force=args.force,
                              thresholds=args.threshold, revision=args.revision, progress=progress)
    return _manifest_summary(manifest, args.out)


def _publish(args, progress):
    from model_export.publish import publish_bundle

    return publish_bundle(args.bundle, args.bucket, kms_key_id=args.kms_key_id, endpoint_url=args.endpoint_url,
                          progress=progress)


def _publish_weights(args, progress):
    from model_export.publish import publish_weights

    return publish_weights(args.folder, args.bucket, name=args.name, version=args.version,
                           kms_key_id=args.kms_key_id, endpoint_url=args.endpoint_url, progress=progress)


def _rollback(args, progress):
    from model_export.publish import rollback

    return rollback(args.name, args.bucket, to_version=args.to_version, kms_key_id=args.kms_key_id,
                    endpoint_url=args.endpoint_url, progress=progress)


def _list(args, progress):
    from model_export.publish import list_models

    rows = list_models(args.bucket, args.name, endpoint_url=args.endpoint_url)
    if not args.json:
        for r in rows:
            print(f"{'*' if r['current'] else ' '} {r['name']:<28} {r['version']:<24} "
                  f"{r['bytes'] / 1e6:8.1f} MB  {'complete' if r['complete'] else 'INCOMPLETE'}")
    return rows


def _build_defaults(args, progress):
    from model_export.defaults import ensure_default_bundles
    from functions.core.inference.manifest import Manifest

    bundles = ensure_default_bundles(args.out, args.only, rebuild=args.rebuild, profile=args.profile,
                                     progress=progress)
    return {name: _manifest_summary(Manifest.read(path), path) for name, path in bundles.items()}


def _manifest_summary(manifest, path) -> dict[str, Any]:
    extra = manifest.model_extra or {}
    return {"path": str(path), "name": manifest.name, "version": manifest.version, "task": manifest.task,
            "bytes": manifest.files["model.onnx"].bytes, "quantization": manifest.quantization.mode,
            "gate": manifest.gate.model_dump() if manifest.gate else None,
            **{k: extra[k] for k in ("sizes", "timings", "training") if k in extra}}


VERBS: dict[str, Callable[[argparse.Namespace, Progress], Any]] = {
    "export": _export, "quantize": _quantize, "validate": _validate, "bundle": _bundle, "build": _build,
    "publish": _publish, "publish-weights": _publish_weights, "rollback": _rollback, "list": _list, "build-defaults": _build_defaults,
}


def _quiet_libraries() -> None:
    # Exporters warn a lot (tracer, deprecations); progress lines are the CLI's output.
    warnings.filterwarnings("ignore")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    import logging

    for name in ("transformers", "optimum", "onnxruntime", "torch"):
        logging.getLogger(name).setLevel(logging.ERROR)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _quiet_libraries()
    progress = Progress(quiet=args.quiet)
    from functions.core.errors import BundleError

    try:
        result = VERBS[args.verb](args, progress)
    except ExportError as exc:
        print(f"model_export {args.verb}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except BundleError as exc:
        print(f"model_export {args.verb}: error: {exc.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"model_export {args.verb}: interrupted", file=sys.stderr)
        return 130
    if args.json:
        print(json.dumps(result, indent=2, default=str))
    elif args.verb != "list":
        progress.info(json.dumps(result, default=str) if not isinstance(result, dict) else
                      "result: " + ", ".join(f"{k}={v}" for k, v in result.items() if not isinstance(v, (dict, list))))
    return 0
