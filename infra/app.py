"""CDK app entry (`npx cdk synth -c stage=dev`): one Cirrus stack per selected stage, cdk-nag checked."""
from __future__ import annotations

import os

os.environ.setdefault("JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION", "20")

from pathlib import Path  # noqa: E402

from aws_cdk import App, Environment, Validations  # noqa: E402
from cdk_nag import AwsSolutionsChecks, ServerlessChecks  # noqa: E402

from infra import assets as lambda_assets  # noqa: E402
from functions.core.inference.manifest import Manifest  # noqa: E402
from infra.constructs.artifacts import Bundle  # noqa: E402
from infra.settings import (REPO_ROOT, STAGE_CONTEXT_KEY, STAGES_CONTEXT_KEY, StageSettings,  # noqa: E402
                            StageSettingsError, parse_stage, read_context)
from infra.stack import CirrusStack  # noqa: E402

# Context switches, for tests and CI only (`-c cirrus:placeholder_assets=true`).
PLACEHOLDER_ASSETS = "cirrus:placeholder_assets"   # synth with tiny non-deployable Lambda folders
SKIP_BUNDLES = "cirrus:skip_bundles"               # synth without uploading .cache/bundles


def _flag(app: App, name: str) -> bool:
    return str(app.node.try_get_context(name)).lower() in ("true", "1", "yes")


def resolve_assets(stage: StageSettings, *, placeholder: bool, build_dir: Path = lambda_assets.BUILD_DIR) -> dict[str, Path]:
    """The built asset folders for the stage's arch; a clear error when missing or stale."""
    if placeholder:
        return lambda_assets.write_placeholder(build_dir / "placeholder")
    out = {}
    for name in lambda_assets.ASSETS:
        stamp = lambda_assets.read_stamp(name, stage.architecture, build_dir)
        folder = lambda_assets.asset_dir(name, stage.architecture, build_dir)
        if stamp is None or not folder.is_dir():
            raise StageSettingsError(
                f"the {name} Lambda asset for {stage.architecture} is not built: run `make lambda-assets` "
                f"(python -m infra.assets --stage {stage.name})")
        if stamp["inputs"]["python_version"] != stage.python_version:
            raise StageSettingsError(
                f"the {name} asset was built for python {stamp['inputs']['python_version']} but stage "
                f"{stage.name} runs python{stage.python_version}: rebuild with `python -m infra.assets --stage {stage.name}`")
        out[name] = folder
    return out


def resolve_bundles(stage: StageSettings, *, skip: bool) -> list[Bundle]:
    if skip or not stage.upload_bundles:
        return []
    root = (REPO_ROOT / stage.bundles_dir).resolve()
    missing = [m for m in stage.models if not (root / m / "manifest.json").is_file()]
    if missing:
        raise StageSettingsError(
            f"stage {stage.name} uploads bundles {missing} but {root} lacks them: run `make bundles`, "
            f"or set upload_bundles: false for the stage (then publish with model_export)")
    mismatched = [f"{m} ({got})" for m in stage.models
                  if (got := _profile_of(root / m)) not in (None, stage.quantization_profile)]
    if mismatched:
        raise StageSettingsError(
            f"stage {stage.name} deploys quantization_profile {stage.quantization_profile!r} but {root} holds "
            f"bundles built in another profile: {', '.join(mismatched)}; run "
            f"`make bundles PROFILE={stage.quantization_profile}` (or `make deploy STAGE={stage.name}`)")
    return [Bundle.read(root / m) for m in stage.models]


def _profile_of(bundle_dir: Path) -> str | None:
    """The quantization profile a bundle's manifest records; None for models built without profiles."""
    profile = (Manifest.read(bundle_dir).model_extra or {}).get("profile")
    return profile.get("name") if isinstance(profile, dict) else None


def build_app(*, stages: list[str] | None = None, context: dict | None = None, outdir: str | None = None) -> App:
    """Build the app. ``stages``: which stacks (default: the context's ``stage``, else dev)."""
    if "CDK_CONTEXT_JSON" not in os.environ:
        # Run directly (tests, `python -m infra.app`), not by the CLI: apply cdk.json's context
        # (stages and feature flags) ourselves so both ways synthesize the same template.
        context = {**read_context(), **(context or {})}
    app = App(outdir=outdir, context=context)
    all_stages = app.node.try_get_context(STAGES_CONTEXT_KEY) or {}
    names = stages or [app.node.try_get_context(STAGE_CONTEXT_KEY) or "dev"]
    placeholder = _flag(app, PLACEHOLDER_ASSETS)
    skip_bundles = _flag(app, SKIP_BUNDLES)
    for name in names:
        stage = parse_stage(all_stages, name)
        env = Environment(account=stage.account or os.environ.get("CDK_DEFAULT_ACCOUNT"),
                          region=stage.region or os.environ.get("CDK_DEFAULT_REGION"))
        CirrusStack(app, stage.stack_name, stage=stage, env=env,
                    assets=resolve_assets(stage, placeholder=placeholder),
                    bundles=resolve_bundles(stage, skip=skip_bundles))
    Validations.of(app).add_plugins(AwsSolutionsChecks(app), ServerlessChecks(app))
    return app


def main() -> None:
    try:
        app = build_app()
    except StageSettingsError as exc:
        raise SystemExit(f"error: {exc}") from None
    app.synth()


if __name__ == "__main__":
    main()
