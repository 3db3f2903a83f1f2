# Cirrus task runner. `make help` lists the targets.
PY := .venv/bin/python
export JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION := 20
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: help setup bundles local test test-unit test-integration test-infra synth lambda-assets deploy bench bench-peers bench-streaming clean

help:  ## list targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-18s %s\n", $$1, $$2}'

setup:  ## create .venv with pinned deps (no-op when up to date)
	@bash scripts/setup.sh

bundles: setup  ## export + gate the default bundles into .cache/bundles (cached; PROFILE=accurate|fast)
	$(PY) -m model_export build-defaults --out .cache/bundles $(if $(PROFILE),--profile $(PROFILE))

local: setup  ## run the whole of Cirrus on this machine (no AWS account)
	$(PY) -m local up

test: setup  ## run every test (unit, integration, infra)
	$(PY) -m pytest

test-unit: setup  ## unit tests only
	$(PY) -m pytest tests/unit

test-integration: setup  ## integration tests (moto server, local gateway, real model)
	$(PY) -m pytest tests/integration

test-infra: setup  ## CDK synth + cdk-nag + cfn-lint tests
	$(PY) -m pytest tests/infra

lambda-assets: setup  ## build the Lambda zip folders (no Docker) into build/lambda
	$(PY) -m infra.assets

synth: setup lambda-assets  ## cdk synth, offline
	npx cdk synth --quiet

deploy: setup lambda-assets  ## cdk deploy to your AWS account (STAGE=dev|prod); bundles in the stage's quantization_profile
	$(PY) -m model_export build-defaults --out .cache/bundles --profile \
		$$($(PY) -c "from infra.settings import load_stage; print(load_stage('$${STAGE:-dev}').quantization_profile)")
	npx cdk deploy --all -c stage=$${STAGE:-dev}

bench-peers: setup  ## install the peers the benchmark compares against (bench-only, .cache/bench-peers)
	@bash scripts/bench-peers.sh

bench: setup bundles bench-peers  ## run the benchmarks against the peers, write bench/results
	$(PY) -m bench

bench-streaming: setup bundles  ## time to first token vs full answer, streamed vs buffered (bench/results/streaming.*)
	$(PY) -m bench.streaming

clean:  ## remove build outputs (keeps .venv)
	rm -rf build cdk.out .cache .pytest_cache
