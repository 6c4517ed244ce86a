#!/usr/bin/env bash
# Create (or reuse) the virtualenvs: .venv (newest transformers 5.x, the project) and
# .venv457 (transformers 4.57, for the cross-version checks every written checkpoint must pass).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
pipq() { "$1" -m pip install -q --disable-pip-version-check "${@:2}"; }

if [ ! -x .venv/bin/python ]; then
  echo "== creating .venv"
  "$PY" -m venv .venv
fi
# torch first: the CPU wheel on this kind of machine (a plain 'torch' would pull a CUDA build)
pipq .venv/bin/python "torch==2.13.0"
pipq .venv/bin/python -e ".[dev]"

if [ "${HF_COMPRESS_SKIP_COMPAT:-0}" != "1" ]; then
  if [ ! -x .venv457/bin/python ]; then
    echo "== creating .venv457 (transformers 4.57)"
    "$PY" -m venv .venv457
  fi
  pipq .venv457/bin/python "torch==2.13.0"
  pipq .venv457/bin/python "transformers==4.57.*" gguf safetensors accelerate pyyaml tqdm greenlet
fi
echo "== environments ready"
