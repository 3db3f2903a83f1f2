"""The Lambda zip folders built without Docker: torch-free, under 250 MB, every import satisfied, cached."""
from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import pytest

from infra import assets
from infra.function_specs import FUNCTIONS
from infra.settings import load_stage

REPO = Path(__file__).resolve().parents[2]
# What the Lambda Python runtime provides besides the standard library: nothing the functions rely on
# (boto3/botocore are packaged, pinned, so the SDK in AWS is the one the tests ran).
RUNTIME_PROVIDED: set[str] = set()


@pytest.fixture(scope="session")
def built(tmp_path_factory) -> dict[str, assets.AssetReport]:
    """The real assets for the dev stage (PyPI downloads the first time; cached in build/lambda)."""
    stage = load_stage("dev")
    return {name: assets.build_asset(name, stage.architecture, stage.python_version) for name in assets.ASSETS}


@pytest.mark.slow
def test_assets_hold_no_export_time_packages_and_fit_lambda(built):
    for name, report in built.items():
        assert assets.forbidden_packages(report.path) == [], name
        assert not any((report.path / p).exists() for p in ("torch", "transformers", "optimum")), name
        assert report.bytes == assets.dir_size(report.path) < assets.LAMBDA_LIMIT_BYTES, name
        assert (report.path / "functions" / "handlers").is_dir()
        assert not list(report.path.rglob("__pycache__"))
    assert (built["inference"].path / "onnxruntime" / "capi").is_dir()
    assert not (built["inference"].path / "onnxruntime" / "transformers").exists()   # trimmed
    assert not (built["light"].path / "onnxruntime").exists()
    assert built["light"].bytes < built["inference"].bytes / 5


@pytest.mark.slow
def test_asset_wheels_match_the_lambda_python_and_glibc(built):
    stage = load_stage("dev")
    py = "cp" + stage.python_version.replace(".", "")
    for report in built.values():
        for wheel in report.path.glob("*.dist-info/WHEEL"):
            for tag in (line.split(": ", 1)[1] for line in wheel.read_text().splitlines() if line.startswith("Tag: ")):
                interp, abi, plat = tag.split("-")
                if plat == "any":
                    continue   # pure Python
                assert abi in (py, "abi3") and int(interp[2:]) <= int(py[2:]), (wheel, tag)
                machine = {"x86_64": "x86_64", "arm64": "aarch64"}[stage.architecture]
                assert plat.endswith(machine), (wheel, tag)
                glibc = re.match(r"manylinux_2_(\d+)_", plat)
                assert glibc is None or int(glibc.group(1)) <= 34, (wheel, tag)   # AL2023: glibc 2.34


def _import_time_nodes(tree: ast.AST):
    """The nodes that run when the module is imported: not function bodies (imports made lazily, on
    first use) and not ``if TYPE_CHECKING:`` blocks."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                continue
            if isinstance(child, ast.If) and isinstance(child.test, ast.Name) and child.test.id == "TYPE_CHECKING":
                continue
            stack.append(child)


def _third_party_imports(module: str, seen: set[str]) -> set[str]:
    """Non-stdlib imports that importing ``module`` loads, followed through the functions package."""
    path = REPO / (module.replace(".", "/") + ".py")
    if not path.exists():
        path = REPO / module.replace(".", "/") / "__init__.py"
    if module in seen or not path.exists():
        return set()
    seen.add(module)
    found: set[str] = set()
    for node in _import_time_nodes(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        for name in names:
            top = name.split(".")[0]
            if top == "functions":
                found |= _third_party_imports(name, seen)
            elif top not in sys.stdlib_module_names and top != "__future__":
                found.add(top)
    return found


@pytest.mark.slow
@pytest.mark.parametrize("spec", FUNCTIONS, ids=lambda s: s.id)
def test_each_function_asset_satisfies_every_import_of_its_handler(built, spec):
    module = spec.handler.rsplit(".", 1)[0]
    assert (REPO / (module.replace(".", "/") + ".py")).exists(), f"{spec.handler} is missing"
    asset = built[spec.asset].path
    missing = {m for m in _third_party_imports(module, set()) - RUNTIME_PROVIDED
               if not (asset / m).exists() and not (asset / f"{m}.py").exists()}
    assert missing == set(), f"{spec.id} imports {missing}, absent from its asset"


def test_requirements_split_between_assets():
    inference, light = assets.requirements_for("inference"), assets.requirements_for("light")
    assert set(light) < set(inference)
    assert any(r.startswith("onnxruntime==") for r in inference) and not any(r.startswith("onnxruntime") for r in light)
    assert all("==" in r for r in inference), "requirements-lambda.txt must pin every package"


@pytest.mark.slow
def test_unchanged_inputs_are_not_rebuilt(built):
    stage = load_stage("dev")
    again = assets.build_asset("light", stage.architecture, stage.python_version)
    assert again.rebuilt is False and again.bytes == built["light"].bytes


def test_only_the_functions_that_run_models_take_the_inference_asset():
    """The splitter and dead-letter handler only read manifests (the model store imports onnxruntime on
    first load), so they ship in the small asset; the API, the generation function and the worker run models."""
    by_asset = {spec.id: spec.asset for spec in FUNCTIONS}
    assert by_asset == {"api": "inference", "generation": "inference", "authorizer": "light", "batch_splitter": "light",
                        "batch_worker": "inference", "batch_dlq": "light"}
    for spec in FUNCTIONS:
        heavy = _third_party_imports(spec.handler.rsplit(".", 1)[0], set()) & {"onnxruntime", "numpy", "tokenizers"}
        assert bool(heavy) == (spec.asset == "inference"), (spec.id, heavy)


@pytest.mark.slow
def test_assets_carry_the_pinned_sdk_with_the_models_of_the_services_used(built):
    import re

    pins = dict(re.findall(r"^(boto3|botocore)==(\S+)", assets.REQUIREMENTS.read_text(), re.M))
    for name, report in built.items():
        for pkg, version in pins.items():
            dist = list(report.path.glob(f"{pkg}-{version}.dist-info"))
            assert dist, f"{name}: {pkg}=={version} not in the asset"
        services = {p.name for p in (report.path / "botocore" / "data").iterdir() if p.is_dir()}
        assert services == set(assets.BOTOCORE_SERVICES), name
