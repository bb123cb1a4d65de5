#!/usr/bin/env bash
# The wordings study's composition and reworded-dev readings (README.md, rules 1-3), after
#   tsembed study run docs/results/wordings/study.yaml --out runs/wordings --jobs 2 --stage dev
# has trained every arm. Run from the repository root of the worktree pinned at the study's commit.
# Resumable: every step is skipped when its output exists.
#   bash docs/results/wordings/run.sh dev    # compose each seed's specialists; C, A1, A3 on the reworded dev copies
#   bash docs/results/wordings/run.sh eval   # read eval once (after the dev reading is written into README.md)
#   OUT=runs/wordings python docs/results/wordings/summarize.py [--split eval]
set -euo pipefail
SPLIT=${1:?usage: run.sh dev|eval}
SUITE=${SUITE:-suites/wordings-s0}
OUT=${OUT:-runs/wordings}
TSEMBED=${TSEMBED:-tsembed}
CONDITIONS=(identity tone shape colour object colour_word)
SEEDS=${SEEDS:-0 1 2}   # training seeds to compose and score (all three for the readings)
HERE=$(dirname "$0")

[ -f "$OUT/para1/suite.json" ] || python "$HERE/../compose/paraphrased_suite.py" "$SUITE" "$OUT/para" > /dev/null
for seed in $SEEDS; do
  runs=$OUT/runs/wordings-s0/seed$seed
  composed=$OUT/composed/seed$seed
  if [ ! -f "$composed/model/compose.json" ]; then
    args=()
    for c in "${CONDITIONS[@]}"; do args+=(--expert "$c=$runs/S_$c/model"); done
    $TSEMBED compose "${args[@]}" --suite "$SUITE" --router-input text --routing-split dev --out "$composed/model" \
      > /dev/null
  fi
  if [ "$SPLIT" = dev ]; then
    for p in 0 1; do
      for arm in C A1_lora A3_routed_text; do
        case $arm in
          C) model=$composed/model; extra=(--target-routing query); dest=$composed/para$p ;;
          *) model=$runs/$arm/model; extra=(); dest=$OUT/reworded/seed$seed/$arm/para$p ;;
        esac
        [ -f "$dest/hits.json" ] || [ -f "$dest/dev/hits.json" ] || \
          $TSEMBED eval --model "$model" --suite "$OUT/para$p" --split dev --out "$dest" --no-progress \
            "${extra[@]}" > /dev/null
      done
    done
  fi
  [ -f "$composed/$SPLIT/hits.json" ] || \
    $TSEMBED eval --model "$composed/model" --suite "$SUITE" --split "$SPLIT" --out "$composed/$SPLIT" --no-progress \
      --target-routing query > /dev/null
done
