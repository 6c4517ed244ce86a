#!/usr/bin/env bash
# Set up from scratch and run the whole test suite (fast tests + slow real-model tests).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
export HF_COMPRESS_COMPAT_PYTHON="${HF_COMPRESS_COMPAT_PYTHON:-$PWD/.venv457/bin/python}"
.venv/bin/ruff check hf_compress tests bench scripts
.venv/bin/python -m pytest -q -p no:cacheprovider "$@"
