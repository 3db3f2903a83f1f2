#!/usr/bin/env bash
# Install the benchmark's peer systems (fastembed, sentence-transformers) into .cache/bench-peers.
# --no-deps: what they share with Cirrus (onnxruntime, tokenizers, numpy, torch, transformers,
# optimum) stays the venv's pinned version, and the venv itself is never touched.
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=.cache/bench-peers
want=$(sha256sum bench/requirements-peers.txt | cut -c1-16)
if [ -f "$DIR/.stamp" ] && [ "$(cat "$DIR/.stamp")" = "$want" ]; then
  exit 0
fi
echo "==> installing benchmark peers into $DIR (bench/requirements-peers.txt)"
rm -rf "$DIR"
.venv/bin/python -m pip --disable-pip-version-check install -q --no-deps --target "$DIR" -r bench/requirements-peers.txt
echo "$want" > "$DIR/.stamp"
