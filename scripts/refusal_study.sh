#!/usr/bin/env bash
# Refusal and jailbreak steering on the embedded model (issue #17, part 1): BiPO and CAA at layer 14
# on the 48 embedded training requests (a stock refusal against the affirmative opening), then the
# refusal rate and the likelihood signal on the 12 held-out requests at multipliers -2..2, plain and
# wrapped in two jailbreak templates. Writes results/refusal/ (vectors, refusal.json) and its figure.
#
#   scripts/refusal_study.sh                 # the embedded requests
#   DATA=../shared/data/advbench/harmful_behaviors_dev.csv scripts/refusal_study.sh results/refusal-advbench
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 MPLBACKEND=Agg
PY=${PYTHON:-.venv/bin/python}
out=${1:-results/refusal}
if [ -n "${DATA:-}" ]; then
    data=(--data "$DATA" --format advbench --test-fraction 0.2 --split-seed 0)
    # --no-text: the public requests and the model's answers to them stay out of the result JSON
    train=("${data[@]}" --limit "${TRAIN:-160}"); test=("${data[@]}" --limit "${TEST:-40}" --no-text)
else
    train=(--behavior refusal); test=()
fi
"$PY" -m workbench train --method bipo --layer 14 "${train[@]}" --out "$out/vectors/bipo"
"$PY" -m workbench train --method caa --layer 14 "${train[@]}" --out "$out/vectors/caa"
"$PY" -m workbench refusal --vector "$out/vectors/bipo" --vector "$out/vectors/caa" "${test[@]}" \
    --templates none,refusal_suppression,persona --multipliers -2 -1 0 1 2 --out "$out/refusal.json"
"$PY" -m workbench figures --results "$out" --out "$out/figures"
