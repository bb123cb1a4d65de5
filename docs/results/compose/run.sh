#!/usr/bin/env bash
# The compose study (issue 26), after its specialists are trained (study.yaml in this folder):
#   tsembed study run docs/results/compose/study.yaml --out runs/compose --jobs 2
# Run from the repository root of a worktree at the commit recorded in runs/compose/study.json, with the claim
# study's eval stage trained in CLAIM (A1_lora and A3_routed_text on conflict-s0, training seeds 0-2).
# Resumable: every step is skipped when its output exists. The settings are amendment 2's (README.md): text pilots,
# query-routed targets.
#   bash docs/results/compose/run.sh dev          # compose each seed's specialists, routing accuracy and hit@1 on dev
#   bash docs/results/compose/run.sh eval         # read eval once: the composed models, then the added-expert curve
#   CLAIM=... python docs/results/compose/summarize.py   # writes docs/results/compose/summary.{json,md}
set -euo pipefail
SPLIT=${1:?usage: run.sh dev|eval}
SUITE=${SUITE:-suites/conflict-s0}
OUT=${OUT:-runs/compose}
CONDITIONS=(identity tone shape colour object colour_word)
TSEMBED=${TSEMBED:-tsembed}

for seed in 0 1 2; do
  runs=$OUT/runs/conflict-s0/seed$seed
  composed=$OUT/composed/seed$seed
  args=()
  for c in "${CONDITIONS[@]}"; do args+=(--expert "$c=$runs/S_$c/model"); done
  if [ ! -f "$composed/model/compose.json" ]; then
    $TSEMBED compose "${args[@]}" --suite "$SUITE" --router-input text --routing-split dev --out "$composed/model" \
      > /dev/null
  fi
  if [ ! -f "$composed/$SPLIT/hits.json" ]; then
    $TSEMBED eval --model "$composed/model" --suite "$SUITE" --split "$SPLIT" --out "$composed/$SPLIT" --no-progress \
      --target-routing query > /dev/null
  fi
done

[ "$SPLIT" = eval ] || exit 0
# Task scaling by composition, seed 0: start from the first two specialists, add one expert at a time (each costs
# only its own 50 training steps), evaluate after each addition.
runs=$OUT/runs/conflict-s0/seed0
scaling=$OUT/scaling/seed0
if [ ! -f "$scaling/2/model/compose.json" ]; then
  $TSEMBED compose --expert "${CONDITIONS[0]}=$runs/S_${CONDITIONS[0]}/model" \
    --expert "${CONDITIONS[1]}=$runs/S_${CONDITIONS[1]}/model" --suite "$SUITE" --router-input text \
    --out "$scaling/model" > /dev/null
  mkdir -p "$scaling/2" && cp -r "$scaling/model" "$scaling/2/model"
fi
for n in 3 4 5 6; do
  c=${CONDITIONS[$((n - 1))]}
  if [ ! -f "$scaling/$n/model/compose.json" ]; then
    $TSEMBED compose --add "$c=$runs/S_$c/model" --to "$scaling/model" --suite "$SUITE" > /dev/null
    mkdir -p "$scaling/$n" && rm -rf "$scaling/$n/model" && cp -r "$scaling/model" "$scaling/$n/model"
  fi
done
for n in 2 3 4 5 6; do
  if [ ! -f "$scaling/$n/eval/hits.json" ]; then
    $TSEMBED eval --model "$scaling/$n/model" --suite "$SUITE" --split eval --out "$scaling/$n/eval" --no-progress \
      --no-cache --target-routing query > /dev/null
  fi
done
