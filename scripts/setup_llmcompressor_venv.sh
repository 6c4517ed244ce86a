#!/usr/bin/env bash
# Create (or reuse) .venv-llmc: llm-compressor's own environment for bench/bench_llmcompressor.py.
#
# llmcompressor 0.14.0.1 pins torch>=2.10,<=2.14, transformers>=5.15,<=5.17 and
# compressed-tensors==0.19.0, so it cannot share .venv (transformers 5.25). The benchmark runs its
# side (bench/_llmcompressor_side.py) in this venv and evaluates the saved checkpoints in ours.
# hf_compress is NOT installed here: the two tools share nothing but the token windows on disk.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${HF_COMPRESS_LLMC_VENV:-.venv-llmc}
pipq() { "$VENV/bin/python" -m pip install -q --disable-pip-version-check "$@"; }

if [ ! -x "$VENV/bin/python" ]; then
  echo "== creating $VENV (llmcompressor 0.14, transformers 5.17)"
  "$PY" -m venv "$VENV"
fi
# torch first: the CPU wheel on this kind of machine (a plain 'torch' would pull a CUDA build)
pipq "torch==2.13.0"
pipq "llmcompressor==0.14.0.1" "transformers>=5.15,<=5.17"
"$VENV/bin/python" - <<'PY'
import importlib.metadata as md
for dist in ("torch", "transformers", "llmcompressor", "compressed-tensors", "datasets", "accelerate"):
    print(f"  {dist} {md.version(dist)}")
PY
echo "== $VENV ready"
