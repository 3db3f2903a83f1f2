"""The model_export CLI on bad input: one line on stderr, a non-zero exit, nothing half-done."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from model_export.cli import VERBS, build_parser

REPO = Path(__file__).resolve().parents[2]


def cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, "-m", "model_export", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)


def assert_one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "error" in lines[0] and all(n in lines[0] for n in needles), lines[0]
    assert "Traceback" not in proc.stderr


def test_missing_model_dir_is_a_one_line_error(tmp_path):
    proc = cli("export", str(tmp_path / "nope"), "--task", "feature-extraction", "--out", str(tmp_path / "w"))
    assert_one_line_error(proc, "model directory not found", "nope")
    assert not (tmp_path / "w").exists()


def test_unknown_task_is_a_one_line_error(tmp_path):
    proc = cli("build", str(tmp_path), "--task", "image-segmentation", "--out", str(tmp_path / "b"))
    assert_one_line_error(proc, "unknown task 'image-segmentation'", "feature-extraction")


def test_unwritable_out_dir_is_a_one_line_error(tmp_path):
    from model_export.defaults import default_model_dir

    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    proc = cli("export", str(default_model_dir()), "--task", "feature-extraction", "--out", str(blocker / "sub"))
    assert_one_line_error(proc, "cannot write to", str(blocker / "sub"))


def test_folder_without_config_is_rejected(tmp_path):
    proc = cli("export", str(tmp_path), "--task", "feature-extraction", "--out", str(tmp_path / "w"))
    assert_one_line_error(proc, "has no config.json")


@pytest.mark.parametrize("args, needle", [
    (["frobnicate"], "invalid choice"),
    (["export", "x"], "--task"),
    (["quantize", "w", "--arch", "sparc"], "invalid choice: 'sparc'"),
    (["publish", "b"], "--bucket"),
])
def test_argument_errors_are_one_line_with_exit_2(args, needle):
    proc = cli(*args)
    assert proc.returncode == 2
    assert_one_line_error(proc, needle)


def test_stage_on_a_folder_that_is_not_an_export_says_what_to_run(tmp_path):
    proc = cli("validate", str(tmp_path))
    assert_one_line_error(proc, "is not an export folder", "run `export` first")


def test_bad_threshold_names_the_known_metrics(tmp_path):
    from model_export.config import parse_threshold_overrides
    from model_export.errors import ExportError
    from model_export.tasks import get_task

    defaults = get_task("feature-extraction").thresholds
    assert parse_threshold_overrides(["p1_cosine=0.98"], defaults)["p1_cosine"].value == 0.98
    with pytest.raises(ExportError, match="expected one of mean_cosine, nn_agreement, p1_cosine"):
        parse_threshold_overrides(["accuracy=0.9"], defaults)
    with pytest.raises(ExportError, match="is not a number"):
        parse_threshold_overrides(["p1_cosine=high"], defaults)


def test_publish_of_a_missing_bundle_is_a_one_line_error(tmp_path):
    proc = cli("publish", str(tmp_path / "none"), "--bucket", "b", "--endpoint-url", "http://127.0.0.1:9")
    assert_one_line_error(proc, "bundle has no manifest.json")


def test_every_verb_has_help():
    parser = build_parser()
    verbs = parser._subparsers._group_actions[0].choices  # noqa: SLF001  (argparse has no public accessor)
    assert set(verbs) == set(VERBS)
    for name, sub in verbs.items():
        text = sub.format_help()
        assert "--json" in text and "usage:" in text, name
    proc = cli("build-defaults", "--help")
    assert proc.returncode == 0 and "--out" in proc.stdout


@pytest.mark.parametrize("quiet", [False, True])
def test_a_hub_download_is_a_progress_stage_with_the_hub_bars_unless_quiet(tmp_path, monkeypatch, capsys, quiet):
    import huggingface_hub
    from huggingface_hub.utils import are_progress_bars_disabled

    from model_export.pipeline import resolve_source
    from model_export.progress import Progress

    snap = tmp_path / "snap"
    snap.mkdir()
    (snap / "config.json").write_text("{}")
    seen = {}

    def fake_download(repo_id, revision=None):
        seen["bars_off"] = are_progress_bars_disabled()
        return str(snap)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_download)
    path, source = resolve_source("org/model", "abc123", progress=Progress(quiet=quiet))
    assert path == snap and source["id"] == "org/model" and source["revision"] == "abc123"
    assert seen["bars_off"] is quiet
    err = capsys.readouterr().err
    if quiet:
        assert err == ""
    else:
        assert "[download] start org/model@abc123 from the Hugging Face hub" in err and "[download] done in" in err
