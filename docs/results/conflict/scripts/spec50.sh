#!/usr/bin/env bash
# Specialists at the joint model's per-task budget (300 steps / 6 datasets = 50 steps each).
set -x
export HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1
for d in TintSameColour ToneSameTone TextSameColour; do
  .venv/bin/tsembed ablate --suite suite-conflict --eval-split dev --seeds 0 --variant lora --set schedule.steps=50 \
    --set schedule.stage1_steps=25 --set run.num_threads=1 --set run.progress=false --set "data.datasets=[$d]" \
    --out runs/conflict/specialist50-$d
done
