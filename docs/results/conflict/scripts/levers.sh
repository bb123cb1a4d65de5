#!/usr/bin/env bash
# Levers of docs/results/conflict §2 on the dev split, seed 0 (one run each).
set -x
export HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1
while pgrep -f "out runs/conflict/main$" > /dev/null || pgrep -f "runs/conflict/main " > /dev/null; do sleep 20; done
T=".venv/bin/tsembed"
B="--suite suite-conflict --eval-split dev --seeds 0 --set schedule.steps=300 --set schedule.stage1_steps=150 --set run.num_threads=1 --set run.progress=false"
HINTS="--set model.moe.task_hints=[identity,tone,shape,colour,object,colour-word] --set model.moe.task_hint_init=8.0"
$T ablate $B --variant lora --variant tsembed_weight --set loss.false_negative_margin=null --out runs/conflict/lever-noguard
$T ablate $B --variant tsembed_weight --set model.moe.router_input=text --out runs/conflict/lever-textrouter
$T ablate $B --variant tsembed_weight $HINTS --out runs/conflict/lever-oracle
$T ablate $B --variant tsembed_hardness --variant lora_hardness --mode hardness --out runs/conflict/lever-hardness
