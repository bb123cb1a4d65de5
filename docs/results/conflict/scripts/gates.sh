#!/usr/bin/env bash
# Gates of docs/results/conflict (§2): conflict at init, the no-instruction LoRA, one specialist LoRA per condition.
set -x
export HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1
T=".venv/bin/tsembed"
B="--set schedule.steps=300 --set schedule.stage1_steps=150 --set run.num_threads=1 --set run.progress=false"
LORA="--set model.moe.num_experts=1 --set model.moe.rank=32 --set eans.mode=off"
$T task-conflict --set data.suite=suite-conflict $LORA --set run.num_threads=1 --batches 8 --out runs/conflict/gates/conflict-init
$T ablate --suite suite-conflict-noinstr --eval-split dev --seeds 0 --variant lora $B --out runs/conflict/noinstr
for d in ToneSameEmoji ToneSameTone TintSameEmoji TintSameColour TextSameObject TextSameColour; do
  $T ablate --suite suite-conflict --eval-split dev --seeds 0 --variant lora --set schedule.steps=150 \
    --set schedule.stage1_steps=75 --set run.num_threads=1 --set run.progress=false --set "data.datasets=[$d]" \
    --out runs/conflict/specialist-$d
done
