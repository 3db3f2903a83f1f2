"""Settings.env() is read back by Settings.from_env() unchanged (the local system relies on it)."""
from __future__ import annotations

from functions.core.settings import Settings


def test_env_round_trips_empty_and_filled_lists():
    for settings in (Settings(), Settings(models=[], heavy_models=[], generation_models=[]),
                     Settings(models=["a", "b"], heavy_models=["h"], artifacts_bucket="bucket")):
        assert Settings.from_env(settings.env()) == settings


def test_empty_scalar_variable_still_means_unset():
    assert Settings.from_env({"CIRRUS_DATA_BUCKET": ""}).data_bucket is None


def test_functions_generate_on_lambda_with_no_model_unless_the_stage_names_one():
    # The shipped cirrus-tiny-gpt2 has random weights: only a stage (dev, the local system) opts in.
    assert Settings.from_env({}).generation_models == []
