"""The S3 prefixes the functions hard-code (they ship without infra/) equal infra.resources.RESOURCES'."""
from __future__ import annotations

import pytest

from functions.core import model_store
from functions.core.batch import jobs
from functions.core.generation import service
from infra.resources import RESOURCES
from local.config import JOBS_INPUT_SUFFIX


@pytest.mark.parametrize(("in_functions", "in_resources"), [
    (model_store.MODELS_PREFIX, RESOURCES.models_prefix),
    (jobs.INPUT_PREFIX, RESOURCES.jobs_input_prefix),
    (jobs.WORK_PREFIX, RESOURCES.jobs_work_prefix),
    (jobs.OUTPUT_PREFIX, RESOURCES.jobs_output_prefix),
    (service.JOBS_PREFIX, RESOURCES.jobs_generation_prefix),
], ids=["models", "jobs-input", "jobs-work", "jobs-output", "jobs-generation"])
def test_function_prefix_equals_the_stacks(in_functions, in_resources):
    assert in_functions == in_resources


def test_batch_input_suffix_is_the_one_the_local_notifications_filter_on():
    assert jobs.INPUT_SUFFIX == JOBS_INPUT_SUFFIX == ".jsonl"
