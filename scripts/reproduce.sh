#!/usr/bin/env bash
# Reproduce the whole study on the embedded model and data: BiPO and CAA per behavior, evaluation
# over multipliers, the matched-cost comparison (with RePS and PCA), layer sweep, cosines, logit lens,
# composition, transfer (other layers, a fine-tuned copy, LoRA fine-tunes), refusal and jailbreak
# templates, truthfulness on TruthfulQA ($TRUTHFULQA, default ../shared/data/truthfulqa/mc_task_dev.json,
# when it exists), then every figure.
#
#   scripts/reproduce.sh            # the full study into results/full/ and figures/ (hours on a CPU)
#   scripts/reproduce.sh --quick    # smoke test into results/quick/ (figures in results/quick/figures/)
#
# Extra arguments go to `workbench reproduce` (e.g. --behaviors power-seeking --force).
# Finished stages are skipped on a re-run, and trained vectors are reused.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 MPLBACKEND=Agg
PY=${PYTHON:-.venv/bin/python}
if [[ " $* " == *" --quick "* ]]; then
    out=results/quick figs=results/quick/figures
else
    out=results/full figs=figures
fi
# the truthfulness stage reads TruthfulQA from a path (public data, never copied into the project)
tqa=${TRUTHFULQA:-../shared/data/truthfulqa/mc_task_dev.json}
extra=(); [ -f "$tqa" ] && extra=(--truthfulqa "$tqa")
exec "$PY" -m workbench -v reproduce --out "$out" --figures "$figs" "${extra[@]}" "$@"
