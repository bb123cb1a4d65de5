#!/usr/bin/env bash
# Amendment 3 (README.md): modality-aware pilots (R_mod) against today's text pilots (R_text) on dev copies whose
# queries are reworded (dev-paraphrases.json), training seeds 0-2; the joint LoRA (A1) scored on the same copies.
# Run from the repository root of a worktree pinned at the commit that added this file, with
#   SPEC=<compose study out>/runs/conflict-s0  (the specialists, seed<s>/S_<condition>/model)
#   TEXT=<compose study out>/composed          (R_text, seed<s>/model, from run.sh)
#   CLAIM=<claim study out>/runs/conflict-s0   (A1, seed<s>/A1_lora/model)
# Resumable: every step is skipped when its output exists. Eval is never read here.
set -euo pipefail
SUITE=${SUITE:-suites/conflict-s0}
OUT=${OUT:-runs/compose-a3}
TSEMBED=${TSEMBED:-tsembed}
CONDITIONS=(identity tone shape colour object colour_word)
: "${SPEC:?}" "${TEXT:?}" "${CLAIM:?}"

[ -f "$OUT/para1/suite.json" ] || python docs/results/compose/paraphrased_suite.py "$SUITE" "$OUT/para" > /dev/null
for seed in 0 1 2; do
  mod=$OUT/R_mod/seed$seed
  if [ ! -f "$mod/model/compose.json" ]; then
    args=()
    for c in "${CONDITIONS[@]}"; do args+=(--expert "$c=$SPEC/seed$seed/S_$c/model"); done
    $TSEMBED compose "${args[@]}" --suite "$SUITE" --router-input text --modality-aware --routing-split dev \
      --out "$mod/model" > /dev/null
  fi
  for p in 0 1; do
    for arm in R_text R_mod A1; do
      case $arm in
        R_text) model=$TEXT/seed$seed/model; extra=(--target-routing query) ;;
        R_mod) model=$mod/model; extra=(--target-routing query) ;;
        A1) model=$CLAIM/seed$seed/A1_lora/model; extra=() ;;
      esac
      dest=$OUT/$arm/seed$seed/para$p
      [ -f "$dest/hits.json" ] || [ -f "$dest/dev/hits.json" ] || \
        $TSEMBED eval --model "$model" --suite "$OUT/para$p" --split dev --out "$dest" --no-progress \
          "${extra[@]}" > /dev/null
    done
  done
done
