#!/usr/bin/env bash
# Create (or reuse) .venv-optimum: the `[optimum]` environment for ONNX export through Optimum.
#
# Every optimum-onnx release pins transformers<4.58 and optimum~=2.1, so Optimum's ONNX export
# (ORTModelForCausalLM, main_export, ORTQuantizer) only runs next to transformers 4.57.x. This
# environment holds exactly that stack plus the project (installed --no-deps: its own pins ask for
# the newest transformers) and the few runtime packages hf_compress needs there.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${HF_COMPRESS_OPTIMUM_VENV:-.venv-optimum}
pipq() { "$VENV/bin/python" -m pip install -q --disable-pip-version-check "$@"; }

if [ ! -x "$VENV/bin/python" ]; then
  echo "== creating $VENV (optimum-onnx, transformers 4.57)"
  "$PY" -m venv "$VENV"
fi
# torch first: the CPU wheel on this kind of machine (a plain 'torch' would pull a CUDA build)
pipq "torch==2.13.0"
# optimum-onnx brings optimum~=2.1 and transformers<4.58; onnxruntime is its [onnxruntime] extra
pipq "optimum-onnx[onnxruntime]" "transformers>=4.57,<4.58"
# what hf_compress itself imports at run time (no trl / peft / datasets: imported lazily)
pipq "huggingface_hub" "safetensors" "accelerate" "pyyaml" "tqdm" "jinja2" "packaging" "greenlet" "pytest"
pipq -e . --no-deps
"$VENV/bin/python" - <<'PY'
import importlib.metadata as md
for dist in ("torch", "transformers", "optimum", "optimum-onnx", "onnx", "onnxruntime", "huggingface_hub"):
    print(f"  {dist} {md.version(dist)}")
PY
echo "== $VENV ready"
