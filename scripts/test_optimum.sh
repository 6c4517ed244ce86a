#!/usr/bin/env bash
# The [optimum] export tests: set up .venv-optimum (optimum-onnx pins transformers<4.58) and run
#   1. from the main env (.venv, transformers 5.x): tests/export marked `optimum` — the real
#      cross-version flow: portable checkpoint + reference logits under 5.x, Optimum export under 4.57;
#   2. inside .venv-optimum: the export tests in-process (hf_compress importable and working on 4.57).
# Usage: bash scripts/test_optimum.sh [extra pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_optimum_venv.sh
export HF_COMPRESS_OPTIMUM_PYTHON="${HF_COMPRESS_OPTIMUM_PYTHON:-$PWD/.venv-optimum/bin/python}"
unset HF_COMPRESS_SKIP_OPTIMUM

echo "== export tests that cross into the [optimum] env (from .venv)"
.venv/bin/python -m pytest -q -p no:cacheprovider tests/export -m optimum "$@"

echo "== export tests inside the [optimum] env (transformers 4.57)"
.venv-optimum/bin/python - <<'PY'
import importlib, pkgutil, sys
import hf_compress
failed = []
for info in pkgutil.walk_packages(hf_compress.__path__, "hf_compress."):
    try:
        importlib.import_module(info.name)
    except Exception as err:  # report every module that cannot be imported on transformers 4.57
        failed.append(f"{info.name}: {type(err).__name__}: {err}")
print("modules not importable on transformers 4.57:", *(failed or ["none"]), sep="\n  ")
PY
.venv-optimum/bin/python -m pytest -q -p no:cacheprovider tests/export "$@"
