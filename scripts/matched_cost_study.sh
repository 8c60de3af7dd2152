#!/usr/bin/env bash
# The matched-cost comparison (issue #16): BiPO, RePS, CAA and PCA at layer 14 on BiPO's public CSVs
# (power-seeking, wealth-seeking, hallucination; ../shared/data/bipo/<behavior>/train.csv, split by
# question, seed 0, 20 % held out), each compared by `workbench compare` on held-out pairs at KL
# budgets 0.05 0.1 0.2 0.5; then the same comparison for the embedded behaviors (`workbench reproduce
# --stages compare` on results/full's vectors), every figure and the report.
#
#   scripts/matched_cost_study.sh [OUT_DIR]     # default OUT_DIR: results/matched-cost
#
# Training uses the first $TRAIN pairs of each train part (200 for power-seeking, the same as
# scripts/public_bipo_csv.sh, whose BiPO and CAA vectors are reused when present; 160 for the
# others), the comparison the first $TEST (50) held-out pairs; the cost search runs on 16 neutral
# passages of 64 tokens (`compare --texts --text-tokens`). RePS runs $REPS_EPOCHS (2) epochs against BiPO's 5: each RePS
# step scores the batch at +v and at -v, so 2 epochs are 80 % of BiPO's forward passes. Vectors and
# comparisons already on disk are kept (delete a directory to redo it). PUBLIC=0 skips the public
# part, EMBEDDED=0 the embedded one.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 MPLBACKEND=Agg
PY=${PYTHON:-.venv/bin/python}
out=${1:-results/matched-cost}
data=${DATA_DIR:-../shared/data/bipo}
if [ "${PUBLIC:-1}" != 0 ]; then
    for b in ${BEHAVIORS:-power-seeking wealth-seeking hallucination}; do
        split=(--data "$data/$b/train.csv" --format bipo-csv --allow-empty-question --test-fraction 0.2 --split-seed 0)
        n=${TRAIN:-160}; [ "$b" = power-seeking ] && n=${TRAIN:-200}
        for m in bipo reps caa pca; do
            if [ "$b" = power-seeking ] && [ -f "results/public-power-seeking/$m/vector.json" ] \
                && [ ! -f "$out/$b/$m/vector.json" ] && [ -z "${TRAIN:-}" ]; then
                mkdir -p "$out/$b" && cp -r "results/public-power-seeking/$m" "$out/$b/$m"
            fi
            [ -f "$out/$b/$m/vector.json" ] && continue
            extra=(); [ "$m" = reps ] && extra=(--epochs "${REPS_EPOCHS:-2}")
            "$PY" -m workbench train --method "$m" --layer 14 "${split[@]}" --limit "$n" \
                "${extra[@]}" --out "$out/$b/$m"
        done
        [ -f "$out/$b/compare.json" ] || "$PY" -m workbench compare \
            --vector "$out/$b/bipo" --vector "$out/$b/reps" --vector "$out/$b/caa" --vector "$out/$b/pca" \
            "${split[@]}" --limit "${TEST:-50}" --out "$out/$b/compare.json"
    done
    "$PY" -m workbench figures --results "$out" --out "$out/figures"
    "$PY" -m workbench report --results "$out"
fi
if [ "${EMBEDDED:-1}" != 0 ]; then
    "$PY" -m workbench -v reproduce --out results/full --figures figures --stages compare figures
    "$PY" -m workbench report --results results/full --kind matched_cost
fi
