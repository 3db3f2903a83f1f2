"""Build the Lambda zip folders without Docker: `python -m infra.assets [--stage dev] [--arch arm64]`.

Dependencies from requirements-lambda.txt are installed with pip for the Lambda platform
(``--platform manylinux_* --only-binary=:all: --python-version``), trimmed of what inference does
not need, then the ``functions`` package is copied beside them. Two assets:

- ``inference`` (api, batch worker): onnxruntime + tokenizers + numpy + Powertools + pydantic
- ``light`` (authorizer, batch splitter, batch dead-letter handler): Powertools + pydantic only — a
  small zip, fast cold start

Output: ``build/lambda/<arch>/<asset>/`` (what ``Code.from_asset`` takes) and
``build/lambda/<arch>/<asset>.json`` (the build stamp: inputs hash, python version, size).
Nothing is rebuilt when requirements, arch, python version and the functions code are unchanged;
the pip step is cached separately, so a code change only re-copies ``functions``.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from infra.settings import REPO_ROOT, load_stage

BUILD_DIR = REPO_ROOT / "build" / "lambda"
REQUIREMENTS = REPO_ROOT / "requirements-lambda.txt"
FUNCTIONS_SRC = REPO_ROOT / "functions"
LAMBDA_LIMIT_BYTES = 250 * 1024 * 1024   # unzipped code + layers
BUILDER_VERSION = "2"                    # bump when the trim rules change
PLACEHOLDER_MARKER = "CIRRUS_PLACEHOLDER_ASSET"

ASSETS = ("inference", "light")  # which one each function ships in: FunctionSpec.asset (infra/function_specs.py)

# Paths (relative to the install target) that inference never imports. Removing them keeps the
# zip well under the limit and the cold start short.
TRIM_DIRS = (
    "onnxruntime/tools", "onnxruntime/transformers", "onnxruntime/quantization",
    "onnxruntime/datasets", "onnxruntime/backend",
    "numpy/f2py", "numpy/_pyinstaller", "numpy/doc",
    "bin",
)
TRIM_DIR_NAMES = ("__pycache__", "tests", "testing_data")
# botocore ships the models of every AWS service (~80% of its size); the functions call these only.
BOTOCORE_SERVICES = ("s3", "dynamodb", "sqs", "sagemaker-runtime", "sts")
TRIM_SUFFIXES = (".pyc", ".pyi", ".c", ".h", ".pxd", ".map")
# Packages that must never reach a Lambda asset (export-time only). boto3/botocore are packaged (pinned
# in requirements-lambda.txt) rather than taken from the runtime, whose version AWS does not promise:
# the functions use S3 conditional writes (IfNoneMatch), which older runtime SDKs lack.
FORBIDDEN_TOP_LEVEL = ("torch", "transformers", "optimum", "onnx", "sympy", "huggingface_hub", "hf_xet")


class AssetBuildError(RuntimeError):
    """pip failed, the result is over the Lambda size limit, or a forbidden package got in."""


@dataclass(frozen=True)
class AssetReport:
    name: str
    arch: str
    python_version: str
    path: Path
    bytes: int
    rebuilt: bool
    largest: tuple[tuple[str, int], ...]

    def line(self) -> str:
        top = ", ".join(f"{n} {b / 2**20:.0f}" for n, b in self.largest[:4])
        state = "built" if self.rebuilt else "cached"
        return (f"{self.arch:7} {self.name:10} {self.bytes / 2**20:7.1f} MB unzipped  "
                f"({state}; largest MB: {top})")


def requirements_for(asset: str, text: str | None = None) -> list[str]:
    """The pinned requirement lines for one asset (``[inference]`` lines only go to inference)."""
    if asset not in ASSETS:
        raise ValueError(f"unknown asset {asset!r}; expected one of {ASSETS}")
    text = REQUIREMENTS.read_text() if text is None else text
    out = []
    for raw in text.splitlines():
        spec, _, comment = raw.partition("#")
        spec = spec.strip()
        if not spec:
            continue
        if "[inference]" in comment and asset != "inference":
            continue
        out.append(spec)
    return out


def platform_tags(arch: str) -> list[str]:
    """manylinux tags the Lambda AL2023 runtimes (glibc 2.34) load, newest first.

    pip does not widen an explicit ``--platform`` to older glibc tags, so every one is listed.
    """
    machine = {"x86_64": "x86_64", "arm64": "aarch64"}[arch]
    return [f"manylinux_2_{minor}_{machine}" for minor in range(34, 16, -1)] + [f"manylinux2014_{machine}"]


def _tree_hash(root: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
        h.update(str(path.relative_to(root)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def _deps_key(asset: str, arch: str, python_version: str) -> str:
    h = hashlib.sha256()
    for part in (BUILDER_VERSION, asset, arch, python_version, *requirements_for(asset), *platform_tags(arch)):
        h.update(part.encode() + b"\0")
    return h.hexdigest()[:16]


def _trim(root: Path) -> None:
    for rel in TRIM_DIRS:
        shutil.rmtree(root / rel, ignore_errors=True)
    models = root / "botocore" / "data"
    if models.is_dir():
        for service in models.iterdir():
            if service.is_dir() and service.name not in BOTOCORE_SERVICES:
                shutil.rmtree(service)
    for path in sorted(root.rglob("*"), key=lambda p: len(p.parts), reverse=True):
        if path.is_dir() and path.name in TRIM_DIR_NAMES:
            shutil.rmtree(path, ignore_errors=True)
        elif path.is_file() and path.suffix in TRIM_SUFFIXES:
            path.unlink()


def dir_size(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file() and not p.is_symlink())


def _largest(root: Path) -> tuple[tuple[str, int], ...]:
    sizes = [(p.name, dir_size(p) if p.is_dir() else p.stat().st_size) for p in root.iterdir()]
    return tuple(sorted(sizes, key=lambda t: -t[1]))


def _pip_install(asset: str, arch: str, python_version: str, target: Path) -> None:
    req = target.parent / f"{target.name}.requirements.txt"
    req.write_text("\n".join(requirements_for(asset)) + "\n")
    cmd = [sys.executable, "-m", "pip", "install", "--disable-pip-version-check", "--quiet",
           "--no-deps", "--no-compile", "--only-binary=:all:", "--implementation", "cp",
           "--python-version", python_version, "--target", str(target), "-r", str(req)]
    for tag in platform_tags(arch):
        cmd += ["--platform", tag]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    req.unlink(missing_ok=True)
    if proc.returncode != 0:
        raise AssetBuildError(f"pip could not install the {asset} dependencies for {arch}/py{python_version}:\n"
                              f"{proc.stderr.strip()[-3000:]}")


def _deps_dir(asset: str, arch: str, python_version: str, out: Path) -> Path:
    """Install + trim the dependencies once per inputs hash; later calls reuse the folder."""
    key = _deps_key(asset, arch, python_version)
    cached = out / ".deps" / arch / f"{asset}-py{python_version}-{key}"
    if cached.is_dir():
        return cached
    cached.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{asset}-", dir=cached.parent))
    try:
        _pip_install(asset, arch, python_version, tmp)
        _trim(tmp)
        tmp.rename(cached)   # atomic: a half-installed folder is never taken for a cache hit
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    for stale in cached.parent.glob(f"{asset}-py*"):
        if stale != cached:
            shutil.rmtree(stale, ignore_errors=True)
    return cached


def forbidden_packages(root: Path) -> list[str]:
    return sorted(name for name in FORBIDDEN_TOP_LEVEL if (root / name).exists())


def stamp_path(asset: str, arch: str, out: Path = BUILD_DIR) -> Path:
    return out / arch / f"{asset}.json"


def asset_dir(asset: str, arch: str, out: Path = BUILD_DIR) -> Path:
    return out / arch / asset


def read_stamp(asset: str, arch: str, out: Path = BUILD_DIR) -> dict | None:
    path = stamp_path(asset, arch, out)
    return json.loads(path.read_text()) if path.is_file() else None


def build_asset(asset: str, arch: str, python_version: str, *, out: Path = BUILD_DIR,
                force: bool = False) -> AssetReport:
    """Build (or reuse) ``out/<arch>/<asset>/``; raise AssetBuildError when it is unusable."""
    if arch not in ("x86_64", "arm64"):
        raise ValueError(f"arch must be x86_64 or arm64, got {arch!r}")
    target = asset_dir(asset, arch, out)
    inputs = {"deps": _deps_key(asset, arch, python_version), "functions": _tree_hash(FUNCTIONS_SRC),
              "python_version": python_version, "arch": arch}
    stamp = read_stamp(asset, arch, out)
    if not force and stamp and stamp.get("inputs") == inputs and target.is_dir():
        return AssetReport(asset, arch, python_version, target, stamp["bytes"], False,
                           tuple(tuple(x) for x in stamp["largest"]))
    if force:
        shutil.rmtree(out / ".deps" / arch, ignore_errors=True)
    deps = _deps_dir(asset, arch, python_version, out)
    stamp_path(asset, arch, out).unlink(missing_ok=True)
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(deps, target, symlinks=False)
    shutil.copytree(FUNCTIONS_SRC, target / "functions",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "tests"))
    bad = forbidden_packages(target)
    if bad:
        raise AssetBuildError(f"{asset}/{arch} asset contains export-time or runtime-provided packages: {bad}")
    size = dir_size(target)
    if size >= LAMBDA_LIMIT_BYTES:
        raise AssetBuildError(f"{asset}/{arch} asset is {size / 2**20:.0f} MB unzipped; Lambda allows 250 MB")
    largest = _largest(target)
    stamp_path(asset, arch, out).write_text(json.dumps(
        {"inputs": inputs, "bytes": size, "largest": [list(x) for x in largest[:8]]}, indent=1))
    return AssetReport(asset, arch, python_version, target, size, True, largest)


def write_placeholder(root: Path) -> dict[str, Path]:
    """A tiny stand-in for every asset, for `cdk synth` in tests ONLY (no dependencies inside).

    It holds the real ``functions`` code and a marker file so nobody mistakes it for a deployable
    asset; ``infra.app`` refuses it unless the placeholder switch is set explicitly.
    """
    out = {}
    for asset in ASSETS:
        d = root / asset
        if not d.is_dir():
            shutil.copytree(FUNCTIONS_SRC, d / "functions",
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "tests"))
            (d / PLACEHOLDER_MARKER).write_text("placeholder for synth in tests; not deployable\n")
        out[asset] = d
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m infra.assets", description=__doc__.splitlines()[0])
    parser.add_argument("--stage", default=os.environ.get("STAGE"),
                        help="take arch and python version from this stage in cdk.json (default: context 'stage')")
    parser.add_argument("--arch", choices=("x86_64", "arm64"), help="override the stage's architecture")
    parser.add_argument("--asset", choices=(*ASSETS, "all"), default="all")
    parser.add_argument("--out", type=Path, default=BUILD_DIR)
    parser.add_argument("--force", action="store_true", help="rebuild even when inputs are unchanged")
    args = parser.parse_args(argv)
    stage = load_stage(args.stage)
    arch = args.arch or stage.architecture
    try:
        for asset in (ASSETS if args.asset == "all" else (args.asset,)):
            print(build_asset(asset, arch, stage.python_version, out=args.out, force=args.force).line(), flush=True)
    except AssetBuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
