#!/usr/bin/env bash
# Set up from scratch and run the whole test suite: fast tests on tiny models, slow tests on the real
# SmolLM2-135M / all-MiniLM-L6-v2, the transformers 4.57 cross-version checks and the Optimum export tests.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
bash scripts/setup_optimum_venv.sh
export HF_COMPRESS_COMPAT_PYTHON="${HF_COMPRESS_COMPAT_PYTHON:-$PWD/.venv457/bin/python}"
export HF_COMPRESS_OPTIMUM_PYTHON="${HF_COMPRESS_OPTIMUM_PYTHON:-$PWD/.venv-optimum/bin/python}"
.venv/bin/ruff check hf_compress tests bench scripts
.venv/bin/python -m pytest -q -p no:cacheprovider "$@"
