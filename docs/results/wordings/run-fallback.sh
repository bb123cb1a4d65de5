#!/usr/bin/env bash
# Amendment 1 of the wordings study (README.md): C with the same seed's joint LoRA (A1) as its fallback expert.
# Run from the repository root of a worktree pinned at the amendment's commit, with OUT the study's output (its
# specialists, A1 models and reworded copies: run.sh dev has run). Resumable: every step is skipped when its output
# exists.
#   bash docs/results/wordings/run-fallback.sh dev    # compose C_fb per seed; original dev and the reworded copies
#   bash docs/results/wordings/run-fallback.sh eval   # read eval once (after the dev reading is written)
#   OUT=runs/wordings python docs/results/wordings/summarize.py [--split eval]
set -euo pipefail
SPLIT=${1:?usage: run-fallback.sh dev|eval}
SUITE=${SUITE:-suites/wordings-s0}
OUT=${OUT:-runs/wordings}
TSEMBED=${TSEMBED:-tsembed}
FLOOR_QUANTILE=0.05   # fixed before any run: compose's default, not tuned
CONDITIONS=(identity tone shape colour object colour_word)
SEEDS=${SEEDS:-0 1 2}

for seed in $SEEDS; do
  runs=$OUT/runs/wordings-s0/seed$seed
  composed=$OUT/composed-fallback/seed$seed
  if [ ! -f "$composed/model/compose.json" ]; then
    args=()
    for c in "${CONDITIONS[@]}"; do args+=(--expert "$c=$runs/S_$c/model"); done
    $TSEMBED compose "${args[@]}" --fallback "generalist=$runs/A1_lora/model" --floor-quantile $FLOOR_QUANTILE \
      --suite "$SUITE" --router-input text --routing-split dev --out "$composed/model" > /dev/null
  fi
  if [ "$SPLIT" = dev ]; then
    for where in dev para0 para1; do
      suite=$SUITE; [ "$where" = dev ] || suite=$OUT/$where
      [ -f "$composed/$where/hits.json" ] || [ -f "$composed/$where/dev/hits.json" ] || \
        $TSEMBED eval --model "$composed/model" --suite "$suite" --split dev --out "$composed/$where" --no-progress \
          --target-routing query > /dev/null
    done
  else
    [ -f "$composed/eval/hits.json" ] || \
      $TSEMBED eval --model "$composed/model" --suite "$SUITE" --split eval --out "$composed/eval" --no-progress \
        --target-routing query > /dev/null
  fi
done
