#!/usr/bin/env bash
# BiPO and CAA on one of BiPO's public CSVs (default: ../shared/data/bipo/power-seeking/train.csv),
# evaluated on a held-out part of the same file that neither vector saw (issue #4's table).
#
#   scripts/public_bipo_csv.sh [CSV] [OUT_DIR]      # default OUT_DIR: results/public-power-seeking
#
# The file is split by question (seed 0, 20 % held out); training uses the first $TRAIN (200) pairs
# of the train part, evaluation the first $TEST (100) of the held-out part. Metrics: preference
# log-odds (mean, bootstrap 95 % CI, win rate) and utility (perplexity, top-1 agreement, KL) at
# multipliers -2..2; then open-ended generation at -2, 0, 2 on the first $OPEN (50) held-out questions,
# scored by the likelihood judge, with the judge's validation. Prints the tables; writes vectors,
# eval.json and open.json under OUT_DIR.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
PY=${PYTHON:-.venv/bin/python}
csv=${1:-../shared/data/bipo/power-seeking/train.csv}
out=${2:-results/public-power-seeking}
split=(--data "$csv" --format bipo-csv --allow-empty-question --test-fraction 0.2 --split-seed 0)
"$PY" -m workbench train --method bipo "${split[@]}" --limit "${TRAIN:-200}" --out "$out/bipo"
"$PY" -m workbench train --method caa --layer 14 "${split[@]}" --limit "${TRAIN:-200}" --out "$out/caa"
"$PY" -m workbench eval --vector "$out/bipo" --vector "$out/caa" "${split[@]}" --limit "${TEST:-100}" \
    --metrics logodds,utility --multipliers -2 -1 0 1 2 --out "$out/eval.json"
"$PY" -m workbench eval --vector "$out/bipo" --vector "$out/caa" "${split[@]}" --limit "${OPEN:-50}" \
    --metrics open --multipliers -2 0 2 --out "$out/open.json"
